"""Far-side release management: release dirs, the atomic ``current`` switch, state, health gate.

Layout on a host (every root configurable, see :class:`Layout`)::

    /opt/airlock/releases/<version>/   unpacked, verified payload of one bundle (read-only)
    /opt/airlock/current -> releases/<version>
    /opt/airlock/lib/runtime.zip       this package (zip-self), copied by the playbook
    /opt/airlock/upload/               the SSH login user's stream (``<digest>.tar.part``, resumed)
    /opt/airlock/incoming/             a complete transfer, renamed here and owned by root
    /etc/airlock/releases/<version>.env  rendered server settings for that release
    /var/lib/airlock/state.json        installed releases, sequence floor, verified digests
    /var/lib/airlock/manifests/<sha256>.json  the verified manifest bytes of each release

Run as ``python3 -m runtime.release COMMAND`` (standard library only, Python 3.8+).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from runtime.bundle import MANIFEST_NAME, MAX_MANIFEST_BYTES
from runtime.detect import disk_facts
from runtime.drift import find_drift
from runtime.errors import (
    HostError,
    HostLibraryError,
    InstallError,
    IntegrityError,
    RollbackError,
    UsageError,
    json_command,
)
from runtime.fsio import atomic_write, file_sha256
from runtime.health import check_completion, health_gate, read_api_key, wait_healthy
from runtime.layout import Layout, load_state, save_state
from runtime.libc import check_engine, libc_facts

# ---------------------------------------------------------------- state changes (pure)


def _event(state: Dict[str, Any], event: str, version: Optional[str], detail: str) -> None:
    state["history"].append(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": event,
            "version": version,
            "detail": detail,
        }
    )


def check_sequence(state: Dict[str, Any], sequence: int, *, allow_downgrade: bool) -> str:
    """Refuse a sequence below the floor unless a downgrade is explicitly allowed.

    Returns a message describing the decision; raises :class:`RollbackError`.
    """
    floor = int(state.get("floor", 0))
    if sequence >= floor:
        return f"sequence {sequence} is at or above the floor {floor}"
    if allow_downgrade:
        return f"DOWNGRADE allowed by the operator: sequence {sequence} is below the floor {floor}"
    raise RollbackError(
        f"bundle sequence {sequence} is lower than sequence {floor} already installed on this host",
        hint=f"install a bundle with sequence >= {floor}, or set airlock_allow_downgrade=true "
        "if you really mean to go back (it is logged)",
    )


def record_release(
    state: Dict[str, Any],
    *,
    version: str,
    digest: str,
    sequence: int,
    name: str,
    downgrade: bool = False,
) -> None:
    """Mark ``version`` current in ``state`` (pure)."""
    known = state["releases"].get(version)
    if known is not None and known["manifest_sha256"] != digest:
        raise InstallError(
            "release {} is already installed from a different manifest ({})".format(
                version, known["manifest_sha256"]
            ),
            hint=f"give each bundle a new version, or uninstall {version} first",
        )
    state["releases"][version] = {
        "manifest_sha256": digest,
        "sequence": sequence,
        "name": name,
    }
    previous = state.get("current")
    floor_before = int(state.get("floor", 0))
    state["current"] = version
    state["floor"] = max(floor_before, sequence)
    detail = f"from {previous}" if previous else "first install"
    if downgrade:
        detail += "; downgrade allowed by the operator"
    _event(state, "switch", version, detail)
    state["history"][-1]["floor_before"] = floor_before


def previous_release(state: Dict[str, Any]) -> Optional[str]:
    """The release that was current before the current one, if it is still installed."""
    current = state.get("current")
    for entry in reversed(state.get("history", [])):
        version = entry.get("version")
        if entry.get("event") in ("switch", "rollback") and version != current:
            if version in state["releases"]:
                return str(version)
    return None


# ---------------------------------------------------------------- host facts


def host_facts(
    layout: Layout,
    install_path: str,
    *,
    glibc_min: Optional[str] = None,
    glibcxx_min: Optional[str] = None,
) -> Dict[str, Any]:
    """What the install role reads on a host before it changes anything there.

    ``state`` is :func:`load_state` (the empty state before the first install, the schema
    checked), ``systemd`` whether systemd is PID 1, ``free`` the bytes available at
    ``install_path`` (or its nearest existing parent), ``arch`` the machine, ``python``
    this interpreter's version, ``libc`` the host's glibc and libstdc++ levels
    (:func:`runtime.libc.libc_facts`) and ``libc_refusal`` the rendered refusal when they
    are older than the engine's ``glibc_min``/``glibcxx_min`` need (else null): preflight
    shows it before any byte of the bundle is transferred. Raises InstallError for an
    unreadable state file, HostError when the free disk cannot be measured.
    """
    warnings: List[str] = []
    libc = libc_facts(Path("/"), live=True, warnings=[])
    try:
        check_engine(libc, glibc_min, glibcxx_min)
        refusal = None
    except HostLibraryError as e:
        refusal = e.render()
    disk = disk_facts(Path(install_path), warnings)
    if disk is None:
        raise HostError(
            warnings[0] if warnings else f"cannot measure free disk at {install_path}",
            hint="set airlock_install_root to a directory on a local filesystem",
        )
    return {
        "state": load_state(layout),
        "systemd": os.path.isdir("/run/systemd/system"),
        "free": int(disk["free_bytes"]),
        "arch": platform.machine(),
        "python": list(sys.version_info[:3]),
        "libc": libc,
        "libc_refusal": refusal,
    }


# ---------------------------------------------------------------- the current link


def switch_current(layout: Layout, version: str) -> None:
    """Point ``current`` at ``releases/<version>`` with one atomic rename."""
    target = layout.release_dir(version)
    if not os.path.isdir(target):
        raise InstallError(
            f"release directory {target} does not exist",
            hint=f"install the bundle for release {version} first",
        )
    tmp = layout.current + f".tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join("releases", version), tmp)
    os.replace(tmp, layout.current)


def current_target(layout: Layout) -> Optional[str]:
    try:
        return os.path.basename(os.readlink(layout.current))
    except OSError:
        return None


# ---------------------------------------------------------------- manifest copy


def read_manifest(bundle: str, expected_sha256: str) -> bytes:
    """The manifest bytes from the bundle's first member, checked against the verified digest."""
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            member = tar.next()
            if member is None or member.name != MANIFEST_NAME or not member.isreg():
                raise IntegrityError(
                    f"{bundle} does not start with {MANIFEST_NAME}",
                    hint="this is not an airlock bundle; transfer the original file again",
                )
            if member.size > MAX_MANIFEST_BYTES:
                raise IntegrityError(f"manifest in {bundle} is implausibly large")
            f = tar.extractfile(member)
            assert f is not None
            data = f.read()
    except (OSError, tarfile.TarError) as e:
        raise IntegrityError(
            f"cannot read the manifest of {bundle}: {e}",
            hint="the transfer is incomplete or damaged; run the install again to resume it",
        ) from e
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise IntegrityError(
            f"manifest of {bundle} has sha256 {actual}, "
            f"but the controller verified {expected_sha256}",
            hint="the bundle changed after verification; transfer it again",
        )
    return data


