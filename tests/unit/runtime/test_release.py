"""runtime.release: state, sequence floor, atomic switch, manifest copy, discard, rollback, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from runtime import release
from runtime.errors import InstallError, IntegrityError, RollbackError
from runtime.fsio import atomic_write
from runtime.layout import Layout, empty_state, load_state, save_state


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(
        root=str(tmp_path / "opt"), config=str(tmp_path / "etc"), state=str(tmp_path / "var")
    )


def install_release(layout: Layout, version: str, files: dict[str, bytes], seq: int) -> str:
    """Lay out a release as unpack would and record it as install.yml does; returns digest."""
    base = Path(layout.release_dir(version))
    entries = []
    for rel, data in sorted(files.items()):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
        entries.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest()})
    manifest = json.dumps({"files": entries, "version": version}, sort_keys=True).encode()
    digest = hashlib.sha256(manifest).hexdigest()
    atomic_write(layout.manifest_file(digest), manifest)
    state = load_state(layout)
    release.switch_current(layout, version)
    release.record_release(state, version=version, digest=digest, sequence=seq, name="demo")
    save_state(layout, state)
    return digest


def test_rejects_rollback_below_floor() -> None:
    state = empty_state()
    state["floor"] = 5
    with pytest.raises(RollbackError) as e:
        release.check_sequence(state, 4, allow_downgrade=False)
    assert e.value.exit_code == 13
    assert "airlock_allow_downgrade" in (e.value.hint or "")


def test_downgrade_needs_the_explicit_flag_and_is_reported() -> None:
    state = empty_state()
    state["floor"] = 5
    assert "DOWNGRADE" in release.check_sequence(state, 4, allow_downgrade=True)
    assert "at or above" in release.check_sequence(state, 5, allow_downgrade=False)


def test_same_version_from_a_different_manifest_is_refused() -> None:
    state = empty_state()
    release.record_release(state, version="1.0", digest="a" * 64, sequence=1, name="d")
    with pytest.raises(InstallError, match="different manifest"):
        release.record_release(state, version="1.0", digest="b" * 64, sequence=2, name="d")


def test_switch_is_a_symlink_replaced_atomically(layout: Layout) -> None:
    install_release(layout, "1.0", {"a.txt": b"one"}, 1)
    install_release(layout, "2.0", {"a.txt": b"two"}, 2)
    assert os.readlink(layout.current) == "releases/2.0"
    assert Path(layout.current, "a.txt").read_bytes() == b"two"
    assert not [p for p in os.listdir(layout.root) if ".tmp" in p]
    state = load_state(layout)
    assert state["floor"] == 2 and state["current"] == "2.0"
    assert release.previous_release(state) == "1.0"


def test_switch_refuses_a_missing_release(layout: Layout) -> None:
    with pytest.raises(InstallError, match="does not exist"):
        release.switch_current(layout, "9.9")


def test_rejects_release_names_that_escape_the_releases_dir(layout: Layout) -> None:
    for bad in ("..", "../x", ".hidden", ""):
        with pytest.raises(release.UsageError):
            layout.release_dir(bad)


def test_verify_cli_fails_with_integrity_exit_code(
    layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    install_release(layout, "1.0", {"a.txt": b"a"}, 1)
    Path(layout.release_dir("1.0"), "a.txt").write_bytes(b"b")
    argv = ["--root", layout.root, "--config", layout.config, "--state", layout.state, "verify"]
    assert release.main(argv) == IntegrityError.exit_code
    out = json.loads(capsys.readouterr().out)
    assert out["failed"] and "a.txt" in out["problems"][0]


def test_discard_after_a_failed_first_install_leaves_nothing(layout: Layout) -> None:
    Path(layout.release_dir("1.0")).mkdir(parents=True)
    Path(layout.config).mkdir()
    removed = release.discard(layout, "1.0", first_install=True, fresh=True, previous=None)
    assert removed
    for path in (layout.root, layout.config, layout.state):
        assert not os.path.exists(path)


def test_discard_after_switch_restores_previous_release_and_floor(
    layout: Layout,
) -> None:
    install_release(layout, "1.0", {"a": b"1"}, 1)
    install_release(layout, "2.0", {"a": b"2"}, 7)
    release.discard(layout, "2.0", first_install=False, fresh=True, previous="1.0")
    state = load_state(layout)
    assert state["current"] == "1.0" and "2.0" not in state["releases"]
    assert state["floor"] == 1
    assert os.readlink(layout.current) == "releases/1.0"
    assert not os.path.exists(layout.release_dir("2.0"))
    assert os.path.isdir(layout.release_dir("1.0"))


def test_rollback_to_previous_and_named(layout: Layout) -> None:
    install_release(layout, "1.0", {"a": b"1"}, 1)
    install_release(layout, "2.0", {"a": b"2"}, 2)
    assert release.rollback(layout, None)["current"] == "1.0"
    assert os.readlink(layout.current) == "releases/1.0"
    assert release.rollback(layout, "2.0")["changed"]
    assert release.rollback(layout, "2.0")["changed"] is False
    with pytest.raises(InstallError, match="not installed"):
        release.rollback(layout, "3.0")


def test_rollback_without_a_previous_release_explains(layout: Layout) -> None:
    install_release(layout, "1.0", {"a": b"1"}, 1)
    with pytest.raises(InstallError, match="no previous release"):
        release.rollback(layout, None)


def _bundle(path: Path, manifest: bytes, first: str = "airlock/manifest.json") -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(first)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))


def test_manifest_copy_is_checked_against_the_verified_digest(tmp_path: Path) -> None:
    data = b'{"files":[]}'
    _bundle(tmp_path / "b.tar", data)
    assert release.read_manifest(str(tmp_path / "b.tar"), hashlib.sha256(data).hexdigest()) == data
    with pytest.raises(IntegrityError, match="controller verified"):
        release.read_manifest(str(tmp_path / "b.tar"), "0" * 64)


def test_rejects_a_bundle_that_does_not_start_with_the_manifest(tmp_path: Path) -> None:
    _bundle(tmp_path / "b.tar", b"x", first="models/evil.gguf")
    with pytest.raises(IntegrityError, match="does not start with"):
        release.read_manifest(str(tmp_path / "b.tar"), "0" * 64)


def test_zip_self_is_byte_stable(tmp_path: Path) -> None:
    assert release.zip_self(str(tmp_path / "r.zip")) is True
    first = (tmp_path / "r.zip").read_bytes()
    assert release.zip_self(str(tmp_path / "r.zip")) is False
    assert (tmp_path / "r.zip").read_bytes() == first
