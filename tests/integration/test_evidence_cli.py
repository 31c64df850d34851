"""`airlock sbom` and `airlock diff` on real packed bundles signed with real ssh-keygen keys."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from bundler.bundle.pack import pack
from bundler.cli.main import main
from bundler.evidence.provenance import build_provenance, resolved_dependencies
from bundler.evidence.sbom import SBOM_PATH, build_sbom
from bundler.ssh.keys import load_signer
from runtime.bundle import read_metadata
from tests.evidence_fixtures import COMMIT, manifest

EXPIRES = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )
    return path


def _fingerprint(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


def _bundle(
    tmp: Path,
    *,
    version: str,
    sequence: int,
    keys: list[Path],
    numpy: str = "2.1.0",
    split: int | None = None,
    with_sbom: bool = True,
) -> Path:
    """Stage a small bundle whose components follow the agreed keys, with evidence, and pack it."""
    stage = tmp / f"stage-{version}"
    gguf = os.urandom(4096) + version.encode()
    wheel_name = f"numpy-{numpy}-cp311-cp311-manylinux_2_28_x86_64.whl"
    content = {
        "models/tiny/tiny.gguf": gguf,
        "models/tiny/LICENSE": b"Apache License 2.0\n",
        "engine/bin/llama-server": b"\x7fELF fake server " + version.encode(),
        f"wheels/{wheel_name}": b"PK fake wheel " + numpy.encode(),
        "runtime/__init__.py": b"",
        "playbooks/install.yml": b"- hosts: all\n",
    }
    for rel, data in content.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(data)
    sha = {rel: hashlib.sha256(d).hexdigest() for rel, d in content.items()}
    components: dict[str, Any] = manifest()["components"]
    del components["controller"], components["templates"], components["bundle"]
    model = components["models"]["properties"]["models"][0]
    model["files"] = [
        {
            "path": "models/tiny/tiny.gguf",
            "hub_path": "tiny.gguf",
            "sha256": sha["models/tiny/tiny.gguf"],
            "size": len(gguf),
            "lfs": True,
        }
    ]
    model["card"] = None
    components["wheels"]["properties"]["wheels"] = [
        {
            "file": f"wheels/{wheel_name}",
            "name": "numpy",
            "version": numpy,
            "sha256": sha[f"wheels/{wheel_name}"],
            "license": "BSD-3-Clause",
        }
    ]
    files = [
        {"path": p, "size": len(d), "sha256": sha[p], "component": p.split("/")[0]}
        for p, d in content.items()
    ]
    prov = build_provenance(
        files=files,
        spec_bytes=b"name: demo\n",
        lock_bytes=b"{}",
        resolved=resolved_dependencies(components),
        builder_id="https://airlock.dev/builders/test",
    )
    (stage / "evidence").mkdir()
    (stage / "evidence/provenance.intoto.json").write_bytes(prov)
    files.append(
        {
            "path": "evidence/provenance.intoto.json",
            "size": len(prov),
            "sha256": hashlib.sha256(prov).hexdigest(),
            "component": "evidence",
        }
    )
    sbom = build_sbom(
        name="demo",
        version=version,
        created="2026-11-27T00:00:00Z",
        components=components,
        files=files,
        serial_seed=b"lock",
    )
    if with_sbom:
        (stage / SBOM_PATH).write_bytes(sbom)
    result = pack(
        stage,
        name="demo",
        version=version,
        sequence=sequence,
        expires=EXPIRES,
        components=components,
        signers=[load_signer(k) for k in keys],
        out_dir=tmp / "out",
        source_date_epoch=1_790_000_000,
        split=split,
    )
    return result.path


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    return {n: _keygen(tmp_path / n) for n in ("alice", "bob")}


def test_sbom_command_writes_the_bundled_sbom_exactly(tmp_path: Path, keys, capsys) -> None:
    bundle = _bundle(tmp_path, version="1.0.0", sequence=1, keys=[keys["alice"]])
    out = tmp_path / "sbom.json"
    assert main(["sbom", str(bundle), "--out", str(out)]) == 0
    meta = read_metadata(bundle)
    entry = next(f for f in meta.manifest["files"] if f["path"] == SBOM_PATH)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == entry["sha256"]
    doc = json.loads(out.read_bytes())
    assert any(c.get("purl", "").endswith(f"@{COMMIT}") for c in doc["components"])
    assert "signatures not checked" in capsys.readouterr().err

    assert main(["sbom", str(bundle), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["sha256"] == entry["sha256"]
    assert js["summary"]["components"]["machine-learning-model"] == 1

    assert main(["sbom", str(bundle)]) == 0
    assert capsys.readouterr().out.encode() == out.read_bytes()


def test_sbom_command_refuses_a_tampered_sbom_and_writes_nothing(tmp_path: Path, keys) -> None:
    bundle = _bundle(tmp_path, version="1.0.0", sequence=1, keys=[keys["alice"]])
    data = bytearray(bundle.read_bytes())
    marker = b'"bomFormat": "CycloneDX"'
    at = data.index(marker)
    data[at : at + len(marker)] = b'"bomFormat": "CycloneDy"'
    bundle.write_bytes(bytes(data))
    out = tmp_path / "sbom.json"
    assert main(["sbom", str(bundle), "--out", str(out)]) == 20  # IntegrityError
    assert not out.exists()
    assert list(tmp_path.glob(".sbom.json.*")) == []


def test_sbom_command_names_a_missing_bundle(tmp_path: Path, capsys) -> None:
    assert main(["sbom", str(tmp_path / "nope.tar")]) == 2
    assert "bundle not found" in capsys.readouterr().err


def test_diff_reports_versions_wheels_models_and_signers(tmp_path: Path, keys, capsys) -> None:
    old = _bundle(tmp_path, version="1.0.0", sequence=1, keys=[keys["alice"]])
    new = _bundle(
        tmp_path, version="1.1.0", sequence=2, keys=[keys["alice"], keys["bob"]], numpy="2.2.0"
    )
    assert main(["diff", str(old), str(new), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    ch = js["changes"]
    assert {"kind": "changed", "subject": "version", "old": "1.0.0", "new": "1.1.0"} in ch["bundle"]
    wheel = ch["wheels"][0]
    assert (wheel["kind"], wheel["old"], wheel["new"]) == ("upgraded", "2.1.0", "2.2.0")
    assert any(c["subject"] == "model tiny file tiny.gguf" for c in ch["models"])
    bob = _fingerprint(keys["bob"].with_suffix(".pub"))
    assert ch["signers"] == [
        {"kind": "added", "subject": f"signer {bob}", "old": None, "new": None}
    ]
    assert js["old"]["manifest_sha256"] == read_metadata(old).manifest_sha256

    assert main(["diff", str(old), str(new)]) == 0
    text = capsys.readouterr().out
    assert "wheels (1)" in text and "2.1.0 -> 2.2.0" in text
    assert f"+ signer {bob}" in text


def test_diff_reads_only_the_metadata_region(tmp_path: Path, keys, capsys) -> None:
    old = _bundle(tmp_path, version="1.0.0", sequence=2, keys=[keys["alice"]])
    new = _bundle(tmp_path, version="0.9.0", sequence=1, keys=[keys["alice"]])
    # Cut both bundles right after the metadata region: a diff must not need the payload.
    for b in (old, new):
        offset = read_metadata(b).payload_offset
        with open(b, "r+b") as f:
            f.truncate(offset)
    assert main(["diff", str(old), str(new)]) == 0
    text = capsys.readouterr().out
    assert "sequence goes backwards" in text


def test_diff_of_a_bundle_with_itself_is_empty(tmp_path: Path, keys, capsys) -> None:
    b = _bundle(tmp_path, version="1.0.0", sequence=1, keys=[keys["alice"]])
    assert main(["diff", str(b), str(b)]) == 0
    assert "no differences" in capsys.readouterr().out


def test_diff_reads_a_split_bundle_through_its_parts_index(tmp_path: Path, keys, capsys) -> None:
    old = _bundle(tmp_path / "a", version="1.0.0", sequence=1, keys=[keys["alice"]], split=16384)
    new = _bundle(tmp_path / "b", version="1.1.0", sequence=2, keys=[keys["alice"]])
    assert old.name.endswith(".parts")
    assert main(["diff", str(old), str(new), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["old"]["version"] == "1.0.0" and js["new"]["version"] == "1.1.0"

    assert main(["sbom", str(old)]) == 2
    assert "airlock join" in capsys.readouterr().err


def test_sbom_command_explains_a_bundle_without_evidence(tmp_path: Path, keys, capsys) -> None:
    bundle = _bundle(tmp_path, version="1.0.0", sequence=1, keys=[keys["alice"]], with_sbom=False)
    out = tmp_path / "sbom.json"
    assert main(["sbom", str(bundle), "--out", str(out)]) == 21  # ArchiveFormatError
    assert "has no evidence/sbom.cdx.json" in capsys.readouterr().err
    assert not out.exists()
