"""install.yml, verify.yml, rollback.yml, uninstall.yml with real components.

Three disconnected test hosts (network namespaces, no route out, their own mount namespaces,
real sshd), the real ansible-playbook over real SSH, real signed bundles carrying the real
llama-server and a generated GGUF model. The steps share one fleet and run in file order:
each test starts from the state the previous one left.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.demo.hosts import TestFleet, TestHost

from .playbook_support import (
    PORT,
    SLOTS,
    Bundle,
    Signer,
    make_bundle,
    make_signer,
    pre_slot_tree,
    real_engine,
    run_playbook,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

V1, V2 = "1.0.0", "2.0.0"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("playbooks")


@pytest.fixture(scope="module")
def signer(work: Path) -> Signer:
    return make_signer(work / "keys")


@pytest.fixture(scope="module")
def bundles(work: Path, signer: Signer) -> dict[str, Bundle]:
    engine = real_engine()
    return {
        V1: make_bundle(work, engine, signer, version=V1, sequence=1),
        V2: make_bundle(work, engine, signer, version=V2, sequence=2, seed=1),
    }


@pytest.fixture(scope="module")
def fleet(work: Path) -> Iterator[TestFleet]:
    with TestFleet(3, workdir=work / "fleet") as f:
        yield f


def _state(host: TestHost) -> dict[str, object]:
    out = host.run("cat /var/lib/airlock/state.json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _untouched(host: TestHost) -> bool:
    out = host.run("ls -d /opt/airlock /etc/airlock /var/lib/airlock 2>/dev/null", check=False)
    return out.stdout.strip() == ""


def _server_users(host: TestHost) -> list[str]:
    """Owners of the llama-server processes running in this host's network namespace."""
    users = []
    for pid in host.pids():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"/llama-server") for a in argv0[:2]):
            uid = int(status.split("\nUid:")[1].split()[0])
            users.append(host.run(f"id -nu {uid}").stdout.strip())  # the host's own passwd
    return users


def _slots(host: TestHost) -> tuple[int | None, dict[int, str]]:
    """The front's active port and the release of each slot (/var/lib/airlock)."""
    out = host.run(
        "cat /var/lib/airlock/active-port 2>/dev/null; echo --;"
        " cd /var/lib/airlock/slots 2>/dev/null && grep -H . * 2>/dev/null",
        check=False,
    ).stdout
    active, _, assigned = out.partition("--")
    slots = {}
    for line in assigned.split():
        port, _, version = line.partition(":")
        slots[int(port)] = version
    return (int(active) if active.strip() else None), slots


def _listening(host: TestHost) -> dict[int, str]:
    """TCP ports listening in the host's network namespace, with their address (hex, IPv4)."""
    out = host.run("cat /proc/net/tcp /proc/net/tcp6").stdout
    ports = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":
            addr, port = fields[1].rsplit(":", 1)
            ports[int(port, 16)] = addr
    return ports


LOOPBACK, ANY = "0100007F", "00000000"


def _serves_on_slot(host: TestHost, slot: int, version: str) -> None:
    """The front owns the public port and forwards to ``slot``, which serves ``version``;
    the other slot is stopped and forgotten."""
    assert _slots(host) == (slot, {slot: version}), _slots(host)
    listening = _listening(host)
    assert listening.get(PORT) == ANY, listening
    assert listening.get(slot) == LOOPBACK, listening
    assert all(other not in listening for other in SLOTS if other != slot), listening


def _fronts(host: TestHost) -> int:
    """How many runtime.front processes run in this host's network namespace."""
    count = 0
    for pid in host.pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        count += b"runtime.front" in argv
    return count


def _ask(host: TestHost) -> str:
    """One completion from the controller side, over the host's veth."""
    body = json.dumps({"prompt": "Hello", "max_tokens": 3}).encode()
    req = urllib.request.Request(
        f"http://{host.address}:{PORT}/v1/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    assert answer["choices"], answer
    return str(answer["model"]) if "model" in answer else "?"


def test_untrusted_signer_is_refused_and_no_host_is_touched(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle]
) -> None:
    stranger = make_signer(work / "stranger", "stranger")
    run = run_playbook(fleet, work, "install.yml", bundle=bundles[V1], signer=stranger)
    assert run.rc != 0
    assert "REFUSED by the trust policy" in run.output
    assert set(run.recap()) == {"localhost"}
    assert all(_untouched(h) for h in fleet.hosts)


