"""runtime.supervise: settings parsing, launch spec, start/stop/restart with backoff."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runtime import settings, supervise
from runtime.errors import InstallError


def test_env_file_values_are_shell_unquoted() -> None:
    env = settings.parse_env_file(
        "# comment\nAIRLOCK_ARGV='bin/x --model '\"'\"'a b.gguf'\"'\"''\nEMPTY=\nX=\"1 2\"\n"
    )
    assert env["X"] == "1 2" and env["EMPTY"] == ""
    assert env["AIRLOCK_ARGV"] == "bin/x --model 'a b.gguf'"


def test_rejects_a_settings_line_that_is_not_key_value() -> None:
    with pytest.raises(InstallError, match="line 1"):
        settings.parse_env_file("rm -rf /\n")


def test_launch_spec_resolves_paths_against_the_release(tmp_path: Path) -> None:
    rel = tmp_path / "releases" / "1.0"
    (rel / "engine" / "lib").mkdir(parents=True)
    env_file = tmp_path / "1.0.env"
    env_file.write_text(
        "AIRLOCK_ARGV='engine/bin/llama-server --model models/m.gguf --port 8080'\n"
        "AIRLOCK_CWD=engine/lib\nLD_LIBRARY_PATH=engine/lib\nFOO=bar\n"
    )
    argv, env, cwd = supervise.launch_spec(str(rel), str(env_file))
    assert argv[0] == str(rel / "engine/bin/llama-server")
    assert argv[argv.index("--model") + 1] == str(rel / "models/m.gguf")
    assert env["LD_LIBRARY_PATH"] == str(rel / "engine/lib")
    assert env["HF_HUB_OFFLINE"] == "1" and env["FOO"] == "bar"
    assert "AIRLOCK_CWD" not in env and cwd == str(rel / "engine/lib")


def _fake_release(tmp_path: Path, script: str) -> supervise.Paths:
    root, config = tmp_path / "opt", tmp_path / "etc"
    rel = root / "releases" / "1.0"
    (rel / "bin").mkdir(parents=True)
    server = rel / "bin" / "server"
    server.write_text("#!/bin/sh\n" + script)
    server.chmod(0o755)
    os.symlink("releases/1.0", root / "current")
    (config / "releases").mkdir(parents=True)
    (config / "releases" / "1.0.env").write_text("AIRLOCK_ARGV=bin/server\n")
    return supervise.Paths(
        root=str(root),
        config=str(config),
        run_dir=str(tmp_path / "run"),
        log_file=str(tmp_path / "log" / "server.log"),
    )


def _wait(predicate: object, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_start_is_idempotent_and_stop_kills_server_and_supervisor(tmp_path: Path) -> None:
    paths = _fake_release(tmp_path, "echo serving; exec sleep 60\n")
    try:
        assert supervise.start(paths, user=None) is True
        assert _wait(lambda: supervise.read_pid(paths.childfile) is not None)
        child = supervise.read_pid(paths.childfile)
        assert supervise.start(paths, user=None) is False
        assert supervise.status(paths)["running"] is True
    finally:
        assert supervise.stop(paths) is True
    assert child is not None
    assert _wait(lambda: not os.path.exists(f"/proc/{child}") or _zombie(child))
    assert supervise.status(paths)["running"] is False
    assert supervise.stop(paths) is False
    assert "serving" in Path(paths.log_file).read_text()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_a_crashing_server_is_restarted_with_backoff(tmp_path: Path) -> None:
    paths = _fake_release(tmp_path, "echo started; exit 3\n")
    try:
        supervise.start(paths, user=None)
        log = Path(paths.log_file)
        assert _wait(lambda: log.exists() and log.read_text().count("started") >= 2, timeout=15)
        text = log.read_text()
        assert "exited with 3; restarting in 1s" in text
        assert "restarting in 2s" in text or text.count("started") == 2
    finally:
        supervise.stop(paths)


def test_start_without_an_installed_release_explains(tmp_path: Path) -> None:
    paths = supervise.Paths(
        root=str(tmp_path), config=str(tmp_path), run_dir=str(tmp_path), log_file="/dev/null"
    )
    with pytest.raises(InstallError, match="does not point to a release"):
        supervise.start(paths, user=None)


def _slot_paths(base: supervise.Paths, tmp_path: Path, **kind: object) -> supervise.Paths:
    return supervise.Paths(
        root=base.root,
        config=base.config,
        run_dir=str(tmp_path / "run"),
        log_file=str(tmp_path / "log" / "slot.log"),
        state=str(tmp_path / "var"),
        **kind,  # type: ignore[arg-type]
    )


def test_a_slot_serves_its_assigned_release_on_loopback_at_its_port(tmp_path: Path) -> None:
    from runtime import slots

    legacy = _fake_release(tmp_path, 'echo "args: $*"; exec sleep 60\n')
    slot = _slot_paths(legacy, tmp_path, slot=8082)
    assert slot.pidfile != legacy.pidfile and slot.childfile != legacy.childfile
    with pytest.raises(InstallError, match="slot 8082 has no release"):
        supervise.start(slot, user=None)
    slots.assign(str(tmp_path / "var"), 8082, "1.0")
    try:
        assert supervise.start(slot, user=None) is True
        log = Path(slot.log_file)
        assert _wait(lambda: log.exists() and "args:" in log.read_text())
        assert "args: --host 127.0.0.1 --port 8082" in log.read_text()
        assert supervise.status(legacy)["running"] is False  # its own pidfiles
    finally:
        assert supervise.stop(slot) is True


def test_the_front_is_restarted_when_its_address_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _fake_release(tmp_path, "exit 0\n")
    front = _slot_paths(base, tmp_path, front="0.0.0.0:8080")
    argv, env, _ = front.launch()
    assert argv[1:4] == ["-m", "runtime.front", "serve"]
    assert argv[argv.index("--listen") + 1] == "0.0.0.0:8080"
    assert argv[-1] == str(tmp_path / "var" / "active-port")
    assert env["PYTHONPATH"] == os.path.join(base.root, "lib", "runtime.zip")
    # The daemon is a fork of this process: it runs the patched launch.
    monkeypatch.setattr(supervise.Paths, "launch", lambda self: (["/bin/sleep", "60"], {}, "/"))
    moved = _slot_paths(base, tmp_path, front="0.0.0.0:9090")
    try:
        assert supervise.start(front, user=None) is True
        first = supervise.read_pid(front.pidfile)
        assert supervise.start(front, user=None) is False
        assert supervise.start(moved, user=None) is True
        assert supervise.read_pid(moved.pidfile) not in (None, first)
        assert Path(moved.specfile).read_text() == "0.0.0.0:9090"
    finally:
        supervise.stop(moved)
