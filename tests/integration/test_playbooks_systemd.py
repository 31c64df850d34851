"""The playbooks on hosts that boot systemd as PID 1, reached as an unprivileged user with sudo.

Three disconnected hosts, each ``systemd-nspawn --boot`` of a Debian bookworm tree (made once
with mmdebstrap and cached outside the repository; every host writes only its own overlay) in
a network namespace with no route out, the distribution's sshd with ``PermitRootLogin no``.
The role takes the systemd path by itself (``/run/systemd/system`` exists): the hardened front
and slot units, the health gate on the idle slot, the switch, systemd's restart of a killed
server, a reboot, a rolling upgrade that stops at a failed batch, a gate failure rolled back
on one host while its public port keeps answering, verify, rollback, uninstall. The steps
share one fleet and run in file order.
"""

from __future__ import annotations

import functools
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.demo.hosts import TestFleet, TestHost
from bundler.demo.systemdhost import SystemdHost
from tests.rootfs import debian_rootfs

from .playbook_support import (
    SLOTS,
    Bundle,
    Signer,
    make_bundle,
    make_signer,
    pre_slot_tree,
    real_engine,
    run_playbook,
)
from .test_playbooks import (
    _ask,
    _corrupt_when_unpacked,
    _fronts,
    _PublicPortWatch,
    _server_users,
    _serves_on_slot,
    _slots,
    _state,
    _untouched,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

V1, V2, V3 = "1.0.0", "2.0.0", "3.0.0"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "sudo", "procps")
FRONT = "airlock-front.service"
TEMPLATE = "airlock-server@.service"
LEGACY = "airlock-server.service"  # the pre-slot role's single unit


def _slot_unit(port: int) -> str:
    return f"airlock-server@{port}.service"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("systemd")


@pytest.fixture(scope="module")
def signer(work: Path) -> Signer:
    return make_signer(work / "keys")


@pytest.fixture(scope="module")
def bundles(work: Path, signer: Signer) -> dict[str, Bundle]:
    engine = real_engine()
    return {
        v: make_bundle(work, engine, signer, version=v, sequence=i + 1, seed=i)
        for i, v in enumerate((V1, V2, V3))
    }


@pytest.fixture(scope="module")
def fleet(work: Path) -> Iterator[TestFleet]:
    rootfs = debian_rootfs("bookworm", include=PACKAGES)
    start = functools.partial(SystemdHost.start_systemd, rootfs=rootfs)
    with TestFleet(3, workdir=work / "fleet", become=True, start=start) as f:
        yield f


def _show(host: TestHost, prop: str, unit: str | None = None) -> str:
    """A property of ``unit``; by default the slot unit the front forwards to."""
    if unit is None:
        active = _slots(host)[0]
        assert active is not None
        unit = _slot_unit(active)
    return host.run(["systemctl", "show", "-p", prop, "--value", unit]).stdout.strip()


def _slot_units(host: TestHost, active: int) -> None:
    """The active slot's unit runs and starts at boot; the other one is stopped, disabled."""
    for port in SLOTS:
        unit = _slot_unit(port)
        if port == active:
            assert _show(host, "ActiveState", unit) == "active"
            assert _show(host, "UnitFileState", unit) == "enabled"
        else:
            assert _show(host, "ActiveState", unit) in ("inactive", "failed")
            assert _show(host, "UnitFileState", unit) == "disabled"
    assert _show(host, "ActiveState", FRONT) == "active"
    assert _show(host, "UnitFileState", FRONT) == "enabled"


def _wait(predicate: object, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.5)
    return False


def test_hosts_boot_systemd_as_pid1_with_no_route_out(fleet: TestFleet) -> None:
    for host in fleet.hosts:
        assert host.run("cat /proc/1/comm").stdout.strip() == "systemd"
        state = host.run(["systemctl", "is-system-running", "--wait"], check=False).stdout
        assert state.strip() in ("running", "degraded"), state
        assert host.run("test -d /run/systemd/system", check=False).returncode == 0
        routes = [r for r in host.routes() if not r.startswith(("local ", "broadcast "))]
        assert len(routes) == 1 and "default" not in routes[0]