def test_tampered_bundle_is_refused_and_no_host_is_touched(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    tampered = work / "tampered.tar"
    shutil.copy(bundles[V1].path, tampered)
    with open(tampered, "r+b") as f:  # flip one payload byte well past the metadata region
        f.seek(-4096, 2)
        byte = f.read(1)
        f.seek(-4096, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = Bundle(path=tampered, manifest_sha256="", version=V1, sequence=1)
    run = run_playbook(fleet, work, "install.yml", bundle=bad, signer=signer)
    assert run.rc != 0
    assert "REFUSED by the trust policy" in run.output
    assert set(run.recap()) == {"localhost"}
    assert all(_untouched(h) for h in fleet.hosts)


def test_installs_three_hosts_in_parallel_and_never_connects_out(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    for host in fleet.hosts:
        # The only route is the link to the controller's veth: no default route.
        main_routes = [r for r in host.routes() if not r.startswith(("local ", "broadcast "))]
        assert main_routes == [main_routes[0]] and "default" not in main_routes[0]
        assert main_routes[0].startswith(host.address.rsplit(".", 1)[0])
    before = [h.snmp()["Ip.OutNoRoutes"] for h in fleet.hosts]
    run = run_playbook(fleet, work, "install.yml", bundle=bundles[V1], signer=signer)
    assert run.rc == 0, run.output[-4000:]
    for host, no_route in zip(fleet.hosts, before):
        state = _state(host)
        assert state["current"] == V1 and state["floor"] == 1
        releases = state["releases"]
        assert isinstance(releases, dict)
        assert releases[V1]["manifest_sha256"] == bundles[V1].manifest_sha256
        assert host.run("readlink /opt/airlock/current").stdout.strip() == f"releases/{V1}"
        _ask(host)
        # The kernel counts every packet/connect() towards an address without a route.
        assert host.snmp()["Ip.OutNoRoutes"] == no_route, "the host tried to reach outside"
        assert _server_users(host) == ["airlock"]
        # The front owns the public port; the release serves on the first slot, on loopback.
        _serves_on_slot(host, SLOTS[0], V1)
        assert _fronts(host) == 1


def test_the_no_route_detector_detects(fleet: TestFleet) -> None:
    """The OutNoRoutes check above is real: an outside connect() on a host moves it."""
    host = fleet.hosts[0]
    before = host.snmp()["Ip.OutNoRoutes"]
    host.run(
        "python3 -c \"import socket; socket.create_connection(('192.0.2.1', 80), timeout=2)\"",
        check=False,
    )
    assert host.snmp()["Ip.OutNoRoutes"] == before + 1


def test_second_run_changes_nothing(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    run = run_playbook(fleet, work, "install.yml", bundle=bundles[V1], signer=signer)
    assert run.rc == 0, run.output[-4000:]
    for host in fleet.hosts:
        assert run.changed(host.name) == 0, run.output[-6000:]


def test_check_mode_shows_the_upgrade_and_changes_nothing(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    run = run_playbook(
        fleet, work, "install.yml", "--check", "--diff", bundle=bundles[V2], signer=signer
    )
    assert run.rc == 0, run.output[-4000:]
    assert f"unpack release {V2}" in run.output
    for host in fleet.hosts:
        assert _state(host)["current"] == V1
        assert host.run(f"test -e /opt/airlock/releases/{V2}", check=False).returncode == 1


def _corrupt_when_unpacked(host: TestHost, path: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if host.run(f"test -f {path}", check=False).returncode == 0:
            host.run(f"printf 'XXXX' | dd of={path} bs=1 count=4 conv=notrunc 2>/dev/null")
            return True
        time.sleep(0.02)
    return False


class _PublicPortWatch:
    """Asks a host's public /health over and over (sequentially, 30 s timeout each) and
    reads its front's active port each time, until stopped."""

    def __init__(self, host: TestHost) -> None:
        import threading

        self.host = host
        self.answered = 0
        self.failed: list[str] = []
        self.active: set[int | None] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not self._stop.is_set():
            try:
                with opener.open(f"http://{self.host.address}:{PORT}/health", timeout=30) as r:
                    r.read()
                self.answered += 1
            except OSError as e:
                self.failed.append(repr(e))
            self.active.add(_slots(self.host)[0])
            time.sleep(0.1)


def test_health_gate_failure_rolls_back_only_that_host(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    import threading

    victim = fleet.hosts[1]
    model = f"/opt/airlock/releases/{V2}/models/tiny/tiny.gguf"
    corrupted: list[bool] = []
    watcher = threading.Thread(
        target=lambda: corrupted.append(
            _corrupt_when_unpacked(victim, model, time.monotonic() + 500)
        ),
        daemon=True,
    )
    watcher.start()
    # While the victim's new release fails its gate on the idle slot, its public port keeps
    # answering from the old one: the front never moves.
    watch = _PublicPortWatch(victim)
    watch.start()
    run = run_playbook(fleet, work, "install.yml", bundle=bundles[V2], signer=signer)
    watch.stop()
    watcher.join(timeout=10)
    assert corrupted == [True]
    assert run.rc != 0
    assert watch.answered > 0 and watch.failed == [], watch.failed[:5]
    assert watch.active == {SLOTS[0]}
    recap = run.recap()
    assert recap[victim.name]["failed"] == 1
    assert f"FAILED on {victim.name}" in run.output and "health gate" in run.output
    assert f"Rolled back: release {V1} is current and serving" in run.output
    for host in fleet.hosts:
        state = _state(host)
        releases = state["releases"]
        assert isinstance(releases, dict)
        if host is victim:
            assert state["current"] == V1 and V2 not in releases and state["floor"] == 1
            assert host.run(f"test -e /opt/airlock/releases/{V2}", check=False).returncode == 1
            _serves_on_slot(host, SLOTS[0], V1)
        else:
            assert recap[host.name]["failed"] == 0
            assert state["current"] == V2 and state["floor"] == 2
            _serves_on_slot(host, SLOTS[1], V2)  # and the old slot was stopped
        assert _server_users(host) == ["airlock"]
        _ask(host)


def test_verify_passes_then_reports_a_modified_file(fleet: TestFleet, work: Path) -> None:
    run = run_playbook(fleet, work, "verify.yml")
    assert run.rc == 0, run.output[-4000:]
    assert all(run.changed(h.name) == 0 for h in fleet.hosts)
    host = fleet.hosts[0]
    target = f"/opt/airlock/releases/{V2}/templates/server.env.j2"
    host.run(f"printf 'implant' >> {target}")
    run = run_playbook(fleet, work, "verify.yml")
    assert run.rc != 0
    recap = run.recap()
    assert recap[host.name]["failed"] == 1 and recap[host.name]["changed"] == 0
    assert recap[fleet.hosts[2].name]["failed"] == 0
    assert f"DRIFT on {host.name}" in run.output
    assert f"{target}: expected " in run.output


def test_rollback_returns_to_the_previous_release(fleet: TestFleet, work: Path) -> None:
    hosts = [fleet.hosts[0], fleet.hosts[2]]
    run = run_playbook(fleet, work, "rollback.yml", "--limit", ",".join(h.name for h in hosts))
    assert run.rc == 0, run.output[-4000:]
    for host in hosts:
        assert _state(host)["current"] == V1
        assert host.run("readlink /opt/airlock/current").stdout.strip() == f"releases/{V1}"
        # V1 was started on the idle slot; the front moved there; V2's slot was stopped.
        _serves_on_slot(host, SLOTS[0], V1)
        _ask(host)
    run = run_playbook(fleet, work, "rollback.yml", "--limit", hosts[0].name, "-e",
                       f"airlock_rollback_to={V1}")  # fmt: skip
    assert run.rc == 0 and run.changed(hosts[0].name) == 0, run.output[-4000:]


def test_rejects_rollback_below_floor(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    """Sequence 1 after sequence 2 was installed is refused, even though 1.0.0 is current."""
    host = fleet.hosts[2]
    old = host.run("cat /var/lib/airlock/state.json").stdout
    run = run_playbook(
        fleet, work, "install.yml", "--limit", f"localhost,{host.name}",
        bundle=bundles[V1], signer=signer,
    )  # fmt: skip
    # 1.0.0 is current and recorded, so only the floor check can refuse it.
    assert run.rc != 0
    assert "rollback protection" in run.output
    assert host.run("cat /var/lib/airlock/state.json").stdout == old


def test_uninstall_removes_everything(fleet: TestFleet, work: Path) -> None:
    run = run_playbook(fleet, work, "uninstall.yml")
    assert run.rc == 0, run.output[-4000:]
    for host in fleet.hosts:
        assert _untouched(host)
        assert host.run("id airlock", check=False).returncode != 0
        assert _server_users(host) == [] and _fronts(host) == 0
        assert not set(_listening(host)) & {PORT, *SLOTS}


def test_upgrade_from_a_pre_slot_install(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    """A host installed by the role before the slots (one server on the public port, the plain
    supervisor's single instance) upgrades to the front and a slot; the public port closes
    once, between the old server's stop and the front's start."""
    host = fleet.hosts[0]
    limit = ["--limit", f"localhost,{host.name}"]
    old = pre_slot_tree(work / "pre-slot") / "playbooks"
    run = run_playbook(fleet, work, "install.yml", *limit, bundle=bundles[V1], signer=signer,
                       playbooks=old)  # fmt: skip
    assert run.rc == 0, run.output[-4000:]
    assert _slots(host) == (None, {}) and _fronts(host) == 0
    assert _listening(host).get(PORT) == ANY  # llama-server itself
    assert host.run("test -f /run/airlock/supervise.pid", check=False).returncode == 0
    run = run_playbook(fleet, work, "install.yml", *limit, bundle=bundles[V2], signer=signer)
    assert run.rc == 0, run.output[-4000:]
    assert _state(host)["current"] == V2
    _serves_on_slot(host, SLOTS[0], V2)
    assert host.run("test -e /run/airlock/supervise.pid", check=False).returncode == 1
    assert _server_users(host) == ["airlock"] and _fronts(host) == 1
    _ask(host)
    run = run_playbook(fleet, work, "install.yml", *limit, bundle=bundles[V2], signer=signer)
    assert run.rc == 0 and run.changed(host.name) == 0, run.output[-6000:]


def test_a_failure_after_the_switch_puts_the_old_slot_and_port_back(
    fleet: TestFleet, work: Path, signer: Signer
) -> None:
    """V3 moves the public port to 80, where the front (as airlock) cannot bind: V3 passes
    its gate and its slot, current and the front move, the old slot is stopped, and only the
    final check on the public port fails. The rescue starts V2 on the old slot again, points
    the front back at it, restarts the front on V2's port, stops V3's slot and discards V3."""
    host = fleet.hosts[0]
    limit = ["--limit", f"localhost,{host.name}"]
    v3 = make_bundle(work, real_engine(), signer, version="3.0.0", sequence=3, seed=2)
    moved = ["-e", '{"airlock_server_overrides": {"port": 80}, "airlock_slot_ports": [9091, 9092]}']
    run = run_playbook(fleet, work, "install.yml", *limit, *moved, "-e",
                       "airlock_health_timeout=20", bundle=v3, signer=signer)  # fmt: skip
    assert run.rc != 0
    assert f"FAILED on {host.name} at Verify" in run.text, run.output[-4000:]
    assert f"Rolled back: release {V2} is current and serving" in run.text
    assert "Slots | stop the old slot" in run.output  # it had got that far
    state = _state(host)
    assert state["current"] == V2 and "3.0.0" not in state["releases"]  # type: ignore[operator]
    _serves_on_slot(host, SLOTS[0], V2)
    assert not set(_listening(host)) & {80, 9091, 9092}
    assert _fronts(host) == 1 and _server_users(host) == ["airlock"]
    _ask(host)


def test_a_moved_public_port_restarts_the_front_there(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    """airlock_server_overrides.port moves the public port: the release starts on the new
    pair of slots, the front restarts on the new port, the old slot stops."""
    host = fleet.hosts[0]
    limit = ["--limit", f"localhost,{host.name}"]
    moved = ["-e", '{"airlock_server_overrides": {"port": 9090}}']
    run = run_playbook(fleet, work, "install.yml", *limit, *moved, "-e",
                       "airlock_reconfigure=true", bundle=bundles[V2], signer=signer)  # fmt: skip
    assert run.rc == 0, run.output[-4000:]
    assert _slots(host) == (9091, {9091: V2})
    listening = _listening(host)
    assert listening.get(9090) == ANY and listening.get(9091) == LOOPBACK, listening
    assert not set(listening) & {PORT, *SLOTS}, listening
    assert _fronts(host) == 1 and _server_users(host) == ["airlock"]
    run = run_playbook(fleet, work, "install.yml", *limit, *moved, bundle=bundles[V2],
                       signer=signer)  # fmt: skip
    assert run.rc == 0 and run.changed(host.name) == 0, run.output[-6000:]
    run = run_playbook(fleet, work, "uninstall.yml", "--limit", host.name)
    assert run.rc == 0, run.output[-4000:]
    assert _untouched(host) and _fronts(host) == 0 and _server_users(host) == []
