"""Every playbook as an unprivileged SSH user with become (sudo) on hosts that refuse root SSH.

Two disconnected test hosts whose sshd has ``PermitRootLogin no``; Ansible logs in as a user
made for this run and becomes root through the one sudoers rule in
``bundler.demo.hosts.SUDO_RULE``. The steps share one fleet and run in file order.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.demo.hosts import SUDO_RULE, TestFleet, TestHost

from .playbook_support import Bundle, Signer, make_bundle, make_signer, real_engine, run_playbook
from .test_playbooks import _ask, _server_users, _state, _untouched

pytestmark = [pytest.mark.netns, pytest.mark.slow]

V1, V2 = "1.0.0", "2.0.0"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("become")


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
    with TestFleet(2, workdir=work / "fleet", become=True) as f:
        yield f


def _ssh(fleet: TestFleet, host: TestHost, user: str, cmd: str) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-o", "BatchMode=yes", "-i", str(fleet.key.private), *fleet.ssh_args()]
    argv += ["-o", "ControlMaster=no", f"{user}@{host.address}", cmd]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_hosts_refuse_root_ssh_and_the_user_has_only_the_sudo_rule(fleet: TestFleet) -> None:
    user = fleet.login_user
    assert user != "root"
    for host in fleet.hosts:
        refused = _ssh(fleet, host, "root", "true")
        assert refused.returncode == 255 and "Permission denied" in refused.stderr
        uid = _ssh(fleet, host, user, "id -u")
        assert uid.returncode == 0 and uid.stdout.strip().isdigit(), uid.stderr
        assert uid.stdout.strip() != "0"
        rule = host.run(f"cat /etc/sudoers.d/{user}").stdout
        assert rule == SUDO_RULE.format(user=user)
        # The user cannot run a command as root other than through /bin/sh.
        other = _ssh(fleet, host, user, "sudo -n /usr/bin/id -u")
        assert other.returncode == 1 and "password is required" in other.stderr, other.stderr
        shell = _ssh(fleet, host, user, "sudo -n /bin/sh -c 'id -u'")
        assert shell.stdout.strip() == "0", shell.stderr


def test_installs_as_the_unprivileged_user(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    run = run_playbook(fleet, work, "install.yml", bundle=bundles[V1], signer=signer)
    assert run.rc == 0, run.output[-4000:]
    for host in fleet.hosts:
        state = _state(host)
        assert state["current"] == V1 and state["floor"] == 1
        assert _server_users(host) == ["airlock"]
        owner = host.run("stat -c '%U %a' /opt/airlock/upload /opt/airlock/incoming").stdout
        assert owner.split("\n")[:2] == [f"{fleet.login_user} 700", "root 700"]
        assert host.run("ls -A /opt/airlock/upload /opt/airlock/incoming").stdout.count(".tar") == 0
        _ask(host)


def test_second_run_changes_nothing(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    run = run_playbook(fleet, work, "install.yml", bundle=bundles[V1], signer=signer)
    assert run.rc == 0, run.output[-4000:]
    for host in fleet.hosts:
        assert run.changed(host.name) == 0, run.output[-6000:]


def test_upgrade_resumes_a_partial_upload_of_the_user(
    fleet: TestFleet, work: Path, bundles: dict[str, Bundle], signer: Signer
) -> None:
    """An interrupted stream left 1 MiB behind on host 1: only the rest is sent."""
    host = fleet.hosts[0]
    have = 1 << 20
    part = f"/opt/airlock/upload/{bundles[V2].manifest_sha256}.tar.part"
    prefix = work / "prefix.part"  # /tmp is the build machine's own on these hosts
    with open(bundles[V2].path, "rb") as f:
        prefix.write_bytes(f.read(have))
    host.run(f"cp {prefix} {part} && chown {fleet.login_user} {part}")
    run = run_playbook(fleet, work, "install.yml", "-v", bundle=bundles[V2], signer=signer)
    assert run.rc == 0, run.output[-4000:]
    assert f"tail -c +{have + 1} " in run.output  # host 1 resumed after the partial file
    assert "tail -c +1 " in run.output  # host 2 sent it whole
    for h in fleet.hosts:
        state = _state(h)
        assert state["current"] == V2 and state["floor"] == 2
        assert h.run(f"test -e {part}", check=False).returncode == 1
        assert _server_users(h) == ["airlock"]
        _ask(h)


def test_verify_and_rollback_as_the_unprivileged_user(fleet: TestFleet, work: Path) -> None:
    run = run_playbook(fleet, work, "verify.yml")
    assert run.rc == 0, run.output[-4000:]
    assert all(run.changed(h.name) == 0 for h in fleet.hosts)
    run = run_playbook(fleet, work, "rollback.yml")
    assert run.rc == 0, run.output[-4000:]
    for host in fleet.hosts:
        assert _state(host)["current"] == V1
        _ask(host)


def test_uninstall_as_the_unprivileged_user(fleet: TestFleet, work: Path) -> None:
    run = run_playbook(fleet, work, "uninstall.yml")
    assert run.rc == 0, run.output[-4000:]
    for host in fleet.hosts:
        assert _untouched(host)
        assert host.run("id airlock", check=False).returncode != 0
        assert _server_users(host) == []
        assert json.dumps(_state(host)) == "{}"
