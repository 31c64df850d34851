"""Bundle diff: every section reports what a reviewer must see between two releases."""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

from bundler.evidence.diff import diff_manifests, fingerprints, render, signer_fingerprint
from tests.evidence_fixtures import COMMIT, clone, digest, manifest, set_file


def _kinds(d: Any, section: str) -> list[tuple[str, str]]:
    return [(c.kind, c.subject) for c in d.section(section)]


def _sshsig(key_blob: bytes) -> bytes:
    def s(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    blob = b"SSHSIG" + struct.pack(">I", 1) + s(key_blob) + s(b"airlock-manifest-v1")
    blob += s(b"") + s(b"sha512") + s(b"\0" * 83)
    b64 = base64.b64encode(blob).decode()
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    text = "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines) + "\n-----END SSH SIGNATURE-----\n"
    return text.encode()


def _key(n: int) -> bytes:
    def s(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    return s(b"ssh-ed25519") + s(bytes([n]) * 32)


def test_identical_bundles_have_no_differences() -> None:
    d = diff_manifests(manifest(), manifest(), old_signers=["SHA256:a"], new_signers=["SHA256:a"])
    assert d.identical
    assert "no differences" in render(d)


def test_model_commit_and_file_digest_change_are_reported() -> None:
    new = manifest()
    model = new["components"]["models"]["properties"]["models"][0]
    model["commit"] = "f" * 40
    model["files"][0]["sha256"] = digest("new weights")
    model["gguf"]["quantization"] = "Q4_K_M"
    set_file(new, "models/tiny/tiny.gguf", sha256=digest("new weights"), size=200_000)
    d = diff_manifests(manifest(), new)
    models = d.section("models")
    assert ("changed", "model tiny commit") in _kinds(d, "models")
    commit = next(c for c in models if c.subject == "model tiny commit")
    assert (commit.old, commit.new) == (COMMIT, "f" * 40)
    assert ("changed", "model tiny gguf.quantization") in _kinds(d, "models")
    assert ("changed", "model tiny file tiny.gguf") in _kinds(d, "models")
    assert ("changed", "models/tiny/tiny.gguf") in _kinds(d, "files")


def test_model_swapped_for_another_repo_is_added_and_removed() -> None:
    new = manifest()
    model = new["components"]["models"]["properties"]["models"][0]
    model["name"] = "other"
    d = diff_manifests(manifest(), new)
    assert _kinds(d, "models") == [("removed", "model tiny"), ("added", "model other")]


def test_files_added_removed_and_mode_changes_are_listed() -> None:
    new = manifest()
    new["files"] = [f for f in new["files"] if f["path"] != "runtime/unpack.py"]
    new["files"].append(
        {"path": "runtime/new.py", "size": 3, "sha256": digest("n"), "mode": "0644"}
    )
    set_file(new, "playbooks/install.yml", mode="0755")
    d = diff_manifests(manifest(), new)
    assert _kinds(d, "files") == [
        ("changed", "playbooks/install.yml"),
        ("added", "runtime/new.py"),
        ("removed", "runtime/unpack.py"),
    ]


def test_wheel_upgrade_downgrade_and_rebuild_are_distinguished() -> None:
    new = manifest()
    wheels = new["components"]["wheels"]["properties"]["wheels"]
    wheels[0]["version"] = "2.2.0"  # numpy up
    wheels[1]["version"] = "3.1.3"  # jinja2 down
    ctrl = new["components"]["controller"]["properties"]["wheels"]
    ctrl[0]["sha256"] = digest("rebuilt")
    d = diff_manifests(manifest(), new)
    kinds = {c.subject.split(" ")[0]: c for c in d.section("wheels")}
    assert kinds["numpy"].kind == "upgraded" and kinds["numpy"].new == "2.2.0"
    assert kinds["jinja2"].kind == "downgraded"
    assert kinds["pyyaml"].kind == "changed" and "same version" in kinds["pyyaml"].subject


def test_wheel_for_a_new_target_platform_is_added() -> None:
    new = manifest()
    props = new["components"]["wheels"]["properties"]
    props["wheels"].append(
        {
            "file": "wheels/numpy-2.1.0-cp311-cp311-manylinux_2_28_aarch64.whl",
            "name": "numpy",
            "version": "2.1.0",
            "sha256": digest("arm"),
            "license": "BSD-3-Clause",
        }
    )
    props["targets"].append(
        {"python": "3.11", "platform": "manylinux_2_28_aarch64", "abi": "cp311"}
    )
    d = diff_manifests(manifest(), new)
    subjects = [c.subject for c in d.section("wheels") if c.kind == "added"]
    assert any("aarch64" in s and s.startswith("numpy") for s in subjects)
    assert any(
        s.startswith("target wheels: python 3.11 cp311 manylinux_2_28_aarch64") for s in subjects
    )
    assert not any(c.kind == "removed" for c in d.section("wheels"))


def test_runtime_flags_variants_and_cuda_changes() -> None:
    new = manifest()
    p = new["components"]["engine"]["properties"]
    p["cpu_variants"] = ["x64", "haswell", "skylakex"]
    p["cmake_flags"] = [*p["cmake_flags"], "-DGGML_CUDA=ON"]
    p["cuda"] = {"architectures": ["80"], "cuda_version": "12.4", "min_driver": "525.60.13"}
    p["llama_cpp_python"] = dict(p["llama_cpp_python"], version="0.3.17")
    p["server_defaults"] = dict(p["server_defaults"], port=9090)
    d = diff_manifests(manifest(), new)
    k = _kinds(d, "runtime")
    assert ("upgraded", "llama-cpp-python") in k
    assert ("added", "cpu variant skylakex") in k
    assert ("added", "cmake flag -DGGML_CUDA=ON") in k
    assert ("added", "cuda backend") in k
    assert ("changed", "server port") in k


def test_nvidia_runtime_wheel_versions_and_bytes_are_compared() -> None:
    def with_wheels(*wheels: tuple[str, str, str]) -> dict:
        m = manifest()
        m["components"]["engine"]["properties"]["cuda"] = {
            "architectures": ["90"],
            "cuda_version": "13.0",
            "runtime_wheel_files": [
                {"name": n, "version": v, "file": f"{n}-{v}.whl", "sha256": sha * 64}
                for n, v, sha in wheels
            ],
        }
        return m

    old = with_wheels(("nvidia-cublas", "13.0.0.19", "a"), ("nvidia-cuda-runtime", "13.0.48", "b"))
    new = with_wheels(("nvidia-cublas", "13.0.2.14", "c"), ("nvidia-cuda-runtime", "13.0.48", "d"))
    k = _kinds(diff_manifests(old, new), "runtime")
    assert ("upgraded", "cuda wheel nvidia-cublas") in k
    assert ("changed", "cuda wheel nvidia-cuda-runtime sha256") in k
    assert ("added", "cuda wheel nvidia-nvjitlink") in _kinds(
        diff_manifests(old, with_wheels(*[("nvidia-nvjitlink", "13.0.1", "e")])), "runtime"
    )


def test_license_change_of_a_model_is_flagged() -> None:
    new = manifest()
    model = new["components"]["models"]["properties"]["models"][0]
    model["license"] = "llama3"
    model["license_permissive"] = False
    d = diff_manifests(manifest(), new)
    k = _kinds(d, "licenses")
    assert ("changed", "model tiny") in k
    assert ("added", "license llama3") in k
    assert ("removed", "license apache-2.0") in k
    assert ("changed", "model tiny permissive") in k


def test_signers_sequence_and_expiry() -> None:
    new = manifest(sequence=2, version="1.1.0", expires="2027-12-01T00:00:00Z")
    d = diff_manifests(
        manifest(),
        new,
        old_signers=["SHA256:alice", "SHA256:bob"],
        new_signers=["SHA256:alice", "SHA256:carol"],
    )
    assert _kinds(d, "signers") == [
        ("removed", "signer SHA256:bob"),
        ("added", "signer SHA256:carol"),
    ]
    b = {c.subject: (c.old, c.new) for c in d.section("bundle")}
    assert b["sequence"] == ("1", "2")
    assert b["expires"] == ("2027-05-26T00:00:00Z", "2027-12-01T00:00:00Z")


def test_sequence_going_backwards_is_called_out() -> None:
    d = diff_manifests(manifest(sequence=5), manifest(sequence=4))
    assert any(c.kind == "downgraded" and "backwards" in c.subject for c in d.section("bundle"))


def test_render_groups_by_section_and_json_has_every_section() -> None:
    new = clone(manifest(version="1.1.0"))
    new["components"]["wheels"]["properties"]["wheels"][0]["version"] = "2.2.0"
    d = diff_manifests(manifest(), new, old_sha256="a" * 64, new_sha256="b" * 64)
    text = render(d)
    assert text.index("bundle (") < text.index("wheels (")
    assert "^ numpy" in text and "2.1.0 -> 2.2.0" in text
    assert "manifest aaaaaaaaaaaa" in text
    js = d.to_json()
    assert js["identical"] is False
    assert set(js["changes"]) == {
        "bundle",
        "models",
        "runtime",
        "wheels",
        "licenses",
        "signers",
        "files",
    }
    assert js["new"]["manifest_sha256"] == "b" * 64


def test_signer_fingerprint_is_sha256_of_the_public_key_blob() -> None:
    key = _key(7)
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(key).digest()).decode().rstrip("=")
    assert signer_fingerprint(_sshsig(key)) == expected


def test_unreadable_signature_is_named_not_fatal() -> None:
    fps = fingerprints([("a.sig", b"garbage"), ("b.sig", _sshsig(_key(1)))])
    assert "unreadable a.sig" in fps
    assert sum(1 for f in fps if f.startswith("SHA256:")) == 1


def test_render_keeps_each_change_on_one_short_line() -> None:
    new = manifest()
    text = "Copyright (c) 2005-2024, NumPy Developers.\nAll rights reserved.\n" * 20
    new["components"]["wheels"]["properties"]["wheels"][0]["license"] = text
    d = diff_manifests(manifest(), new)
    assert d.section("licenses")[0].new == text  # JSON keeps the full value
    lines = render(d).splitlines()
    assert all(len(line) < 260 for line in lines)


def test_the_engines_host_floor_change_is_reported() -> None:
    old, new = manifest(), manifest()
    old["components"]["engine"]["properties"].update(glibc_min="2.34", glibcxx_min="3.4.30")
    new["components"]["engine"]["properties"].update(glibc_min="2.28", glibcxx_min=None)
    d = diff_manifests(old, new)
    changes = {c.subject: (c.old, c.new) for c in d.section("runtime")}
    assert changes["glibc_min"] == ("2.34", "2.28")
    assert changes["glibcxx_min"] == ("3.4.30", None)