def test_installs_under_the_hardened_unit(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    run = run_playbook(fleet, work, "install.yml", bundle=bundles[V1], signer=signer)
    assert run.rc == 0, run.output[-4000:]
    for host in fleet.hosts:
        assert _state(host)["current"] == V1
        assert _show(host, "ActiveState") == "active"
        assert _show(host, "UnitFileState") == "enabled"
        assert _show(host, "User") == "airlock"
        assert _server_users(host) == ["airlock"]
        assert _show(host, "User", FRONT) == "airlock"
        _serves_on_slot(host, SLOTS[0], V1)
        _slot_units(host, SLOTS[0])
        _ask(host)
    for unit in (_slot_unit(SLOTS[0]), FRONT):
        security = fleet.hosts[0].run(["systemd-analyze", "security", "--no-pager", unit]).stdout
        level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security)
        assert level, security
        print(f"systemd-analyze security {unit} on systemd 252: {level.group(1)}")
        (work / f"systemd-analyze-security-{unit}.txt").write_text(security)
        assert float(level.group(1)) <= 4.0, security


def test_second_run_changes_nothing(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    run = run_playbook(fleet, work, "install.yml", bundle=bundles[V1], signer=signer)
    assert run.rc == 0, run.output[-4000:]
    for host in fleet.hosts:
        assert run.changed(host.name) == 0, run.output[-6000:]


def test_systemd_restarts_a_killed_server(fleet: TestFleet) -> None:
    host = fleet.hosts[0]
    pid = _show(host, "MainPID")
    restarts = int(_show(host, "NRestarts"))
    assert pid != "0"
    assert "llama-server" in host.run(f"cat /proc/{pid}/cmdline").stdout
    host.run(["kill", "-9", pid])
    assert _wait(lambda: _show(host, "MainPID") not in ("0", pid))
    assert int(_show(host, "NRestarts")) == restarts + 1
    assert _wait(lambda: _show(host, "ActiveState") == "active")
    assert _wait(lambda: _ask_ok(host), timeout=90)


def _ask_ok(host: TestHost) -> bool:
    try:
        _ask(host)
    except OSError:
        return False
    return True


def test_after_a_reboot_the_service_is_back_on_current(fleet: TestFleet) -> None:
    host = fleet.hosts[1]
    assert isinstance(host, SystemdHost)
    boot_id, init = host.run("cat /proc/sys/kernel/random/boot_id").stdout, host.init_pid()
    host.reboot()
    for sock in fleet.control_dir.glob("*"):  # SSH masters to the old sshd are gone with it
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], capture_output=True)
    # A new boot: a new systemd process and nspawn's new boot id; nobody started the service.
    assert host.init_pid() != init
    assert host.run("cat /proc/sys/kernel/random/boot_id").stdout != boot_id
    assert host.run("cat /proc/1/comm").stdout.strip() == "systemd"
    assert _wait(lambda: _show(host, "ActiveState") == "active", timeout=90)
    assert host.run("readlink /opt/airlock/current").stdout.strip() == f"releases/{V1}"
    assert _wait(lambda: _show(host, "ActiveState", FRONT) == "active", timeout=90)
    assert _wait(lambda: _ask_ok(host), timeout=90)
    assert _server_users(host) == ["airlock"]
    _slot_units(host, SLOTS[0])


def _watch_and_corrupt(host: TestHost, version: str) -> tuple[threading.Thread, list[bool]]:
    model = f"/opt/airlock/releases/{version}/models/tiny/tiny.gguf"
    corrupted: list[bool] = []
    watcher = threading.Thread(
        target=lambda: corrupted.append(
            _corrupt_when_unpacked(host, model, time.monotonic() + 500)
        ),
        daemon=True,
    )
    watcher.start()
    return watcher, corrupted


