"""Bootstrap the offline Ansible controller from the bundle's ``controller/`` wheelhouse.

Run from the directory that holds the bundle's checked ``controller/`` and ``runtime/``::

    python3 -m runtime.controller /opt/airlock-controller

It needs no ``python3-venv`` (Debian and Ubuntu ship ``venv`` without ``ensurepip``) and no
network: the venv is made without pip, and pip runs from the closure's own wheel (a wheel
is a zip that Python runs as an application) after its sha256 matched the pin. Then that
pip installs the closure for this Python, ``--no-index --require-hashes``. A Python the
bundle has no closure for is refused before anything is written, naming the Pythons and
the ansible-core the bundle carries.
"""

# No ``from __future__ import annotations`` and nothing from runtime/ before the check
# below: RHEL 8's python3 is 3.6, and it must get the refusal, not a SyntaxError.
import argparse
import hashlib
import os
import re
import subprocess
import sys
import venv
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


def _refuse_before_38() -> None:
    """Python older than runtime/'s 3.8: the same refusal as :func:`choose`, stdlib only."""
    house = Path(__file__).resolve().parent.parent / "controller"
    found = sorted(
        int(m.group(1))
        for m in (re.match(r"requirements-cp3(\d+)-", p.name) for p in house.glob("*.txt"))
        if m
    )
    here = "{}.{}".format(*sys.version_info[:2])
    carried = ", ".join(f"3.{v}" for v in sorted(set(found)))
    what = f"it for Python {carried} only" if carried else "no controller wheelhouse here"
    sys.stderr.write(
        f"error: Python {here} cannot run this bundle's Ansible controller: the bundle carries "
        f"{what}\nhint: run this command with one of those instead of python3 (RHEL 8/9: "
        "dnf install python3.11)\n"
    )
    sys.exit(50)


if __name__ == "__main__" and sys.version_info < (3, 8):
    _refuse_before_38()

from runtime.errors import AirlockError, HostError, InstallError, UsageError  # noqa: E402

__all__ = ["Closure", "bootstrap", "choose", "closures", "main"]

_REQ_RE = re.compile(r"^requirements-cp3(\d+)-([A-Za-z0-9_]+)\.txt$")
_PIN_RE = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)((?: --hash=sha256:[0-9a-f]{64})+)\s*$")
_MANYLINUX_RE = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")


class Closure:
    """One controller Python's hash-pinned requirements file and what it pins."""

    def __init__(self, python: str, platform: str, path: Path, text: str) -> None:
        self.python = python
        self.platform = platform
        self.path = path
        self.pins: Dict[str, Tuple[str, Tuple[str, ...]]] = {}
        for line in text.splitlines():
            m = _PIN_RE.match(line)
            if m:
                name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
                hashes = tuple(h.split(":", 1)[1] for h in m.group(3).split())
                self.pins[name] = (m.group(2), hashes)

    def version(self, name: str) -> Optional[str]:
        pin = self.pins.get(name)
        return pin[0] if pin else None


def closures(wheelhouse: Path) -> List[Closure]:
    """Every controller closure in ``wheelhouse``, by Python version."""
    found = []
    for path in sorted(wheelhouse.glob("requirements-cp3*-*.txt")):
        m = _REQ_RE.match(path.name)
        if m:
            text = path.read_text(encoding="utf-8")
            found.append(Closure(f"3.{m.group(1)}", m.group(2), path, text))
    return sorted(found, key=lambda c: (int(c.python.split(".")[1]), c.platform))


def choose(found: Sequence[Closure], *, python: str, machine: str, glibc: Optional[str]) -> Closure:
    """The closure for this interpreter and machine (pure).

    Raises:
        HostError: no closure for this Python, this architecture or this glibc; the message
            names what the bundle carries and what to do.
    """
    if not found:
        raise HostError(
            "no controller wheelhouse here: no controller/requirements-cp3*-*.txt",
            hint="run this from the directory the bundle's controller/ and runtime/ were "
            "taken out into (docs/OPERATIONS.md, 'Bootstrap a controller offline')",
        )
    carried = ", ".join(
        f"Python {c.python} (ansible-core {c.version('ansible-core') or '?'})" for c in found
    )
    mine = [c for c in found if c.python == python]
    if not mine:
        pythons = sorted({c.python for c in found}, key=lambda v: int(v.split(".")[1]))
        names = " or ".join(f"python{v}" for v in pythons)
        cores = sorted({c.version("ansible-core") or "?" for c in found})
        raise HostError(
            f"Python {python} cannot run this bundle's Ansible controller: the bundle carries "
            f"it for {carried} only; ansible-core {' / '.join(cores)} does not support Python "
            f"{python} on the controller",
            hint=f"run this command with {names} instead of python3 (RHEL 8/9: dnf install "
            "python3.11; Debian 12: python3.11; Debian 13: python3.13; Ubuntu 22.04: python3.10; "
            "Ubuntu 24.04: python3.12), or bootstrap the controller on a machine that has one",
        )
    arch = [c for c in mine if c.platform.endswith("_" + machine)]
    if not arch:
        raise HostError(
            f"this controller is {machine} but the bundle's controller wheels are for "
            + ", ".join(sorted({c.platform for c in mine})),
            hint="bootstrap the controller on a machine of that architecture",
        )
    closure = arch[0]
    m = _MANYLINUX_RE.match(closure.platform)
    if m and glibc is not None and _version(glibc) < (int(m.group(1)), int(m.group(2))):
        raise HostError(
            f"this controller has glibc {glibc} but the bundle's controller wheels "
            f"({closure.platform}) need glibc {m.group(1)}.{m.group(2)} or newer",
            hint="bootstrap the controller on a newer system (RHEL 8, Debian 11, Ubuntu 20.04 "
            "or newer)",
        )
    return closure


