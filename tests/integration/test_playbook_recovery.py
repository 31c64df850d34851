"""install.yml failure recovery on one real test host: interrupted installs and first installs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.demo.hosts import TestFleet, TestHost

from .playbook_support import (
    Signer,
    make_bundle,
    make_signer,
    playbook_command,
    real_engine,
    run_playbook,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recovery")


@pytest.fixture(scope="module")
def signer(work: Path) -> Signer:
    return make_signer(work / "keys")


@pytest.fixture
def fleet(work: Path) -> Iterator[TestFleet]:
    with TestFleet(1, workdir=work / f"fleet-{time.monotonic_ns()}") as f:
        yield f


def _clean(host: TestHost) -> bool:
    out = host.run("ls -d /opt/airlock /etc/airlock /var/lib/airlock 2>/dev/null", check=False)
    return out.stdout.strip() == "" and host.run("id airlock", check=False).returncode != 0


def _unpack_pid(host: TestHost) -> int | None:
    for pid in host.pids():
        try:
            if b"runtime.unpack" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def test_check_mode_on_a_fresh_host_changes_nothing(
    fleet: TestFleet, work: Path, signer: Signer
) -> None:
    bundle = make_bundle(work, real_engine(), signer, version="0.1.0", sequence=1)
    run = run_playbook(
        fleet, work, "install.yml", "--check", "--diff", bundle=bundle, signer=signer
    )
    assert run.rc == 0, run.output[-4000:]
    assert "would transfer" in run.output
    assert run.changed(fleet.hosts[0].name) > 0  # it does say what would change
    assert _clean(fleet.hosts[0])


def test_failed_first_install_leaves_the_host_clean(
    fleet: TestFleet, work: Path, signer: Signer
) -> None:
    broken = make_bundle(work, real_engine(), signer, version="0.9.0", sequence=1, break_model=True)
    run = run_playbook(fleet, work, "install.yml", bundle=broken, signer=signer)
    host = fleet.hosts[0]
    assert run.rc != 0
    assert "health gate" in run.output
    assert "The host was left clean (failed first install)" in run.output
    assert _clean(host)
    for pid in host.pids():  # nothing but sshd (and its sessions) is left running
        assert b"sshd" in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_install_killed_during_unpack_then_rerun_converges(
    fleet: TestFleet, work: Path, signer: Signer
) -> None:
    bundle = make_bundle(
        work, real_engine(), signer, version="1.0.0", sequence=1, filler_bytes=384 << 20
    )
    host = fleet.hosts[0]
    argv, env = playbook_command(fleet, work, "install.yml", bundle=bundle, signer=signer)
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    killed = False
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            pid = _unpack_pid(host)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)  # the host "crashes" in the middle of unpacking
                os.killpg(proc.pid, signal.SIGKILL)  # and the operator's run dies with it
                killed = True
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed, "the unpack never ran"
    assert host.run("test -e /opt/airlock/releases/1.0.0", check=False).returncode == 1
    assert host.run("test -e /opt/airlock/current", check=False).returncode == 1

    run = run_playbook(fleet, work, "install.yml", bundle=bundle, signer=signer)
    assert run.rc == 0, run.output[-4000:]
    state = json.loads(host.run("cat /var/lib/airlock/state.json").stdout)
    assert state["current"] == "1.0.0"
    leftovers = host.run("ls -A /opt/airlock/releases /opt/airlock/incoming").stdout.split()
    assert [x for x in leftovers if "staging" in x or x.endswith((".tar", ".part"))] == []
    assert host.run("readlink /opt/airlock/current").stdout.strip() == "releases/1.0.0"
    again = run_playbook(fleet, work, "install.yml", bundle=bundle, signer=signer)
    assert again.rc == 0 and again.changed(host.name) == 0, again.output[-4000:]


def _old_python() -> str | None:
    """A Python older than 3.8 on this machine (pyenv), for the preflight refusal."""
    for p in sorted(Path("/root/.pyenv/versions").glob("3.[0-7].*/bin/python")):
        return str(p)
    return None


@pytest.mark.skipif(_old_python() is None, reason="no Python older than 3.8 on this machine")
def test_python_older_than_3_8_is_refused_by_name_and_nothing_changes(
    fleet: TestFleet, work: Path, signer: Signer
) -> None:
    """The host facts run the bundle's runtime zip; an old Python still reports its version."""
    old = _old_python()
    assert old is not None
    version = old.split("/")[-3]
    bundle = make_bundle(work, real_engine(), signer, version="0.1.0", sequence=1)
    run = run_playbook(
        fleet, work, "install.yml", "-e", f"airlock_python={old}", bundle=bundle, signer=signer
    )
    assert run.rc != 0
    assert f"has Python {version}; the airlock runtime needs Python 3.8+" in run.output
    assert "is undefined" not in run.output, run.output[-4000:]
    assert "Nothing on the host was changed" in run.text
    assert _clean(fleet.hosts[0])


def test_state_file_of_an_unknown_schema_is_refused_before_anything_changes(
    fleet: TestFleet, work: Path, signer: Signer
) -> None:
    host = fleet.hosts[0]
    host.run("mkdir -p /var/lib/airlock && echo '{\"schema\": 99}' > /var/lib/airlock/state.json")
    bundle = make_bundle(work, real_engine(), signer, version="0.1.0", sequence=1)
    run = run_playbook(fleet, work, "install.yml", bundle=bundle, signer=signer)
    assert run.rc != 0
    assert "has an unknown schema" in run.output
    assert "Nothing on the host was changed" in run.text, run.output[-4000:]
    assert host.run("cat /var/lib/airlock/state.json").stdout == '{"schema": 99}\n'
    out = host.run("ls -d /opt/airlock /etc/airlock 2>/dev/null", check=False)
    assert out.stdout.strip() == ""