def test_rolling_upgrade_stops_at_the_failed_batch(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    """serial=1, max_fail_percentage=0: host 1 upgrades, host 2 fails its gate and is rolled
    back to V1 under systemd, host 3 is never touched."""
    first, victim, last = fleet.hosts
    watcher, corrupted = _watch_and_corrupt(victim, V2)
    run = run_playbook(
        fleet, work, "install.yml", "-e", "airlock_serial=1", "-e", "airlock_max_fail_percentage=0",
        bundle=bundles[V2], signer=signer,
    )  # fmt: skip
    watcher.join(timeout=10)
    assert corrupted == [True]
    assert run.rc != 0
    assert f"FAILED on {victim.name}" in run.output and "health gate" in run.output
    assert f"Rolled back: release {V1} is current and serving" in run.output
    assert _state(first)["current"] == V2
    assert _state(victim)["current"] == V1 and V2 not in _state(victim)["releases"]  # type: ignore[operator]
    _serves_on_slot(first, SLOTS[1], V2)
    _slot_units(first, SLOTS[1])
    # The victim's V2 failed on the idle slot: V1's slot never stopped, the front never moved.
    _serves_on_slot(victim, SLOTS[0], V1)
    _slot_units(victim, SLOTS[0])
    assert last.name not in run.recap()  # the roll stopped before the last batch
    assert _state(last)["current"] == V1
    assert last.run(f"test -e /opt/airlock/releases/{V2}", check=False).returncode == 1
    for host in fleet.hosts:
        _ask(host)


def test_gate_failure_rolls_back_only_that_host(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    """All at once: host 3 fails its gate and goes back to V1; hosts 1 and 2 reach V3."""
    victim = fleet.hosts[2]
    watcher, corrupted = _watch_and_corrupt(victim, V3)
    watch = _PublicPortWatch(victim)
    watch.start()
    run = run_playbook(fleet, work, "install.yml", bundle=bundles[V3], signer=signer)
    watch.stop()
    watcher.join(timeout=10)
    assert corrupted == [True]
    assert run.rc != 0
    assert watch.answered > 0 and watch.failed == [], watch.failed[:5]
    assert watch.active == {SLOTS[0]}
    recap = run.recap()
    assert recap[victim.name]["failed"] == 1
    assert f"Rolled back: release {V1} is current and serving" in run.output
    for host in fleet.hosts:
        if host is victim:
            assert _state(host)["current"] == V1
            _serves_on_slot(host, SLOTS[0], V1)
        else:
            assert recap[host.name]["failed"] == 0 and _state(host)["current"] == V3
        _slot_units(host, _slots(host)[0] or 0)
        _ask(host)


def test_verify_rollback_and_uninstall(fleet: TestFleet, work: Path) -> None:
    run = run_playbook(fleet, work, "verify.yml")
    assert run.rc == 0, run.output[-4000:]
    host = fleet.hosts[0]
    run = run_playbook(fleet, work, "rollback.yml", "--limit", host.name)
    assert run.rc == 0, run.output[-4000:]
    assert _state(host)["current"] == V2
    _serves_on_slot(host, SLOTS[1], V2)  # V3 served on SLOTS[0]; V2 started on the other
    _slot_units(host, SLOTS[1])
    _ask(host)
    run = run_playbook(fleet, work, "uninstall.yml")
    assert run.rc == 0, run.output[-4000:]
    for h in fleet.hosts:
        assert _untouched(h)
        assert h.run("id airlock", check=False).returncode != 0
        for unit in (FRONT, TEMPLATE):
            assert h.run(f"test -e /etc/systemd/system/{unit}", check=False).returncode == 1
        for unit in (FRONT, *map(_slot_unit, SLOTS)):
            assert _show(h, "LoadState", unit) == "not-found"
        assert h.run("ls /etc/systemd/system/multi-user.target.wants/").stdout.count("airlock") == 0
        assert _server_users(h) == [] and _fronts(h) == 0


def test_upgrade_from_a_pre_slot_unit(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    """A host installed by the role before the slots (the single airlock-server.service on the
    public port) upgrades to the front and a slot; the old unit is stopped, disabled, removed."""
    host = fleet.hosts[0]
    limit = ["--limit", f"localhost,{host.name}"]
    old = pre_slot_tree(work / "pre-slot") / "playbooks"
    run = run_playbook(fleet, work, "install.yml", *limit, bundle=bundles[V1], signer=signer,
                       playbooks=old)  # fmt: skip
    assert run.rc == 0, run.output[-4000:]
    assert _show(host, "ActiveState", LEGACY) == "active" and _slots(host) == (None, {})
    run = run_playbook(fleet, work, "install.yml", *limit, bundle=bundles[V2], signer=signer)
    assert run.rc == 0, run.output[-4000:]
    _serves_on_slot(host, SLOTS[0], V2)
    _slot_units(host, SLOTS[0])
    assert host.run(f"test -e /etc/systemd/system/{LEGACY}", check=False).returncode == 1
    assert _show(host, "LoadState", LEGACY) == "not-found"
    assert _server_users(host) == ["airlock"]
    _ask(host)
    run = run_playbook(fleet, work, "install.yml", *limit, bundle=bundles[V2], signer=signer)
    assert run.rc == 0 and run.changed(host.name) == 0, run.output[-6000:]
    run = run_playbook(fleet, work, "uninstall.yml", "--limit", host.name)
    assert run.rc == 0, run.output[-4000:]
    assert _untouched(host) and _fronts(host) == 0 and _server_users(host) == []
