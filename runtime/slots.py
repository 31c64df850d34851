"""Server slots: two loopback ports per host, which release each serves, and the upgrade plan.

The front (:mod:`runtime.front`) owns the public port a release's settings name (its
``--host``/``--port``); each release serves on one of two loopback slot ports beside it
(public+1 and public+2 unless the site names them). A slot's release is one line in
``/var/lib/airlock/slots/<port>``, written by root; the slot's server (systemd's
``airlock-server@<port>.service`` or the plain supervisor's ``--slot <port>``) reads it at
each start. The upgrade plan says which slot is active (the front's active file) and which
is idle, where the new release starts while the active one keeps serving::

    python3 -m runtime.slots --config /etc/airlock --state /var/lib/airlock plan --version 2.0.0
    python3 -m runtime.slots --state /var/lib/airlock assign --port 8082 --version 2.0.0
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from runtime.errors import IntegrityError, UsageError, json_command
from runtime.fsio import atomic_write

SLOT_HOST = "127.0.0.1"
ACTIVE_FILE = "active-port"


def slot_ports(public: int, override: Sequence[int] = ()) -> List[int]:
    """The two slot ports: ``override`` when given, else public+1 and public+2."""
    ports = [int(p) for p in override] or [public + 1, public + 2]
    if len(ports) != 2 or ports[0] == ports[1]:
        raise UsageError(f"slot ports must be two different ports, not {ports}")
    for port in ports:
        if not 0 < port < 65536 or port == public:
            raise UsageError(
                f"slot port {port} is not a TCP port other than the public port {public}"
            )
    return ports


def listen_of(argv: Sequence[str]) -> Tuple[str, int]:
    """The ``--host``/``--port`` a release's server arguments name (the public address)."""
    host, port = "127.0.0.1", 8080
    for i, arg in enumerate(argv[:-1]):
        if arg == "--host":
            host = argv[i + 1]
        elif arg == "--port":
            port = int(argv[i + 1])
    return host, port


def on_slot(argv: Sequence[str], port: int) -> List[str]:
    """``argv`` with ``--host``/``--port`` replaced by the loopback slot ``port``."""
    out = list(argv)
    for flag, value in (("--host", SLOT_HOST), ("--port", str(port))):
        if flag in out[:-1]:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- slot assignments


def slot_file(state_dir: str, port: int) -> str:
    return os.path.join(state_dir, "slots", str(port))


def assigned(state_dir: str, port: int) -> Optional[str]:
    """The release version slot ``port`` serves, or None."""
    try:
        with open(slot_file(state_dir, port), encoding="utf-8") as f:
            version = f.read(256).strip()
    except OSError:
        return None
    return version or None


def assign(state_dir: str, port: int, version: str) -> bool:
    """Make slot ``port`` serve ``version`` (atomic); returns whether it changed."""
    if not version or "/" in version or version.startswith("."):
        raise UsageError(f"{version!r} is not a release version")
    if assigned(state_dir, port) == version:
        return False
    os.makedirs(os.path.join(state_dir, "slots"), mode=0o755, exist_ok=True)
    atomic_write(slot_file(state_dir, port), f"{version}\n".encode(), mode=0o644)
    return True


def clear(state_dir: str, port: int) -> bool:
    try:
        os.unlink(slot_file(state_dir, port))
    except FileNotFoundError:
        return False
    return True


def active_port(state_dir: str) -> Optional[int]:
    """The port the front forwards to (its active file), or None before the first switch."""
    from runtime.front import read_active

    try:
        return read_active(os.path.join(state_dir, ACTIVE_FILE))
    except (OSError, ValueError):
        return None


def release_argv(config_dir: str, version: str) -> Optional[List[str]]:
    """The server arguments in a release's settings, or None when it has none yet."""
    from runtime.settings import settings_value

    try:
        env_file = os.path.join(config_dir, "releases", version + ".env")
        text = settings_value(env_file, "AIRLOCK_ARGV")
    except OSError:
        return None
    return shlex.split(text) if text else None


