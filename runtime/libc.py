"""The host's C and C++ runtime levels, and whether they can load the bundle's engine.

The build records what the engine needs (``glibc_min``: the newest ``GLIBC_x.y`` symbol
version any engine file needs; ``glibcxx_min``: the newest ``GLIBCXX_3.4.x``, ``None`` when
libc++ is linked in statically, as airlock's portable build does). A host reports what it
has: glibc from ``os.confstr("CS_GNU_LIBC_VERSION")`` on a live root, else from the banner
that every ``libc.so.6`` carries ("GNU C Library ... version 2.28"); libstdc++ from the
``GLIBCXX_3.4.x`` version definitions in its ``libstdc++.so.6`` (there is no API for it).
:func:`check_engine` refuses an engine the host's loader would reject, before any byte of
the bundle is transferred. Standard library only: this runs on target hosts (3.8+).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from runtime.errors import HostLibraryError

# Where distributions keep libc.so.6 and libstdc++.so.6 (RHEL/SUSE, Debian/Ubuntu multiarch).
LIB_DIRS = (
    "lib64",
    "usr/lib64",
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib",
    "usr/lib",
)
_READ_LIMIT = 32 * 1024 * 1024  # libc.so.6 and libstdc++.so.6 are 2-3 MiB
_BANNER = re.compile(rb"GNU C Library[^\n\x00]*? version (\d+\.\d+)")
_GLIBCXX = re.compile(rb"GLIBCXX_(3\.4(?:\.\d+)?)\x00")


def version_key(text: str) -> Tuple[int, ...]:
    """``"3.4.30"`` as ``(3, 4, 30)`` for comparison; non-numeric parts compare as 0."""
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("."))


def parse_confstr(text: Optional[str]) -> Optional[str]:
    """``"glibc 2.28"`` (``CS_GNU_LIBC_VERSION``) -> ``"2.28"``; anything else -> None."""
    m = re.match(r"^glibc (\d+\.\d+)", (text or "").strip())
    return m.group(1) if m else None


def glibc_from_banner(data: bytes) -> Optional[str]:
    """The version in a ``libc.so.6``'s banner, or None when there is none (not glibc)."""
    m = _BANNER.search(data)
    return m.group(1).decode() if m else None


def glibcxx_from_library(data: bytes) -> Optional[str]:
    """The newest ``GLIBCXX_3.4.x`` a ``libstdc++.so.6`` defines, or None."""
    found = {m.group(1).decode() for m in _GLIBCXX.finditer(data)}
    return max(found, key=version_key) if found else None


def _find(root: Path, name: str) -> Optional[Path]:
    for d in LIB_DIRS:
        p = root / d / name
        if p.is_file():
            return p
    return None


def _read(path: Path) -> Optional[bytes]:
    try:
        with open(path, "rb") as fh:
            return fh.read(_READ_LIMIT)
    except OSError:
        return None


def libc_facts(root: Path, *, live: bool, warnings: List[str]) -> Dict[str, Any]:
    """``{glibc, glibc_source, glibcxx, glibcxx_source}`` of the host under ``root``.

    ``live``: ``root`` is this running system, so glibc is asked of the C library this
    Python runs on; otherwise (fixture trees, a root filesystem) it is read from the tree.
    A missing fact is ``None`` and a warning, never an error.
    """
    glibc = source = None
    if live:
        try:
            glibc = parse_confstr(os.confstr("CS_GNU_LIBC_VERSION"))
            source = "confstr CS_GNU_LIBC_VERSION" if glibc else None
        except (ValueError, OSError):
            glibc = None
    if glibc is None:
        path = _find(root, "libc.so.6")
        data = _read(path) if path else None
        glibc = glibc_from_banner(data) if data else None
        source = "/" + str(path.relative_to(root)) if glibc and path else None
    if glibc is None:
        warnings.append("no glibc found (not a glibc system?): the engine needs glibc")
    glibcxx = cxx_source = None
    path = _find(root, "libstdc++.so.6")
    if path is not None:
        data = _read(path)
        glibcxx = glibcxx_from_library(data) if data else None
        cxx_source = "/" + str(path.relative_to(root)) if glibcxx else None
    return {
        "glibc": glibc,
        "glibc_source": source,
        "glibcxx": glibcxx,
        "glibcxx_source": cxx_source,
    }


def engine_problems(
    libc: Dict[str, Any], glibc_min: Optional[str], glibcxx_min: Optional[str]
) -> List[str]:
    """What the host lacks to load an engine that needs ``glibc_min``/``glibcxx_min`` (pure)."""
    problems = []
    have = libc.get("glibc")
    if glibc_min:
        if not have:
            problems.append(
                f"the engine needs glibc {glibc_min} or newer; no glibc was found on this host "
                "(musl-based systems such as Alpine cannot run it)"
            )
        elif version_key(str(have)) < version_key(glibc_min):
            problems.append(
                f"the engine needs glibc {glibc_min} or newer; this host has glibc {have}"
            )
    cxx = libc.get("glibcxx")
    if glibcxx_min:
        if not cxx:
            problems.append(
                f"the engine needs the host's libstdc++ (GLIBCXX_{glibcxx_min}); "
                "this host has no libstdc++.so.6"
            )
        elif version_key(str(cxx)) < version_key(glibcxx_min):
            problems.append(
                f"the engine needs libstdc++ with GLIBCXX_{glibcxx_min}; this host's "
                f"libstdc++ stops at GLIBCXX_{cxx}"
            )
    return problems


def check_engine(
    libc: Dict[str, Any], glibc_min: Optional[str], glibcxx_min: Optional[str]
) -> Optional[str]:
    """Refuse an engine this host's loader cannot load; else the reason line for the report.

    Returns None when the manifest records no requirement (an engine from before the audit).

    Raises:
        HostLibraryError: every missing level at once, both versions named.
    """
    problems = engine_problems(libc, glibc_min, glibcxx_min)
    if problems:
        raise HostLibraryError(
            "this host's C runtime is older than the bundle's engine needs",
            problems=problems,
            hint="install on a host with these levels or newer, or build the bundle on a "
            "machine whose distribution is no newer than this host's: the engine needs the "
            "build machine's glibc and libstdc++ (docs/OPERATIONS.md, Supported hosts)",
        )
    if not glibc_min:
        return None
    cxx = f", libstdc++ GLIBCXX_{glibcxx_min} needed" if glibcxx_min else ", no libstdc++ needed"
    return f"glibc {libc.get('glibc')}: the engine needs {glibc_min} or newer{cxx}"
