"""The reviewer's report: what it flags, what it escapes, what it never loads."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from bundler.cli.main import main
from bundler.errors import IntegrityError
from bundler.evidence.report import Signer, build_report, render_html, stock_commands, write_report
from bundler.project.init import allowed_signers_line
from tests.report_fixtures import packed_bundle

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
GOOD_SIGNER = Signer(
    member="airlock/signatures/abc.sig",
    fingerprint="SHA256:goodkey",
    principals=("release@example.org",),
    status="verified",
    ok=True,
)


def manifest(**model_overrides: Any) -> dict[str, Any]:
    model = {
        "name": "tiny",
        "source": "hub",
        "repo": "org/tiny",
        "revision": "main",
        "commit": "a" * 40,
        "endpoint": "https://huggingface.co",
        "license": "apache-2.0",
        "license_permissive": True,
        "gated": False,
        "license_files": ["models/tiny/LICENSE"],
        "card": "models/tiny/README.md",
        "entrypoint": "models/tiny/tiny.gguf",
        "files": [
            {
                "path": "models/tiny/tiny.gguf",
                "hub_path": "tiny.gguf",
                "sha256": "b" * 64,
                "size": 4096,
                "lfs": True,
            }
        ],
        "gguf": {"architecture": "llama", "quantization": "F16", "context_length": 2048},
    }
    model.update(model_overrides)
    return {
        "format": "airlock-bundle",
        "schema_version": 1,
        "name": "demo",
        "version": "1.0.0",
        "sequence": 7,
        "created": "2026-11-27T00:00:00Z",
        "expires": "2027-05-26T00:00:00Z",
        "builder": {"airlock": "0.1.0", "python": "3.11.7"},
        "components": {
            "models": {"type": "model", "properties": {"models": [model]}},
            "engine": {
                "type": "runtime",
                "properties": {
                    "llama_cpp_commit": "c" * 40,
                    "cpu_variants": ["x64", "haswell"],
                    "cuda": None,
                    "arch": "x86_64",
                },
            },
            "wheels": {
                "type": "wheelhouse",
                "properties": {
                    "targets": [
                        {"python": "3.11", "platform": "manylinux_2_28_x86_64", "abi": "cp311"}
                    ],
                    "wheels": [
                        {"file": "wheels/numpy.whl", "name": "numpy", "license": "BSD-3-Clause"}
                    ],
                },
            },
        },
        "files": [
            {"path": "SHA256SUMS", "size": 90, "sha256": "d" * 64, "mode": "0644",
             "component": "bundle"},
            {"path": "engine/bin/llama-server", "size": 2048, "sha256": "e" * 64,
             "mode": "0755", "component": "engine"},
            {"path": "models/tiny/tiny.gguf", "size": 4096, "sha256": "b" * 64,
             "mode": "0644", "component": "models"},
        ],
    }  # fmt: skip


def report_for(m: dict[str, Any], signers: tuple[Signer, ...] = (GOOD_SIGNER,), **kw: Any) -> Any:
    return build_report(
        m,
        manifest_sha256="f" * 64,
        bundle_file="demo-1.0.0.tar",
        signers=signers,
        trust_checked=kw.pop("trust_checked", True),
        sbom_summary=kw.pop("sbom_summary", {"components": 3}),
        now=kw.pop("now", NOW),
    )


def test_clean_bundle_with_verified_signer_has_no_findings() -> None:
    r = report_for(manifest())
    assert r.flags == ()
    assert "No findings" in render_html(r)


def test_flags_gated_and_non_permissive_model() -> None:
    r = report_for(manifest(gated=True, license="llama3", license_permissive=False))
    assert "model tiny comes from a gated Hub repository" in r.flags
    assert "model tiny has a non-permissive license: llama3" in r.flags


def test_flags_expired_bundle() -> None:
    later = dt.datetime(2027, 6, 1, tzinfo=dt.timezone.utc)
    r = report_for(manifest(), now=later)
    assert "the bundle expired at 2027-05-26T00:00:00Z" in r.flags


def test_flags_signature_that_fails_the_trust_policy() -> None:
    bad = Signer(
        member="airlock/signatures/evil.sig",
        fingerprint="SHA256:unknown",
        status="key not in allowed_signers",
        ok=False,
    )
    r = report_for(manifest(), signers=(GOOD_SIGNER, bad))
    assert r.flags[0].startswith("signature airlock/signatures/evil.sig (SHA256:unknown)")
    html = render_html(r)
    assert "key not in allowed_signers" in html


def test_flags_unsigned_bundle_and_unchecked_trust() -> None:
    r = report_for(manifest(), signers=(), trust_checked=False)
    assert "the bundle carries no manifest signature" in r.flags
    assert any("--allowed-signers" in f for f in r.flags)


def test_hostile_hub_metadata_is_escaped_not_rendered() -> None:
    hostile = '<script>alert(1)</script><img src="https://evil.example/x">'
    r = report_for(manifest(repo=hostile, license=hostile, card=hostile))
    html = render_html(r)
    assert "<script" not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_page_loads_nothing_external_and_runs_no_script() -> None:
    html = render_html(report_for(manifest()))
    assert "<script" not in html
    assert "<link" not in html
    # No attribute may point anywhere; URLs appear only as escaped text.
    assert re.findall(r"""(?:src|href|action)\s*=""", html) == []
    assert "url(" not in html
    assert "default-src 'none'" in html


def test_components_list_every_file_with_its_digest() -> None:
    r = report_for(manifest())
    by_name = {c.name: c for c in r.components}
    assert set(by_name) == {"bundle", "engine", "models", "wheels"}
    assert [f.sha256 for f in by_name["models"].files] == ["b" * 64]
    assert r.total_size == 90 + 2048 + 4096
    html = render_html(r)
    for digest in ("b" * 64, "d" * 64, "e" * 64, "f" * 64):
        assert digest in html


def test_licenses_gather_models_and_wheels() -> None:
    r = report_for(manifest())
    got = {(u.license, u.permissive, u.used_by) for u in r.licenses}
    assert got == {
        ("apache-2.0", True, ("model tiny",)),
        ("BSD-3-Clause", None, ("wheels: numpy",)),
    }


def test_stock_commands_use_documented_namespaces_and_principal() -> None:
    cmds = dict(stock_commands("b.tar", [GOOD_SIGNER], "d" * 64, "f" * 64))
    archive = cmds["Whole archive signature (detached, beside the tar)"]
    assert archive == (
        "ssh-keygen -Y verify -f allowed_signers -I release@example.org "
        "-n airlock-archive-v1 -s b.tar.sig < b.tar"
    )
    manifest_cmd = cmds["Manifest signature airlock/signatures/abc.sig"]
    assert "-n airlock-manifest-v1" in manifest_cmd
    # The reviewed digests are what the station checks against, not the bundle's own claims.
    assert (
        'echo "' + "f" * 64 + '  manifest.json" | sha256sum -c'
        in cmds["Manifest bytes: the ones this page describes"]
    )
    (sums,) = [c for c in cmds.values() if "SHA256SUMS" in c]
    assert 'echo "' + "d" * 64 + '  SHA256SUMS" | sha256sum -c' in sums
    assert sums.endswith("sha256sum -c --strict SHA256SUMS")


def test_runtime_section_shows_cpu_variants_and_no_cuda() -> None:
    html = render_html(report_for(manifest()))
    assert "haswell" in html
    assert "none (CPU only)" in html


# --- `airlock report` on a real packed bundle ---------------------------------------------


def test_report_cli_shows_trusted_signer_and_flags_an_untrusted_cosigner(
    tmp_path: Path,
) -> None:
    bundle, (trusted, stranger) = packed_bundle(tmp_path, ("release", "stranger"))
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(allowed_signers_line("release@example.org", trusted) + "\n")
    out = tmp_path / "report.html"
    assert main(["report", str(bundle), "--out", str(out), "--allowed-signers", str(allowed)]) == 0
    html = out.read_text()
    assert trusted.fingerprint in html and stranger.fingerprint in html
    assert "release@example.org" in html
    assert "is not in the allowed signers" in html
    assert "signature airlock/signatures/" in html  # the stranger's finding is listed
    assert "machine-learning-model" in html or "total" in html  # the SBOM summary
    assert "ssh-keygen -Y verify -f allowed_signers -I release@example.org" in html


def test_report_refuses_a_tampered_sbom(tmp_path: Path) -> None:
    bundle, _ = packed_bundle(tmp_path, ("release",))
    data = bytearray(bundle.read_bytes())
    at = data.index(b'"bomFormat"')
    data[at + 1 : at + 5] = b"BOMF"
    bundle.write_bytes(bytes(data))
    out = tmp_path / "report.html"
    assert main(["report", str(bundle), "--out", str(out)]) == IntegrityError.exit_code
    assert not out.exists()


def test_report_without_trust_file_says_so(tmp_path: Path) -> None:
    bundle, (pub,) = packed_bundle(tmp_path, ("release",))
    out = tmp_path / "report.html"
    assert main(["report", str(bundle), "--out", str(out)]) == 0
    html = out.read_text()
    assert "valid signature, trust not checked" in html
    assert pub.fingerprint in html


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_report_reads_metadata_and_small_members_never_the_model(tmp_path: Path) -> None:
    model_size = 24 * 1024 * 1024
    bundle, _ = packed_bundle(tmp_path, ("release",), model_size=model_size)
    write_report(bundle, tmp_path / "warm.html")  # imports and templates loaded once
    before = _bytes_read()
    write_report(bundle, tmp_path / "report.html")
    assert _bytes_read() - before < model_size // 8


def test_report_shows_what_the_engine_needs_of_a_host() -> None:
    m = manifest()
    assert "libstdc++ level not recorded" in render_html(report_for(m))
    m["components"]["engine"]["properties"].update(glibc_min="2.28", glibcxx_min=None)
    html = render_html(report_for(m))
    cell = re.search(r'<td id="host-floor">(.*?)</td>', html)
    assert cell is not None
    assert cell.group(1) == "glibc &ge; 2.28, no libstdc++ needed (libc++ linked statically)"