# ---------------------------------------------------------------- the plan (pure)


def plan(
    *,
    argv: Optional[Sequence[str]],
    active: Optional[int],
    override: Sequence[int] = (),
) -> Dict[str, Any]:
    """Where the new release goes: the slot of its pair that is not the active one.

    ``argv`` is the new release's server arguments (None when it has no settings yet, e.g.
    in check mode: then nothing but the active slot is known). ``old`` is the slot that
    serves now (None before the first slot install); it is stopped after the switch, also
    when the public port moved and it belongs to another pair.
    """
    if argv is None:
        return {"listen": None, "public_port": None, "ports": [], "active": active,
                "new": None, "old": active}  # fmt: skip
    host, public = listen_of(argv)
    ports = slot_ports(public, override)
    new = ports[1] if active == ports[0] else ports[0]
    return {
        "listen": format_listen(host, public),
        "public_port": public,
        "ports": ports,
        "active": active,
        "new": new,
        # A pre-slot host has no active slot: the other slot of the pair is where the
        # previous release goes if the upgrade has to be undone after the switch.
        "old": active if active is not None else (ports[1] if new == ports[0] else ports[0]),
    }


def check(state_dir: str, current: Optional[str]) -> List[str]:
    """What is wrong with the slots of a host whose ``current`` is given (empty: nothing)."""
    active = active_port(state_dir)
    if current is None:
        return []
    if active is None:
        return [f"{os.path.join(state_dir, ACTIVE_FILE)} names no slot: the front forwards nowhere"]
    serving = assigned(state_dir, active)
    if serving != current:
        return [
            f"the front forwards to slot {active}, which serves {serving or 'no release'}, "
            f"but current is {current}"
        ]
    return []


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m runtime.slots", description=__doc__)
    parser.add_argument("--config", default="/etc/airlock")
    parser.add_argument("--state", default="/var/lib/airlock")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="the active slot and the idle one the new release uses")
    p.add_argument("--version", required=True)
    p.add_argument("--fallback-version", default=None, help="settings to read when V has none")
    p.add_argument("--ports", default="", help="the two slot ports, comma-separated")
    p = sub.add_parser("assign", help="make a slot serve a release")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", required=True)
    p = sub.add_parser("clear", help="forget a slot's release")
    p.add_argument("--port", type=int, required=True)
    sub.add_parser("list", help="the slots with a release and the active port")
    sub.add_parser("check", help="the front's slot serves the current release")
    return parser


def run(args: argparse.Namespace) -> Dict[str, Any]:
    if args.command == "plan":
        argv = release_argv(args.config, args.version)
        if argv is None and args.fallback_version:
            argv = release_argv(args.config, args.fallback_version)
        try:
            override = [int(p) for p in args.ports.split(",") if p.strip()]
        except ValueError as e:
            raise UsageError(f"slot ports {args.ports!r} are not numbers") from e
        result = plan(argv=argv, active=active_port(args.state), override=override)
        return dict(result, changed=False)
    if args.command == "assign":
        return {"changed": assign(args.state, args.port, args.version), "port": args.port}
    if args.command == "clear":
        return {"changed": clear(args.state, args.port), "port": args.port}
    if args.command == "check":
        from runtime.layout import Layout, load_state

        current = load_state(Layout(config=args.config, state=args.state)).get("current")
        problems = check(args.state, current)
        if problems:
            raise IntegrityError(
                "the active slot does not serve the current release",
                problems=problems,
                hint="rerun install.yml (or rollback.yml): it starts current on a slot "
                "and points the front at it",
            )
        return {"changed": False, "active": active_port(args.state)}
    slots: Dict[str, Optional[str]] = {}
    try:
        names = sorted(os.listdir(os.path.join(args.state, "slots")))
    except OSError:
        names = []
    for name in names:
        if name.isdigit():
            slots[name] = assigned(args.state, int(name))
    return {"changed": False, "slots": slots, "active": active_port(args.state)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return json_command(lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
