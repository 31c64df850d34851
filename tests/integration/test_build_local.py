"""`airlock lock` + `airlock build` without a runtime: Hub and local models, a verified bundle."""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bundler.cli.main import main
from bundler.demo.hubserver import HubServer
from bundler.demo.tinymodel import TinyModelOptions, write_tiny_model
from bundler.errors import GgufError, IntegrityError, SpecError
from bundler.pipeline import BuildOptions, build, lock
from bundler.project.spec import load_spec
from bundler.ssh.keys import generate_keypair

REPO = "org/tiny-GGUF"
CARD = b"---\nlicense: apache-2.0\n---\n# tiny\n"
EPOCH = int(time.time()) // 86400 * 86400  # today 00:00; "expires: 30d" counts from it


@pytest.fixture
def project(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    generate_keypair(d / "key", comment="builder@test", passphrase=None)
    pub = (d / "key.pub").read_text().strip()
    (d / "allowed_signers").write_text(f"builder@test {pub}\n")
    write_tiny_model(d / "mine.gguf", TinyModelOptions(seed=7, chat_template=False))
    (d / "airlock.yaml").write_text(
        f"""
name: demo
version: "1.0.0"
sequence: 2
expires: 30d
models:
  - name: tiny
    repo: {REPO}
    revision: main
    allow: ["*.gguf"]
  - name: mine
    source: local
    path: ./mine.gguf
    license: mit
server:
  model: tiny
"""
    )
    return d


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    paths = write_tiny_model(tmp_path / "hubmodel.gguf", TinyModelOptions(split=2))
    files = {p.name: p.read_bytes() for p in paths}
    files.update({"README.md": CARD, "LICENSE": b"Apache License 2.0\n", "notes.txt": b"x"})
    with HubServer() as server:
        server.add_repo(REPO, files)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def _options(project: Path, out: str = "dist", **kw: Any) -> BuildOptions:
    return BuildOptions(
        out_dir=project / out, keys=(str(project / "key"),), source_date_epoch=EPOCH, **kw
    )


def _manifest(bundle: Path) -> dict[str, Any]:
    with tarfile.open(bundle) as tar:
        f = tar.extractfile("airlock/manifest.json")
        assert f is not None
        return dict(json.load(f))


def _member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def test_bundle_with_hub_and_local_models_passes_verify(hub: HubServer, project: Path) -> None:
    spec_path = project / "airlock.yaml"
    assert main(["lock", str(spec_path)]) == 0
    result = build(spec_path, _options(project))
    assert (
        main(["verify", "--allowed-signers", str(project / "allowed_signers"), str(result.path)])
        == 0
    )

    manifest = _manifest(result.path)
    models = {m["name"]: m for m in manifest["components"]["models"]["properties"]["models"]}
    tiny, mine = models["tiny"], models["mine"]
    assert tiny["commit"] == hub.repos[REPO].refs["main"] and tiny["source"] == "hub"
    assert tiny["endpoint"] == hub.endpoint and tiny["repo"] == REPO
    assert tiny["entrypoint"] == "models/tiny/hubmodel-00001-of-00002.gguf"
    assert tiny["gguf"]["split_count"] == 2 and tiny["gguf"]["architecture"] == "llama"
    assert tiny["license"] == "apache-2.0" and tiny["license_permissive"] is True
    assert tiny["license_files"] == ["models/tiny/LICENSE"]
    assert tiny["card"] == "models/tiny/README.md"
    paths = sorted(f["path"] for f in tiny["files"])
    assert "models/tiny/notes.txt" not in paths  # not selected by allow, not a license file
    assert mine["license"] == "mit" and mine["gguf"]["chat_template"] is False
    assert mine["entrypoint"] == "models/mine/mine.gguf"

    # Every recorded digest is the digest of the bytes in the bundle.
    entries = {f["path"]: f for f in manifest["files"]}
    for m in (tiny, mine):
        for f in m["files"]:
            data = _member(result.path, f["path"])
            assert hashlib.sha256(data).hexdigest() == f["sha256"] == entries[f["path"]]["sha256"]
    assert _member(result.path, "models/mine/mine.gguf") == (project / "mine.gguf").read_bytes()
    with tarfile.open(result.path) as tar:
        assert all(m.isfile() for m in tar.getmembers())
        names = tar.getnames()
    assert "evidence/sbom.cdx.json" in names and "evidence/provenance.intoto.json" in names
    readme = _member(result.path, "README.md").decode()
    assert readme.startswith(f"# {manifest['name']} {manifest['version']}: an airlock bundle")
    assert entries["README.md"]["component"] == "bundle"
    assert "runtime/unpack.py" in names or any(n.startswith("runtime/") for n in names)
    assert not [d for d in (project / "dist").iterdir() if d.name.startswith(".airlock-stage")]


def test_refuses_to_build_without_a_lock(hub: HubServer, project: Path) -> None:
    with pytest.raises(SpecError, match="no lock file"):
        build(project / "airlock.yaml", _options(project))
    assert hub.requests == [] and not (project / "dist").exists()


def test_refuses_a_lock_that_no_longer_matches_the_spec(hub: HubServer, project: Path) -> None:
    spec_path = project / "airlock.yaml"
    lock(load_spec(spec_path))
    spec_path.write_text(spec_path.read_text().replace('allow: ["*.gguf"]', 'allow: ["*"]'))
    with pytest.raises(SpecError, match="does not match the spec") as e:
        build(spec_path, _options(project))
    assert any("models.tiny.allow" in p for p in e.value.problems)
    result = build(spec_path, _options(project, update_lock=True))
    assert result.lock_changed
    models = _manifest(result.path)["components"]["models"]["properties"]["models"]
    tiny = next(m for m in models if m["name"] == "tiny")
    assert "models/tiny/notes.txt" in [f["path"] for f in tiny["files"]]


def test_hub_moving_the_branch_after_lock(hub: HubServer, project: Path, tmp_path: Path) -> None:
    spec_path = project / "airlock.yaml"
    lock(load_spec(spec_path))
    old_commit = hub.repos[REPO].refs["main"]
    old_bytes = hub.repos[REPO].files_by_commit[old_commit]["hubmodel-00001-of-00002.gguf"]
    (new,) = write_tiny_model(tmp_path / "hubmodel.gguf", TinyModelOptions(seed=99))
    new_commit = hub.commit(REPO, {"hubmodel.gguf": new.read_bytes(), "README.md": CARD})

    result = build(spec_path, _options(project))
    member = "models/tiny/hubmodel-00001-of-00002.gguf"
    assert _member(result.path, member) == old_bytes  # the locked commit, not the moved branch
    resolves = [p for (m, p, _) in hub.requests if "/resolve/" in p]
    assert resolves and all(f"/resolve/{old_commit}/" in p for p in resolves)

    assert main(["lock", str(spec_path)]) == 0
    locked = json.loads((project / "airlock.lock").read_text())
    assert locked["models"]["tiny"]["commit"] == new_commit
    result = build(spec_path, _options(project, out="dist2"))
    models = _manifest(result.path)["components"]["models"]["properties"]["models"]
    tiny = next(m for m in models if m["name"] == "tiny")
    assert tiny["commit"] == new_commit and tiny["entrypoint"] == "models/tiny/hubmodel.gguf"


def test_offline_build_from_cache_is_identical(
    hub: HubServer, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_path = project / "airlock.yaml"
    lock(load_spec(spec_path))
    online = build(spec_path, _options(project))
    hub.stop()  # nothing to talk to any more
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    offline = build(spec_path, _options(project, out="offline", offline=True))
    assert offline.manifest_sha256 == online.manifest_sha256
    assert offline.path.read_bytes() == online.path.read_bytes()


def test_tampered_hub_file_fails_the_build_and_writes_nothing(
    hub: HubServer, project: Path
) -> None:
    spec_path = project / "airlock.yaml"
    lock(load_spec(spec_path))
    commit = hub.repos[REPO].refs["main"]
    name = "hubmodel-00002-of-00002.gguf"
    good = hub.repos[REPO].files_by_commit[commit][name]
    hub.faults.tampered[(REPO, name)] = good[:-4] + b"evil"
    code = main(
        ["build", str(spec_path), "--out", str(project / "dist"), "--key", str(project / "key")]
    )
    assert code == IntegrityError.exit_code
    assert list((project / "dist").iterdir()) == []


def test_local_model_changed_since_lock_is_refused(hub: HubServer, project: Path) -> None:
    spec_path = project / "airlock.yaml"
    lock(load_spec(spec_path))
    write_tiny_model(project / "mine.gguf", TinyModelOptions(seed=8))
    with pytest.raises(SpecError, match="changed since the lock"):
        build(spec_path, _options(project))


def test_non_gguf_local_model_fails_clearly(hub: HubServer, project: Path) -> None:
    (project / "mine.gguf").write_bytes(b"<html>404 not found</html>")
    spec_path = project / "airlock.yaml"
    lock(load_spec(spec_path))
    with pytest.raises(GgufError, match=r"model mine: mine\.gguf is not a GGUF file"):
        build(spec_path, _options(project))
    assert list((project / "dist").iterdir()) == []


def test_lock_is_deterministic_and_unchanged_on_rerun(hub: HubServer, project: Path) -> None:
    spec = load_spec(project / "airlock.yaml")
    _, changed = lock(spec)
    first = (project / "airlock.lock").read_bytes()
    _, again = lock(spec)
    assert changed and not again
    assert (project / "airlock.lock").read_bytes() == first


def test_stage_copies_when_the_cache_is_on_another_file_system(
    hub: HubServer, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bundler.pipeline

    def no_link(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    spec_path = project / "airlock.yaml"
    lock(load_spec(spec_path))
    monkeypatch.setattr(bundler.pipeline.os, "link", no_link)
    result = build(spec_path, _options(project))
    commit = hub.repos[REPO].refs["main"]
    name = "hubmodel-00001-of-00002.gguf"
    data = hub.repos[REPO].files_by_commit[commit][name]
    assert _member(result.path, f"models/tiny/{name}") == data


def test_cli_lock_and_build_json(
    hub: HubServer, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_path = str(project / "airlock.yaml")
    assert main(["lock", spec_path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["changed"] is True and out["models"]["tiny"]["files"] == 4
    argv = ["build", spec_path, "--out", str(project / "dist"), "--key", str(project / "key")]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["bundle"]).is_file() and len(out["manifest_sha256"]) == 64
    assert out["lock_changed"] is False and out["warnings"] == []


def test_update_lock_offline_refused_for_hub_models(
    hub: HubServer, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bundler.errors import UsageError

    with pytest.raises(UsageError, match="cannot lock offline"):
        build(project / "airlock.yaml", _options(project, offline=True, update_lock=True))
    assert hub.requests == []
    # A spec with local models only needs no Hub to lock.
    spec_path = project / "airlock.yaml"
    text = spec_path.read_text()
    spec_path.write_text(
        text[: text.index("  - name: tiny")] + text[text.index("  - name: mine") :]
    )
    spec_path.write_text(spec_path.read_text().replace("model: tiny", "model: mine"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = build(spec_path, _options(project, update_lock=True))
    assert result.lock_changed and hub.requests == []


def test_local_split_model_takes_every_shard(hub: HubServer, project: Path) -> None:
    shards = write_tiny_model(project / "split.gguf", TinyModelOptions(split=3))
    spec_path = project / "airlock.yaml"
    spec_path.write_text(spec_path.read_text().replace("./mine.gguf", f"./{shards[0].name}"))
    lock(load_spec(spec_path))
    result = build(spec_path, _options(project))
    models = _manifest(result.path)["components"]["models"]["properties"]["models"]
    mine = next(m for m in models if m["name"] == "mine")
    assert mine["entrypoint"] == f"models/mine/{shards[0].name}"
    assert sorted(f["hub_path"] for f in mine["files"]) == [p.name for p in shards]
    assert mine["gguf"]["split_count"] == 3
    shards[1].unlink()
    with pytest.raises(GgufError, match="incomplete"):
        lock(load_spec(spec_path))


def test_build_split_into_parts_verifies(hub: HubServer, project: Path) -> None:
    spec_path = str(project / "airlock.yaml")
    assert main(["lock", spec_path]) == 0
    out = project / "dist"
    argv = ["build", spec_path, "--out", str(out), "--key", str(project / "key")]
    assert main([*argv, "--split", "1M"]) == 0
    index = next(out.glob("*.parts*"))
    allowed = str(project / "allowed_signers")
    assert main(["verify", "--allowed-signers", allowed, str(index)]) == 0


def test_a_rebuild_from_an_old_cache_hashes_hub_models_once_and_gives_the_same_bundle(
    hub: HubServer, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import time

    import bundler.pipeline
    from bundler.sources.hub import HubSettings

    spec_path = project / "airlock.yaml"
    lock(load_spec(spec_path))
    seen: list[dict[str, Any]] = []
    real_pack = bundler.pipeline.pack

    def pack(*args: Any, **kwargs: Any) -> Any:
        seen.append(dict(kwargs["stamps"]))
        return real_pack(*args, **kwargs)

    monkeypatch.setattr(bundler.pipeline, "pack", pack)
    first = build(spec_path, _options(project))
    assert seen == [{}]  # fresh downloads: too recent for a stamp, pack re-hashes them
    old = time.time_ns() - 3600 * 10**9
    for blob in HubSettings.from_env().cache_dir.glob("models--*/blobs/*"):
        os.utime(blob, ns=(old, old))
    again = build(spec_path, _options(project, out="again"))
    hub_files = {
        f["path"]
        for f in _manifest(again.path)["files"]
        if f["path"].startswith("models/") and f["component"] == "models"
    }
    assert set(seen[1]) and set(seen[1]) <= hub_files
    assert again.path.read_bytes() == first.path.read_bytes()
