"""Disconnected test hosts with systemd as PID 1: ``systemd-nspawn --boot`` of a Debian tree.

A :class:`SystemdHost` is a :class:`~bundler.demo.hosts.TestHost` (the same network namespace,
veth pair and no route out) whose userland is a booted Debian root filesystem instead of the
build machine's: the tree (for example ``tests.rootfs.debian_rootfs("bookworm", include=[
"systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "sudo"])``) is the read-only
lower layer of an overlay made for this host, so the shared tree is never written and the
host's own changes survive a reboot. ``systemd-nspawn --boot --register=no
--network-namespace-path=/run/netns/NAME`` starts systemd in it; the distribution's own
``ssh.service`` listens on the host's address with a key made for this host.

:meth:`SystemdHost.reboot` reboots the container from inside (``systemctl reboot``; nspawn
exits with status 133, as its own unit's ``RestartForceExitStatus=133`` expects) and boots
it again on the same overlay. Needs root and ``systemd-nspawn`` (Debian ``systemd-container``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bundler.demo.hosts import SUDO_RULE, SshKey, TestHost, TestHostError, _sh

NSPAWN = "systemd-nspawn"
BOOT_TIMEOUT = 120.0
REBOOTED = 133  # systemd-nspawn's exit status when the container asked for a reboot


@dataclass
class SystemdHost(TestHost):
    """One disconnected host booted with systemd. Use :meth:`start_systemd`."""

    __test__ = False

    rootfs: Path = Path("/")
    nspawn: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> Path:
        """The host's own root directory (the overlay's merged view)."""
        return self.workdir / "root"

    @classmethod
    def start_systemd(
        cls,
        name: str,
        *,
        workdir: Path,
        authorized_key: SshKey,
        rootfs: Path,
        token: str | None = None,
        login_user: str = "root",
    ) -> TestHost:
        """Create and boot the host (caller must :meth:`destroy` it)."""
        if shutil.which(NSPAWN) is None:
            raise TestHostError("systemd-nspawn is missing: run bash .ci/setup")
        if os.geteuid() != 0:
            raise TestHostError("test hosts need root (namespaces, mounts, systemd-nspawn)")
        host = cls.plan(name, workdir=workdir, token=token, login_user=login_user)
        host.rootfs = rootfs
        try:
            host._network(host.prefixlen)
            host._overlay()
            host._prepare(authorized_key)
            host.boot()
        except BaseException:
            host.destroy()
            raise
        return host

    def _overlay(self) -> None:
        w = self.workdir
        for d in ("upper", "work", "root"):
            (w / d).mkdir(parents=True, exist_ok=True)
        _sh(
            [
                "mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={self.rootfs},upperdir={w / 'upper'},workdir={w / 'work'}",
                str(self.root),
            ]
        )  # fmt: skip

    def _chroot(self, *argv: str, input: bytes | None = None) -> str:
        return _sh(["chroot", str(self.root), *argv], input=input)

    def _prepare(self, key: SshKey) -> None:
        """sshd settings, host key, authorized keys and the login user, in the overlay."""
        root = self.root
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)])
        ssh = root / "etc" / "ssh"
        for old in ssh.glob("ssh_host_*"):
            old.unlink()
        shutil.copy(self.host_key, ssh / "ssh_host_ed25519_key")
        shutil.copy(self.host_key.with_suffix(".pub"), ssh / "ssh_host_ed25519_key.pub")
        os.chmod(ssh / "ssh_host_ed25519_key", 0o600)
        # sshd takes the first value it reads, and Debian's sshd_config includes this first.
        (ssh / "sshd_config.d" / "airlock-test.conf").write_text(
            f"ListenAddress {self.address}\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
            f"PermitRootLogin {'prohibit-password' if self.login_user == 'root' else 'no'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "MaxSessions 50\nMaxStartups 50\n"
        )
        (root / "etc" / "hostname").write_text(self.name + "\n")
        with open(root / "etc" / "hosts", "a") as hosts:  # sudo looks its host's name up
            hosts.write(f"127.0.1.1\t{self.name}\n")
        home = root / "root"
        if self.login_user != "root":
            user = self.login_user
            self._chroot("useradd", "-m", "-s", "/bin/sh", "-p", "*", user)
            rule = root / "etc" / "sudoers.d" / user
            rule.write_text(SUDO_RULE.format(user=user))
            os.chmod(rule, 0o440)
            self._chroot("visudo", "-c", "-q", "-f", f"/etc/sudoers.d/{user}")
            home = root / "home" / user
        dot = home / ".ssh"
        dot.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(key.public, dot / "authorized_keys")
        os.chmod(dot / "authorized_keys", 0o600)
        owner = self._chroot("stat", "-c", "%u:%g", str(Path("/") / home.relative_to(root)))
        _sh(["chown", "-R", owner.strip(), str(dot)])

    def boot(self) -> None:
        """Boot systemd in the overlay, inside the host's network namespace; wait for sshd."""
        log = (self.workdir / "console.log").open("ab")
        self.nspawn = subprocess.Popen(
            [
                NSPAWN, "--quiet", "--boot", "--register=no", "--keep-unit", "--console=read-only",
                f"--machine={self.netns}", f"--directory={self.root}",
                f"--network-namespace-path=/run/netns/{self.netns}",
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self.sshd = self.nspawn  # what TestHost's checks for "running" look at
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise TestHostError(
                    f"systemd-nspawn for test host {self.name} exited ({self.nspawn.returncode}): "
                    f"{self._console_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.address, 22), timeout=0.5) as s,
            ):
                if s.recv(4).startswith(b"SSH-"):
                    return
            time.sleep(0.2)
        raise TestHostError(f"test host {self.name} did not boot to sshd: {self._console_tail()}")

    def _console_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "console.log").read_text(errors="replace")[-3000:]
        return ""

    def init_pid(self) -> int:
        """The root-namespace pid of the container's PID 1 (systemd)."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            raise TestHostError(f"test host {self.name} is not running")
        for _ in range(100):
            for pid in self.pids():  # the processes in the host's network namespace
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    nspid = status.split("\nNSpid:", 1)[1].split("\n", 1)[0].split()
                    if len(nspid) > 1 and nspid[-1] == "1":  # pid 1 of its own pid namespace
                        return pid
            time.sleep(0.05)
        raise TestHostError(f"test host {self.name} has no init process")

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        input: bytes | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the container (its namespaces and root directory)."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        pid = str(self.init_pid())
        proc = subprocess.run(
            ["nsenter", "-t", pid, "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--", *argv],
            capture_output=True,
            input=input.decode() if input is not None else None,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        if check and proc.returncode != 0:
            raise TestHostError(
                f"on {self.name}: {cmd!r} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def reboot(self, timeout: float = BOOT_TIMEOUT) -> None:
        """``systemctl reboot`` inside; when nspawn exits with 133, boot the same tree again."""
        assert self.nspawn is not None
        # The shutdown may end this very command before it reports back: its status says nothing.
        self.run(["systemctl", "reboot"], check=False)
        try:
            code = self.nspawn.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise TestHostError(f"test host {self.name} did not shut down to reboot") from e
        if code != REBOOTED:
            raise TestHostError(
                f"systemd-nspawn for {self.name} exited {code}, not {REBOOTED} (reboot): "
                f"{self._console_tail()}"
            )
        self.boot()

    def destroy(self) -> None:
        """Stop the container, unmount its overlay, delete its namespace and veth."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            with contextlib.suppress(OSError):
                self.nspawn.send_signal(signal.SIGKILL)
        super().destroy()  # kills whatever is left in the namespace
        if self.nspawn is not None:
            with contextlib.suppress(Exception):
                self.nspawn.wait(timeout=10)
            self.nspawn = None
        if self.root.is_mount():
            _sh(["umount", "--lazy", str(self.root)], check=False)
