"""Disconnected test hosts: a network namespace, a private mount namespace and an sshd each.

Each :class:`TestHost` is joined to the controller (the root namespace) by one veth pair with a
``/30`` of ``10.x.y.z`` addresses that exist only on this machine; the host namespace has no
default route, so the only place it can reach is the controller's end of its veth. ``/etc``,
``/opt`` and ``/var`` are copy-on-write overlays and ``/run`` is a fresh tmpfs inside the
host's own mount namespace, so whatever an install writes (users, ``/opt/airlock``,
``/var/lib/airlock``, pid files) stays on that host. ``ansible-playbook`` reaches the hosts
over real SSH with a generated key and pinned host keys.

A fleet made with ``become=True`` logs in as an unprivileged user made for that run
(``altest<token>``, password locked, home under ``/var``) on hosts whose sshd has
``PermitRootLogin no``; the user becomes root through sudo with one sudoers drop-in,
:data:`SUDO_RULE`: the narrowest rule Ansible's become works with (it runs every privileged
step as ``sudo -u root /bin/sh -c '...'``, so a list of commands cannot be granted instead).

Needs root, ``ip``, ``unshare``, ``nsenter``, ``ssh-keygen`` and ``/usr/sbin/sshd``::

    with TestFleet(3, workdir=tmp) as fleet:
        inventory.write_text(fleet.inventory())
        subprocess.run(["ansible-playbook", "-i", inventory, ...], env=fleet.ansible_env())
        fleet.hosts[0].run("cat /var/lib/airlock/state.json")
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

from bundler.errors import AirlockError

SSHD = "/usr/sbin/sshd"
SUDO_RULE = "{user} ALL=(root) NOPASSWD: /bin/sh\n"
OVERLAID = ("etc", "opt", "var")


_Host = TypeVar("_Host", bound="TestHost")


class TestHostError(AirlockError):
    """A test host could not be created (needs root, iproute2, OpenSSH server)."""

    exit_code = 70


def _sh(argv: Sequence[str], *, check: bool = True, input: bytes | None = None) -> str:
    proc = subprocess.run(list(argv), capture_output=True, input=input, check=False)
    if check and proc.returncode != 0:
        raise TestHostError(
            f"{' '.join(argv)} failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()}",
            hint="test hosts need root, iproute2 (ip), util-linux (unshare, nsenter) and "
            "openssh-server; run bash .ci/setup",
        )
    return proc.stdout.decode(errors="replace")


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _sh(["ip", "-4", "-o", "addr", "show"])
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    """A random /30 in 10.200.0.0/13 that no interface on this machine uses."""
    used = _used_networks()
    for _ in range(200):
        n = secrets.randbelow(8 * 256 * 64)
        net = ipaddress.IPv4Network(
            f"10.{200 + n // (256 * 64)}.{(n // 64) % 256}.{(n % 64) * 4}/30"
        )
        if not any(net.overlaps(u) for u in used):
            return net
    raise TestHostError("no free /30 under 10.200.0.0/13 for a test host")


@dataclass
class SshKey:
    """An Ed25519 client key pair made for one fleet."""

    private: Path
    public: Path

    @classmethod
    def generate(cls, path: Path) -> SshKey:
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "airlock-test", "-f", str(path)])
        return cls(private=path, public=path.with_name(path.name + ".pub"))


@dataclass
class TestHost:
    """One disconnected host. Use :meth:`create` as a context manager."""

    __test__ = False  # not a pytest test class

    name: str
    workdir: Path
    netns: str
    veth_controller: str
    controller_address: str
    address: str
    host_key: Path
    login_user: str = "root"
    prefixlen: int = 30
    sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    @contextlib.contextmanager
    def create(
        cls,
        name: str,
        *,
        workdir: Path,
        authorized_key: SshKey,
        token: str | None = None,
        login_user: str = "root",
    ) -> Iterator[TestHost]:
        """Create the host, yield it with sshd listening, and remove everything after."""
        host = cls.start(
            name, workdir=workdir, authorized_key=authorized_key, token=token, login_user=login_user
        )
        try:
            yield host
        finally:
            host.destroy()

    @classmethod
    def start(
        cls,
        name: str,
        *,
        workdir: Path,
        authorized_key: SshKey,
        token: str | None = None,
        login_user: str = "root",
    ) -> TestHost:
        """Create the host (caller must :meth:`destroy` it).

        ``login_user`` other than root is created on the host with the sudo rule
        :data:`SUDO_RULE`, and sshd refuses root logins.
        """
        if os.geteuid() != 0:
            raise TestHostError("test hosts need root (network and mount namespaces)")
        host = cls.plan(name, workdir=workdir, token=token, login_user=login_user)
        try:
            host._network(host.prefixlen)
            host._sshd(authorized_key)
            if login_user != "root":
                host._sudo_user(authorized_key)
        except BaseException:
            host.destroy()
            raise
        return host

    @classmethod
    def plan(
        cls: type[_Host],
        name: str,
        *,
        workdir: Path,
        token: str | None = None,
        login_user: str = "root",
    ) -> _Host:
        """The host's names and addresses (a free /30), nothing created yet."""
        token = token or secrets.token_hex(3)
        short = f"{token}{name[-3:]}".replace("-", "")[:10]
        net = _free_subnet()
        ctl, addr = (str(a) for a in list(net.hosts())[:2])
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(
            name=name,
            workdir=workdir,
            netns=f"airlock-{short}",
            veth_controller=f"al{short}c",
            controller_address=ctl,
            address=addr,
            host_key=workdir / "ssh_host_ed25519_key",
            login_user=login_user,
            prefixlen=net.prefixlen,
        )

    def _network(self, prefix: int) -> None:
        inner = self.veth_controller[:-1] + "h"
        _sh(["ip", "netns", "add", self.netns])
        _sh(["ip", "link", "add", self.veth_controller, "type", "veth", "peer", "name", inner])
        _sh(["ip", "link", "set", inner, "netns", self.netns])
        _sh(
            [
                "ip",
                "addr",
                "add",
                f"{self.controller_address}/{prefix}",
                "dev",
                self.veth_controller,
            ]
        )
        _sh(["ip", "link", "set", self.veth_controller, "up"])
        ns = ["ip", "-n", self.netns]
        _sh([*ns, "addr", "add", f"{self.address}/{prefix}", "dev", inner])
        _sh([*ns, "link", "set", inner, "up"])
        _sh([*ns, "link", "set", "lo", "up"])

    def _sshd(self, key: SshKey) -> None:
        w = self.workdir
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)])
        shutil.copy(key.public, w / "authorized_keys")
        (w / "sshd_config").write_text(
            f"ListenAddress {self.address}\nPort 22\nHostKey {self.host_key}\n"
            # sshd reads the file as the user: an unprivileged one reads its own copy.
            f"AuthorizedKeysFile {w / 'authorized_keys'} .ssh/authorized_keys\nPidFile none\n"
            f"PermitRootLogin {'prohibit-password' if self.login_user == 'root' else 'no'}\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "MaxSessions 50\nMaxStartups 50\nSubsystem sftp internal-sftp\n"
            "AcceptEnv LANG LC_*\n"
        )
        mounts = " && ".join(
            f"mkdir -p {w}/{d}.upper {w}/{d}.work && mount -t overlay overlay -o "
            f"lowerdir=/{d},upperdir={w}/{d}.upper,workdir={w}/{d}.work /{d}"
            for d in OVERLAID
        )
        script = (
            f"set -e; {mounts}; mount -t tmpfs -o mode=0755 tmpfs /run; "
            f"mkdir -p /run/sshd; exec {SSHD} -D -f {w / 'sshd_config'} -E {w / 'sshd.log'}"
        )
        self.sshd = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(w / "setup.log").open("wb"),
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.sshd.poll() is not None:
                raise TestHostError(
                    f"sshd for test host {self.name} exited: "
                    f"{(w / 'setup.log').read_text()} {self._log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.address, 22), timeout=0.5) as s,
            ):
                if s.recv(4).startswith(b"SSH-"):
                    return
            time.sleep(0.05)
        raise TestHostError(f"sshd for test host {self.name} did not listen: {self._log_tail()}")

    def _sudo_user(self, key: SshKey) -> None:
        """The unprivileged login user and its sudoers drop-in (in the host's own /etc)."""
        user = self.login_user
        # "*": no password, but not locked ("!"), which sshd without PAM would refuse.
        self.run(["useradd", "-m", "-d", f"/var/lib/{user}", "-s", "/bin/sh", "-p", "*", user])
        self.run(
            [
                "su",
                "-s",
                "/bin/sh",
                "-c",
                "umask 077 && mkdir -p ~/.ssh && cat > ~/.ssh/authorized_keys",
                user,
            ],
            input=key.public.read_bytes(),
        )
        rule = f"/etc/sudoers.d/{user}"
        self.run(
            ["sh", "-c", f"umask 0337 && cat > {rule}"], input=SUDO_RULE.format(user=user).encode()
        )
        self.run(["visudo", "-c", "-q", "-f", rule])

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "sshd.log").read_text()[-2000:]
        return ""

    @property
    def known_hosts_line(self) -> str:
        return f"{self.address} {self.host_key.with_suffix('.pub').read_text().strip()}"

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        input: bytes | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (a shell string or argv) inside the host's network and mount namespaces."""
        if self.sshd is None:
            raise TestHostError(f"test host {self.name} is not running")
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        proc = subprocess.run(
            ["nsenter", "-t", str(self.sshd.pid), "-n", "-m", "--", *argv],
            capture_output=True,
            input=input.decode() if input is not None else None,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise TestHostError(
                f"on {self.name}: {cmd!r} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def routes(self) -> list[str]:
        """The host's IPv4 routing table, one route per line."""
        return _sh(["ip", "-n", self.netns, "-4", "route", "show", "table", "all"]).splitlines()

    def snmp(self) -> dict[str, int]:
        """Kernel IP/TCP/UDP counters of the host's namespace (``/proc/net/snmp``).

        ``Ip.OutNoRoutes`` counts every packet or connect() the host tried towards an address
        it has no route to: the record of attempted outside connections.
        """
        text = _sh(["ip", "netns", "exec", self.netns, "cat", "/proc/net/snmp"])
        counters: dict[str, int] = {}
        lines = text.splitlines()
        for head, values in zip(lines[::2], lines[1::2]):
            proto, _, names = head.partition(":")
            for key, value in zip(names.split(), values.partition(":")[2].split()):
                with contextlib.suppress(ValueError):
                    counters[f"{proto}.{key}"] = int(value)
        return counters

    def pids(self) -> list[int]:
        out = _sh(["ip", "netns", "pids", self.netns], check=False)
        return [int(p) for p in out.split()]

    def destroy(self) -> None:
        """Kill every process in the host, delete its namespace and veth."""
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if self.sshd is not None:
            with contextlib.suppress(Exception):
                self.sshd.wait(timeout=5)
            self.sshd = None
        _sh(["ip", "link", "del", self.veth_controller], check=False)
        _sh(["ip", "netns", "del", self.netns], check=False)


class HostStarter(Protocol):
    """How a fleet makes each host: :meth:`TestHost.start` or a systemd host's."""

    def __call__(
        self, name: str, *, workdir: Path, authorized_key: SshKey, token: str, login_user: str
    ) -> TestHost: ...


class TestFleet:
    """``n`` test hosts sharing one client key, an inventory and an SSH ControlPath dir.

    ``start`` makes each host (default: a network-namespace host on the build machine's
    userland; ``functools.partial(SystemdHost.start_systemd, rootfs=...)`` boots systemd).
    """

    __test__ = False

    def __init__(
        self,
        n: int,
        *,
        workdir: Path | None = None,
        group: str = "airlock_hosts",
        become: bool = False,
        start: HostStarter | None = None,
    ):
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="airlock-fleet-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.group = group
        self.token = secrets.token_hex(3)
        self.login_user = f"altest{self.token}" if become else "root"
        # Unix socket paths are limited to 108 bytes: keep the ControlPath dir short.
        self.control_dir = Path(tempfile.mkdtemp(prefix="alcp", dir="/tmp"))
        self.key = SshKey.generate(self.workdir / "id_ed25519")
        self.hosts: list[TestHost] = []
        start = start or TestHost.start
        try:
            for i in range(n):
                self.hosts.append(
                    start(
                        f"host{i + 1}",
                        workdir=self.workdir / f"host{i + 1}",
                        authorized_key=self.key,
                        token=f"{self.token}{i}",
                        login_user=self.login_user,
                    )
                )
        except BaseException:
            self.close()
            raise
        self.known_hosts = self.workdir / "known_hosts"
        self.known_hosts.write_text("".join(h.known_hosts_line + "\n" for h in self.hosts))

    def __enter__(self) -> TestFleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def addresses(self) -> list[str]:
        return [h.address for h in self.hosts]

    def ssh_args(self) -> list[str]:
        return [
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "ControlMaster=auto",
            "-o", "ControlPersist=60s",
            "-o", f"ControlPath={self.control_dir}/%C",
        ]  # fmt: skip

    def inventory(self, **group_vars: str) -> str:
        """An INI inventory with every host in ``group`` and the connection settings."""
        lines = [f"[{self.group}]"]
        lines += [f"{h.name} ansible_host={h.address}" for h in self.hosts]
        common = " ".join(self.ssh_args())
        lines += [
            "",
            f"[{self.group}:vars]",
            f"ansible_user={self.login_user}",
            *(["ansible_become=true"] if self.login_user != "root" else []),
            f"ansible_ssh_private_key_file={self.key.private}",
            f"ansible_ssh_common_args='{common}'",
            "ansible_python_interpreter=/usr/bin/python3",
        ]
        lines += [f"{k}={v}" for k, v in group_vars.items()]
        return "\n".join(lines) + "\n"

    def ansible_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(
            ANSIBLE_HOST_KEY_CHECKING="True",
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.control_dir),
            ANSIBLE_LOCAL_TEMP=str(self.workdir / "ansible-local"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
        )
        return env

    def close(self) -> None:
        """Stop SSH masters, destroy every host, remove the working dirs this fleet made."""
        for sock in self.control_dir.glob("*"):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                capture_output=True,
                check=False,
                timeout=10,
            )
        shutil.rmtree(self.control_dir, ignore_errors=True)
        for host in self.hosts:
            host.destroy()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