def _version(text: str) -> Tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts[:2])


def _host_glibc() -> Optional[str]:
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None
    if value and value.startswith("glibc "):
        return value.split()[1]
    return None


def _pip_wheel(wheelhouse: Path, closure: Closure) -> Path:
    """The closure's pip wheel, its sha256 checked against the pin before it runs."""
    pin = closure.pins.get("pip")
    if pin is None:
        raise InstallError(f"{closure.path.name} pins no pip", hint="rebuild the bundle")
    version, hashes = pin
    for wheel in sorted(wheelhouse.glob(f"pip-{version}-*.whl")):
        digest = hashlib.sha256()
        with open(wheel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() in hashes:
            return wheel
        raise InstallError(
            f"{wheel.name}: sha256 {digest.hexdigest()} is not the one {closure.path.name} pins",
            hint="take controller/ out of the verified bundle again and check it with "
            "sha256sum --check (docs/OPERATIONS.md)",
        )
    raise InstallError(
        f"pip {version} is pinned by {closure.path.name} but no pip-{version}-*.whl is in "
        f"{wheelhouse}",
        hint="take controller/ out of the verified bundle again",
    )


def _offline_env() -> Dict[str, str]:
    """pip sees the wheelhouse and nothing else: no PIP_* settings, no pip.conf."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_NO_CACHE_DIR="1")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def bootstrap(dest: Path, *, wheelhouse: Path) -> Closure:
    """Make the controller venv at ``dest`` from ``wheelhouse`` alone; returns the closure.

    Raises:
        HostError: this Python, architecture or glibc has no closure (nothing is written).
        InstallError: the venv or the offline install failed (pip's output in problems).
    """
    closure = choose(
        closures(wheelhouse),
        python="{}.{}".format(*sys.version_info[:2]),
        machine=os.uname().machine,
        glibc=_host_glibc(),
    )
    pip = _pip_wheel(wheelhouse, closure)
    python = dest / "bin" / "python"
    if not python.exists():
        try:
            # No ensurepip: Debian's python3 without python3-venv makes this venv fine.
            venv.EnvBuilder(with_pip=False, symlinks=True).create(str(dest))
        except (OSError, subprocess.CalledProcessError) as e:
            raise InstallError(
                f"cannot create the venv {dest}: {e}",
                hint="choose a writable directory that is not in use",
            ) from e
    argv = [
        str(python),
        str(pip / "pip"),
        "install",
        "--no-index",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--find-links",
        str(wheelhouse),
        "--require-hashes",
        "--only-binary=:all:",
        "-r",
        str(closure.path),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, env=_offline_env(), check=False)
    if run.returncode != 0:
        raise InstallError(
            f"the offline install into {dest} failed (pip exit {run.returncode})",
            problems=(run.stdout + run.stderr).strip().splitlines()[-20:],
            hint="take controller/ out of the verified bundle again and check it with "
            "sha256sum --check (docs/OPERATIONS.md)",
        )
    return closure


def main(argv: Optional[Sequence[str]] = None) -> int:
    here = Path(__file__).resolve().parent.parent / "controller"
    parser = argparse.ArgumentParser(
        prog="python3 -m runtime.controller",
        description="Bootstrap the Ansible controller offline from the bundle's wheels.",
    )
    parser.add_argument("dest", type=Path, help="the venv to make, e.g. /opt/airlock-controller")
    parser.add_argument(
        "--wheelhouse",
        type=Path,
        default=here,
        help=f"the bundle's controller/ directory (default: {here})",
    )
    args = parser.parse_args(argv)
    try:
        if not args.wheelhouse.is_dir():
            raise UsageError(
                f"{args.wheelhouse} is not a directory",
                hint="pass --wheelhouse DIR/controller, or run from the directory that holds "
                "controller/ and runtime/",
            )
        closure = bootstrap(args.dest, wheelhouse=args.wheelhouse)
    except AirlockError as e:
        print(e.render(), file=sys.stderr)
        return e.exit_code
    print(
        f"controller ready: {args.dest} (Python {closure.python}, ansible-core "
        f"{closure.version('ansible-core')}, airlock {closure.version('airlock')}); "
        f"run ansible-playbook and airlock from {args.dest / 'bin'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
