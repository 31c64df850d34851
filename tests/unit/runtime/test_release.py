"""runtime.release: state, sequence floor, atomic switch, manifest copy, discard, rollback, CLI."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import List

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


# ---------------------------------------------------------------- the zip and host-facts


def test_zip_self_holds_the_entry_point_and_every_runtime_module(tmp_path: Path) -> None:
    release.zip_self(str(tmp_path / "r.zip"))
    with zipfile.ZipFile(tmp_path / "r.zip") as z:
        names = z.namelist()
        assert names[0] == "__main__.py"
        assert z.read("__main__.py") == release.ZIP_MAIN.encode()
    runtime_dir = Path(release.__file__).parent
    assert names[1:] == sorted(f"runtime/{p.name}" for p in runtime_dir.glob("*.py"))


def test_zip_entry_point_parses_without_newer_syntax() -> None:
    # No f-strings, annotations or walrus: a Python too old for the runtime must still
    # reach the version check (the oldest grammar ast can check is 3.4's).
    ast.parse(release.ZIP_MAIN, feature_version=(3, 4))


@pytest.fixture
def runtime_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zip") / "runtime.zip"
    release.zip_self(str(path))
    return path


def run_zip(python: str, runtime_zip: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -S and no PYTHONPATH: only the zip, never the checkout, provides the runtime package.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [python, "-S", str(runtime_zip), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
        env=env,
    )


def test_the_zip_reports_host_facts_and_creates_nothing(runtime_zip: Path, tmp_path: Path) -> None:
    layout = ["--root", str(tmp_path / "opt"), "--state", str(tmp_path / "var")]
    install = tmp_path / "opt" / "airlock"
    proc = run_zip(
        sys.executable,
        runtime_zip,
        "release",
        *layout,
        "host-facts",
        "--install-path",
        str(install),
    )
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert sorted(facts) == ["arch", "free", "libc", "libc_refusal", "python", "state", "systemd"]
    assert facts["libc"]["glibc"] == os.confstr("CS_GNU_LIBC_VERSION").split()[1]
    assert facts["libc_refusal"] is None  # no --glibc-min: nothing to refuse
    assert facts["state"] == empty_state()
    assert facts["python"] == list(sys.version_info[:3])
    assert facts["arch"] == os.uname().machine
    assert facts["systemd"] == os.path.isdir("/run/systemd/system")
    st = os.statvfs(tmp_path)
    assert abs(facts["free"] - st.f_bavail * st.f_frsize) < 64 << 20
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_host_facts_reads_the_state_and_refuses_an_unknown_schema(
    layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    install_release(layout, "1.0", {"a": b"a"}, 3)
    argv = ["--root", layout.root, "--config", layout.config, "--state", layout.state]
    assert release.main([*argv, "host-facts", "--install-path", layout.root]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["state"] == load_state(layout)
    assert facts["state"]["current"] == "1.0" and facts["state"]["floor"] == 3
    Path(layout.state_file).write_text('{"schema": 2}')
    assert release.main([*argv, "host-facts", "--install-path", layout.root]) == 60
    out = capsys.readouterr()
    assert json.loads(out.out)["failed"] is True
    assert "has an unknown schema" in out.err


def test_the_zip_runs_any_runtime_command_line_like_python_m(
    runtime_zip: Path, tmp_path: Path
) -> None:
    proc = run_zip(sys.executable, runtime_zip, "selection", "--help")
    assert proc.returncode == 0 and "usage: python3 -m runtime.selection" in proc.stdout
    # Arguments and exit codes pass through: unpack refuses a short digest with 2.
    proc = run_zip(
        sys.executable,
        runtime_zip,
        "unpack",
        "b.tar",
        str(tmp_path / "d"),
        "--manifest-sha256",
        "0",
    )
    assert proc.returncode == 2 and "64 hex digits" in proc.stderr
    for args in ([], ["nope"], ["fsio"], ["../x"]):
        proc = run_zip(sys.executable, runtime_zip, *args)
        assert proc.returncode == 2 and "usage: python3 runtime.zip MODULE" in proc.stderr


def _old_pythons() -> List[str]:
    found = []
    for p in sorted(Path("/root/.pyenv/versions").glob("*/bin/python")):
        try:
            version = tuple(int(x) for x in p.parts[-3].split(".")[:2])
        except ValueError:
            continue
        if version < (3, 8):
            found.append(str(p))
    return found


OLD_PYTHONS = _old_pythons()


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python older than 3.8 on this machine")
@pytest.mark.parametrize("python", OLD_PYTHONS)
def test_an_old_python_reports_its_version_and_nothing_else(python: str, runtime_zip: Path) -> None:
    proc = run_zip(python, runtime_zip, "release", "host-facts", "--install-path", "/opt/airlock")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert list(facts) == ["python"] and facts["python"] < [3, 8]
    proc = run_zip(python, runtime_zip, "unpack", "b.tar", "/tmp/d", "--manifest-sha256", "0")
    assert proc.returncode == 50
    assert "needs Python 3.8 or newer" in proc.stderr
