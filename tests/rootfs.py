"""Root filesystems of other Debian releases for tests, made with mmdebstrap, cached by inputs.

Tests that must run on a real older or newer userland than the build machine (glibc,
libstdc++, Python, systemd as PID 1) take one from here::

    root = debian_rootfs("bullseye", include=("python3",))
    subprocess.run(["systemd-nspawn", "-D", str(root), "--private-network", ...])

The tree is built once into ``$AIRLOCK_CACHE/rootfs/<suite>-<key>`` (``key``: a digest of
the suite, variant, package list, mirror and architecture) and reused; a half-built tree is
never taken for a finished one (it is built beside its final name and renamed into place).
Callers that write into a tree must work on an overlay (``mount -t overlay`` with the tree
as ``lowerdir``, or ``systemd-nspawn --overlay``) or a full copy: the cached tree is shared
by every test and every run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from bundler.engine.buildcache import default_cache_dir

# Debian's registry (the only one this project's CI may reach) serves bookworm, trixie and
# bullseye; buster is gone from it.
MIRROR = os.environ.get("AIRLOCK_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITES = ("bullseye", "bookworm", "trixie")
_FORMAT = 1  # bump to rebuild every cached tree after a change in how they are made


class RootfsError(RuntimeError):
    """mmdebstrap is missing or could not build the tree (the message has its output)."""


def rootfs_key(suite: str, *, include: Sequence[str], variant: str) -> str:
    """The cache key of a tree: everything that decides what mmdebstrap puts in it."""
    inputs = {
        "format": _FORMAT,
        "suite": suite,
        "variant": variant,
        "include": sorted(set(include)),
        "mirror": MIRROR,
        "arch": platform.machine(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def debian_rootfs(
    suite: str,
    *,
    include: Sequence[str] = (),
    variant: str = "minbase",
    cache_dir: Path | None = None,
) -> Path:
    """A cached Debian ``suite`` root filesystem with ``include`` packages installed.

    Needs root and ``mmdebstrap`` (``.ci/setup`` installs it). Raises RootfsError.
    """
    if suite not in SUITES:
        raise RootfsError(f"unknown suite {suite!r}: Debian's registry serves {SUITES}")
    base = (cache_dir or default_cache_dir()) / "rootfs"
    final = base / f"{suite}-{rootfs_key(suite, include=include, variant=variant)}"
    if (final / ".airlock-rootfs").is_file():
        return final
    if shutil.which("mmdebstrap") is None:
        raise RootfsError("mmdebstrap is not installed; run bash .ci/setup")
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / f".{final.name}.lock"):
        if (final / ".airlock-rootfs").is_file():  # another run built it meanwhile
            return final
        partial = base / f".{final.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        argv = [
            "mmdebstrap",
            f"--variant={variant}",
            "--quiet",
            *([f"--include={','.join(sorted(set(include)))}"] if include else []),
            suite,
            str(partial),
            MIRROR,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise RootfsError(
                f"mmdebstrap {suite} failed ({proc.returncode}): {proc.stderr[-3000:]}"
            )
        record = {"suite": suite, "variant": variant, "include": sorted(set(include))}
        (partial / ".airlock-rootfs").write_text(json.dumps(record, sort_keys=True) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    return final


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