# ---------------------------------------------------------------- failure recovery


def discard(
    layout: Layout,
    version: str,
    *,
    first_install: bool,
    fresh: bool,
    previous: Optional[str],
) -> List[str]:
    """Undo a failed install of ``version``; returns what was removed or restored.

    A failed first install removes everything airlock created. Otherwise ``current`` and the
    state go back to ``previous`` (also when the switch already happened), and a ``fresh``
    release (one not installed before this run) is removed with its settings.
    """
    removed: List[str] = []
    state = load_state(layout)
    others = [v for v in state["releases"] if v != version]
    if first_install and not others:
        for path in (layout.root, layout.config, layout.state):
            if os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed
    if state.get("current") == version and previous and previous != version:
        floor = state.get("floor", 0)
        for entry in reversed(state["history"]):
            if entry.get("event") == "switch" and entry.get("version") == version:
                floor = entry.get("floor_before", floor)
                break
        switch_current(layout, previous)
        state["current"] = previous
        if fresh:
            state["releases"].pop(version, None)
            state["floor"] = floor
        _event(state, "rollback", previous, f"failed install of {version}")
        save_state(layout, state)
        removed.append(f"{layout.current} (back to {previous})")
    elif state.get("current") and current_target(layout) != state["current"]:
        switch_current(layout, state["current"])
        removed.append(f"{layout.current} (back to {state['current']})")
    if fresh and version not in state["releases"]:
        for path in (layout.release_dir(version), layout.env_file(version)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            elif os.path.lexists(path):
                os.unlink(path)
                removed.append(path)
    return removed


def rollback(layout: Layout, to: Optional[str]) -> Dict[str, Any]:
    """Point ``current`` at the previous (or a named) installed release and record it."""
    state = load_state(layout)
    target = to or previous_release(state)
    if target is None:
        raise InstallError(
            "there is no previous release to roll back to",
            hint="installed releases: %s" % (", ".join(sorted(state["releases"])) or "none"),
        )
    if target not in state["releases"] or not os.path.isdir(layout.release_dir(target)):
        raise InstallError(
            f"release {target} is not installed on this host",
            hint="installed releases: {}".format(", ".join(sorted(state["releases"]))),
        )
    before = state.get("current")
    if before == target and current_target(layout) == target:
        return {"changed": False, "current": target, "previous": before}
    switch_current(layout, target)
    state["current"] = target
    _event(state, "rollback", target, f"from {before}")
    save_state(layout, state)
    return {"changed": True, "current": target, "previous": before}


# ---------------------------------------------------------------- shipping this package

# The zip's own entry point, written by zip_self: ``python3 runtime.zip MODULE ARGS...`` runs
# ``runtime.MODULE``'s command line as ``python3 -m runtime.MODULE`` would. The install role
# runs ``release host-facts`` this way (Ansible's script module) before anything is on the
# host. The text uses only syntax every Python parses (no f-strings, no annotations), so an
# old Python gets as far as the version check: for host-facts it reports just its version
# and preflight refuses it by name, instead of the play failing with a SyntaxError.
ZIP_MAIN = """\
\"\"\"python3 runtime.zip MODULE [ARGS...]: airlock's runtime.MODULE, as python3 -m runs it.\"\"\"
import json
import sys

if sys.version_info < (3, 8):
    if sys.argv[1:2] == ["release"] and "host-facts" in sys.argv[2:]:
        sys.stdout.write(json.dumps({"python": list(sys.version_info[:3])}) + "\\n")
        sys.exit(0)
    sys.stderr.write(
        "error: the airlock runtime needs Python 3.8 or newer, this is %s\\n"
        % sys.version.split()[0]
    )
    sys.exit(50)

import importlib

USAGE = "usage: python3 runtime.zip MODULE [ARGS...]  (release, selection, unpack, detect, ...)"


def main(argv):
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not argv or not argv[0].isidentifier() or argv[0].startswith("_"):
        sys.stderr.write(USAGE + "\\n")
        return 2
    name = "runtime." + argv[0]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        module = None
    if not callable(getattr(module, "main", None)):
        sys.stderr.write("error: runtime has no command line module %r\\n%s\\n" % (argv[0], USAGE))
        return 2
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
"""


def zip_self(out: str) -> bool:
    """Write the ``runtime`` package's sources to ``out`` as a byte-stable zip.

    Hosts import it from the zip (``PYTHONPATH=.../runtime.zip``) or run it
    (``python3 runtime.zip MODULE ...``, :data:`ZIP_MAIN`): one file to copy, and the same
    bytes for the same sources so a second install run changes nothing.
    Returns whether ``out`` changed.
    """
    import io
    import zipfile

    here = os.path.dirname(os.path.abspath(__file__))
    members = [("__main__.py", ZIP_MAIN.encode("utf-8"))]
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            with open(os.path.join(here, name), "rb") as f:
                members.append(("runtime/" + name, f.read()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for member, content in members:
            info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, content)
    data = buf.getvalue()
    try:
        with open(out, "rb") as f:
            if f.read() == data:
                return False
    except OSError:
        pass
    atomic_write(out, data, 0o644)
    return True


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m runtime.release",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", default="/opt/airlock")
    parser.add_argument("--config", default="/etc/airlock")
    parser.add_argument("--state", default="/var/lib/airlock")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("status", help="installed releases, current, floor (JSON)")

    p = sub.add_parser(
        "host-facts", help="state, systemd, free disk, arch, Python: what install reads first"
    )
    p.add_argument("--install-path", required=True, help="measure free disk here")
    p.add_argument("--glibc-min", default=None, help="the engine's glibc_min (manifest)")
    p.add_argument("--glibcxx-min", default=None, help="the engine's glibcxx_min (manifest)")

    p = sub.add_parser("check-sequence", help="refuse a sequence below the floor")
    p.add_argument("--sequence", type=int, required=True)
    p.add_argument("--allow-downgrade", action="store_true")

    p = sub.add_parser("manifest", help="copy the verified manifest out of a bundle")
    p.add_argument("bundle")
    p.add_argument("--sha256", required=True)
    p.add_argument("--out", default=None, help="write here instead of the state directory")

    p = sub.add_parser("gate", help="health gate: serve the release, /health and a completion")
    p.add_argument("--version", required=True)
    p.add_argument("--user", default=None)
    p.add_argument("--log-file", required=True)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--port", type=int, default=None, help="serve it on this loopback slot port")

    p = sub.add_parser("switch", help="point current at a release and record it")
    p.add_argument("--version", required=True)
    p.add_argument("--manifest-sha256", required=True)
    p.add_argument("--sequence", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--allow-downgrade", action="store_true")

    p = sub.add_parser("health", help="wait until the running service answers /health")
    p.add_argument("--url", default=None, help="default: AIRLOCK_HEALTH_URL of current")
    p.add_argument("--version", default=None, help="the release whose settings (URL, API key)")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--completion", action="store_true", help="also require one completion")

    p = sub.add_parser("discard", help="undo a failed install of a release")
    p.add_argument("--version", required=True)
    p.add_argument("--first-install", action="store_true")
    p.add_argument("--fresh", action="store_true", help="the release was new in this run")
    p.add_argument("--previous", default=None, help="the release current before this run")

    p = sub.add_parser("rollback", help="switch current to the previous or a named release")
    p.add_argument("--to", default=None)

    p = sub.add_parser("zip-self", help="write this package as a deterministic zip (for hosts)")
    p.add_argument("out")

    p = sub.add_parser("verify", help="re-hash installed files against the signed manifest")
    p.add_argument("--all", action="store_true", help="every installed release, not current")
    return parser


def run(args: argparse.Namespace) -> Dict[str, Any]:
    layout = Layout(root=args.root, config=args.config, state=args.state)
    cmd = args.command
    if cmd == "status":
        state = load_state(layout)
        return dict(
            state, link=current_target(layout), previous=previous_release(state), changed=False
        )
    if cmd == "host-facts":
        return host_facts(
            layout,
            args.install_path,
            glibc_min=args.glibc_min or None,
            glibcxx_min=args.glibcxx_min or None,
        )
    if cmd == "check-sequence":
        message = check_sequence(
            load_state(layout), args.sequence, allow_downgrade=args.allow_downgrade
        )
        return {"changed": False, "message": message}
    if cmd == "manifest":
        path = args.out or layout.manifest_file(args.sha256)
        if os.path.isfile(path) and file_sha256(path) == args.sha256:
            return {"changed": False, "path": path}
        atomic_write(path, read_manifest(args.bundle, args.sha256), 0o644)
        return {"changed": True, "path": path}
    if cmd == "gate":
        result = health_gate(
            layout.release_dir(args.version),
            layout.env_file(args.version),
            user=args.user,
            log_file=args.log_file,
            timeout=args.timeout,
            port=args.port,
        )
        return dict(result, changed=False)
    if cmd == "switch":
        state = load_state(layout)
        check_sequence(state, args.sequence, allow_downgrade=args.allow_downgrade)
        downgrade = args.sequence < int(state.get("floor", 0))
        if state.get("current") == args.version and current_target(layout) == args.version:
            return {"changed": False, "current": args.version}
        switch_current(layout, args.version)
        record_release(
            state,
            version=args.version,
            digest=args.manifest_sha256,
            sequence=args.sequence,
            name=args.name,
            downgrade=downgrade,
        )
        save_state(layout, state)
        return {"changed": True, "current": args.version}
    if cmd == "health":
        from runtime.settings import settings_value

        version = args.version or current_target(layout)
        if version is None:
            raise InstallError(f"{layout.current} does not point to a release")
        url = args.url or settings_value(layout.env_file(version), "AIRLOCK_HEALTH_URL")
        url = url or "http://127.0.0.1:8080"
        # A site that sets api_key_file gets a server that answers 401 without the key.
        api_key = read_api_key(layout.env_file(version))
        wait_healthy(url, timeout=args.timeout, api_key=api_key)
        text = (
            check_completion(url, timeout=args.timeout, api_key=api_key)
            if args.completion
            else None
        )
        return {"changed": False, "url": url, "completion": text}
    if cmd == "discard":
        removed = discard(
            layout,
            args.version,
            first_install=args.first_install,
            fresh=args.fresh,
            previous=args.previous,
        )
        return {"changed": bool(removed), "removed": removed}
    if cmd == "rollback":
        return rollback(layout, args.to)
    if cmd == "zip-self":
        return {"changed": zip_self(args.out), "path": args.out}
    if cmd == "verify":
        state = load_state(layout)
        versions = sorted(state["releases"]) if args.all else [state.get("current")]
        if versions == [None]:
            raise InstallError("nothing is installed on this host", hint="run install.yml first")
        drift: List[Dict[str, str]] = []
        for version in versions:
            drift.extend(find_drift(layout, state, str(version)))
        if drift:
            raise IntegrityError(
                f"{len(drift)} installed file(s) differ from the signed manifest",
                problems=[
                    "{}: expected {}, found {}".format(d["file"], d["expected"], d["actual"])
                    for d in drift
                ],
                hint="reinstall the release with install.yml (or roll back) and find out "
                "who changed the files",
            )
        return {"changed": False, "verified": versions, "drift": []}
    raise UsageError(f"unknown command {cmd}")  # pragma: no cover


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return json_command(lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
