"""The plain supervisor for hosts without systemd: start/stop/status, pidfile, restart with backoff.

``python3 -m runtime.supervise start`` daemonizes one supervisor process that drops to the
dedicated user, writes its pid to the pidfile, runs ``llama-server`` for the release that
``current`` points to (settings from ``/etc/airlock/releases/<version>.env``), appends its
output to the log file and restarts it with exponential backoff when it fails.
``exec`` is the same launch without supervision, for systemd's ``ExecStart``.

``--slot PORT`` supervises one server slot instead (:mod:`runtime.slots`): the release that
slot is assigned, on ``127.0.0.1:PORT``, with its own pidfiles. ``--front HOST:PORT``
supervises the traffic front (:mod:`runtime.front`) on the public port.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from runtime.errors import AirlockError, InstallError
from runtime.fsio import atomic_write
from runtime.settings import parse_env_file

PATH_KEYS = ("LD_LIBRARY_PATH", "GGML_BACKEND_PATH")
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a child that ran this long resets the backoff


def launch_spec(release_dir: str, env_file: str) -> Tuple[List[str], Dict[str, str], str]:
    """``(argv, environment, cwd)`` to run the server of the release in ``release_dir``.

    Relative paths in the settings (the server binary, ``--model``, LD_LIBRARY_PATH parts,
    ``AIRLOCK_CWD``) are resolved against the release directory, so the same settings serve
    a release under ``releases/<v>`` (health gate) and under ``current`` (service).
    """
    try:
        with open(env_file, encoding="utf-8") as f:
            settings = parse_env_file(f.read())
    except OSError as e:
        raise InstallError(
            f"cannot read server settings {env_file}: {e}",
            hint="rerun install.yml; it renders one settings file per release",
        ) from e
    argv_text = settings.pop("AIRLOCK_ARGV", "")
    argv = shlex.split(argv_text)
    if not argv:
        raise InstallError(f"{env_file} has no AIRLOCK_ARGV", hint="rerun install.yml")
    base = os.path.realpath(release_dir)
    argv[0] = os.path.join(base, argv[0])  # a no-op for absolute paths
    for i in range(1, len(argv) - 1):
        if argv[i] == "--model":
            argv[i + 1] = os.path.join(base, argv[i + 1])
    # ggml loads CPU variant modules from the executable's dir or the working directory.
    cwd = os.path.join(base, settings.pop("AIRLOCK_CWD", ".") or ".")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HF_HUB_OFFLINE": "1"}
    for key, value in settings.items():
        if key.startswith("AIRLOCK_"):
            continue
        if key in PATH_KEYS:
            value = ":".join(
                p if os.path.isabs(p) else os.path.join(base, p) for p in value.split(":") if p
            )
        env[key] = value
    return argv, env, os.path.normpath(cwd)


class Paths:
    """The files one supervisor instance uses, and what it runs.

    Without ``slot`` or ``front`` it is the pre-slot single server of ``current`` on the
    public port (kept so an upgrade can find and stop it).
    """

    def __init__(
        self,
        *,
        root: str,
        config: str,
        run_dir: str,
        log_file: str,
        state: str = "/var/lib/airlock",
        slot: Optional[int] = None,
        front: Optional[str] = None,
    ) -> None:
        self.root = root
        self.config = config
        self.state = state
        self.slot = slot
        self.front = front
        suffix = f"-slot-{slot}" if slot else "-front" if front else ""
        self.pidfile = os.path.join(run_dir, f"supervise{suffix}.pid")
        self.childfile = os.path.join(run_dir, f"server{suffix}.pid")
        self.specfile = os.path.join(run_dir, f"supervise{suffix}.spec")
        self.log_file = log_file

    def current_release(self) -> Tuple[str, str]:
        current = os.path.join(self.root, "current")
        try:
            version = os.path.basename(os.readlink(current))
        except OSError as e:
            raise InstallError(
                f"{current} does not point to a release",
                hint="install a bundle with install.yml first",
            ) from e
        return current, os.path.join(self.config, "releases", version + ".env")

    def slot_release(self, port: int) -> Tuple[str, str]:
        from runtime.slots import assigned

        version = assigned(self.state, port)
        if version is None:
            raise InstallError(
                f"slot {port} has no release ({self.state}/slots/{port} is missing)",
                hint="install.yml assigns a release to a slot before it starts it",
            )
        return (
            os.path.join(self.root, "releases", version),
            os.path.join(self.config, "releases", version + ".env"),
        )

    def spec(self) -> str:
        """What this instance runs, recorded at start: a change means a restart."""
        return self.front or ""

    def launch(self) -> Tuple[List[str], Dict[str, str], str]:
        """``(argv, environment, cwd)`` of this instance's child."""
        if self.front:
            from runtime.slots import ACTIVE_FILE

            argv = [sys.executable, "-m", "runtime.front", "serve", "--listen", self.front,
                    "--active-file", os.path.join(self.state, ACTIVE_FILE)]  # fmt: skip
            env = {
                "PATH": "/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "PYTHONPATH": os.path.join(self.root, "lib", "runtime.zip"),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            return argv, env, "/"
        if self.slot:
            from runtime.slots import on_slot

            argv, env, cwd = launch_spec(*self.slot_release(self.slot))
            return on_slot(argv, self.slot), env, cwd
        return launch_spec(*self.current_release())


def read_pid(path: str) -> Optional[int]:
    """The pid in ``path`` if that process is alive."""
    try:
        with open(path) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _drop_privileges(user: Optional[str]) -> None:
    if not user or os.getuid() != 0:
        return
    import grp
    import pwd

    entry = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    os.setgroups(groups)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _supervise(paths: Paths) -> int:
    """The supervisor loop (runs in the daemon, as the dedicated user)."""
    stopping = []
    child: List[Optional[subprocess.Popen[bytes]]] = [None]

    def on_term(signum: int, _frame: object) -> None:
        stopping.append(signum)
        proc = child[0]
        if proc is not None and proc.poll() is None:
            proc.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    backoff = BACKOFF_START
    log = open(paths.log_file, "ab", buffering=0)
    while not stopping:
        try:
            argv, env, cwd = paths.launch()
        except AirlockError as e:
            log.write((f"supervise: {e.render()}\n").encode())
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        log.write(("supervise: starting {}\n".format(" ".join(argv))).encode())
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        child[0] = proc
        atomic_write(paths.childfile, f"{proc.pid}\n".encode())
        code = proc.wait()
        child[0] = None
        if stopping:
            break
        if time.monotonic() - started > STABLE_AFTER:
            backoff = BACKOFF_START
        log.write(
            (f"supervise: server exited with {code}; restarting in {backoff:.0f}s\n").encode()
        )
        time.sleep(backoff)
        backoff = min(backoff * 2, BACKOFF_MAX)
    for path in (paths.childfile, paths.pidfile):
        try:
            os.unlink(path)
        except OSError:
            pass
    log.write(b"supervise: stopped\n")
    return 0


def start(paths: Paths, *, user: Optional[str]) -> bool:
    """Start the supervisor unless it runs as asked; returns whether anything changed.

    One that runs with another spec (the front on another address) is restarted.
    """
    if read_pid(paths.pidfile) is not None:
        try:
            with open(paths.specfile, encoding="utf-8") as f:
                running = f.read()
        except OSError:
            running = ""
        if running == paths.spec():
            return False
        stop(paths)
    paths.launch()  # fail here, in the caller, when there is nothing to run
    for d in (os.path.dirname(paths.pidfile), os.path.dirname(paths.log_file)):
        os.makedirs(d, exist_ok=True)
    if user and os.getuid() == 0:
        import pwd

        entry = pwd.getpwnam(user)
        for d in (os.path.dirname(paths.pidfile), os.path.dirname(paths.log_file)):
            os.chown(d, entry.pw_uid, entry.pw_gid)
        if not os.path.exists(paths.log_file):
            open(paths.log_file, "ab").close()
        os.chown(paths.log_file, entry.pw_uid, entry.pw_gid)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the daemon side
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            _drop_privileges(user)
            atomic_write(paths.pidfile, f"{os.getpid()}\n".encode())
            os.write(write_end, b"ok")
            os.close(write_end)
            code = _supervise(paths)
        except BaseException as e:
            try:
                os.write(write_end, (f"error: {e}").encode())
            except OSError:
                pass
            code = 1
        os._exit(code)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as r:
        answer = r.read().decode(errors="replace")
    if answer != "ok":
        raise InstallError(
            "the supervisor did not start: %s" % (answer or "no answer"),
            hint=f"check {paths.log_file} and that the user {user} exists",
        )
    atomic_write(paths.specfile, paths.spec().encode())
    return True


def stop(paths: Paths, *, timeout: float = 30.0) -> bool:
    """Stop the supervisor and its server; returns whether anything was running."""
    pid = read_pid(paths.pidfile)
    child = read_pid(paths.childfile)
    if pid is None and child is None:
        return False
    for p in (pid, child):
        if p is not None:
            try:
                os.kill(p, signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_pid(paths.pidfile) is None and read_pid(paths.childfile) is None:
            break
        time.sleep(0.1)
    for p in (pid, child):
        if p is not None:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    for path in (paths.pidfile, paths.childfile, paths.specfile):
        try:
            os.unlink(path)
        except OSError:
            pass
    return True


def status(paths: Paths) -> Dict[str, object]:
    return {
        "running": read_pid(paths.pidfile) is not None,
        "supervisor_pid": read_pid(paths.pidfile),
        "server_pid": read_pid(paths.childfile),
        "log": paths.log_file,
    }


def _exec(paths: Paths) -> int:  # pragma: no cover - replaces the process
    argv, env, cwd = paths.launch()
    os.chdir(cwd)
    os.execve(argv[0], argv, env)  # noqa: S606
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m runtime.supervise", description=__doc__)
    parser.add_argument("--root", default="/opt/airlock")
    parser.add_argument("--config", default="/etc/airlock")
    parser.add_argument("--run-dir", default="/run/airlock")
    parser.add_argument("--log-file", default="/var/log/airlock/server.log")
    parser.add_argument("--user", default=None, help="drop to this user (when run as root)")
    parser.add_argument("--state", default="/var/lib/airlock")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--slot", type=int, default=None, help="supervise this server slot")
    kind.add_argument("--front", default=None, metavar="HOST:PORT", help="supervise the front")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("command", choices=["start", "stop", "restart", "status", "exec"])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths(
        root=args.root,
        config=args.config,
        run_dir=args.run_dir,
        log_file=args.log_file,
        state=args.state,
        slot=args.slot,
        front=args.front,
    )
    try:
        if args.command == "exec":
            return _exec(paths)
        if args.command == "start":
            result: Dict[str, object] = {"changed": start(paths, user=args.user)}
        elif args.command == "stop":
            result = {"changed": stop(paths)}
        elif args.command == "restart":
            stop(paths)
            result = {"changed": start(paths, user=args.user)}
        else:
            result = dict(status(paths), changed=False)
    except AirlockError as e:
        print(e.render(), file=sys.stderr)
        return e.exit_code
    print(
        json.dumps(result, sort_keys=True)
        if args.json
        else ", ".join("{}={}".format(*kv) for kv in sorted(result.items()))
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
