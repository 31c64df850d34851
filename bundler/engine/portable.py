"""The portable toolchain: ``zig cc``/``zig c++`` building for glibc 2.28 with a static libc++.

Everything airlock runs on a host must load on glibc 2.28 without the host's libstdc++
(docs/OPERATIONS.md, "Supported hosts"). The system compiler cannot promise that: it links
against the build machine's glibc (Debian 12: 2.36, symbols up to ``GLIBC_2.34``) and
libstdc++ (``GLIBCXX_3.4.30``). Zig's bundled clang can: ``-target x86_64-linux-gnu.2.28``
links against glibc 2.28's symbol versions (zig ships their stubs) and zig links its own
libc++, libc++abi, libunwind and compiler-rt statically into every binary. It comes from the
``ziglang`` package on PyPI, pinned in pyproject.toml's ``portable`` extra, so the build
machine needs no extra system package.

CMake and scikit-build-core take a compiler as one executable path, so the toolchain is
two tiny wrapper scripts (``cc`` and ``c++``) written into the build directory; their text
and the zig version are part of every build's cache key.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bundler.engine.buildcache import default_cache_dir
from bundler.errors import BuildError

__all__ = ["TARGET", "Toolchain", "zig_executable", "zig_toolchain"]

TARGET = "x86_64-linux-gnu.2.28"
"""Zig's target: x86-64, Linux, glibc 2.28 symbol versions (the floor, RHEL 8)."""

_WRAPPER = (
    "#!/bin/sh\n"
    "# airlock portable toolchain ({target})\n"
    'exec "{zig}" {mode} -target {target} "$@"\n'
)


@dataclass(frozen=True)
class Toolchain:
    """The C and C++ compilers of a build and what identifies them in its cache key."""

    cc: Path
    cxx: Path
    compiler: str  # "zig 0.17.1 (x86_64-linux-gnu.2.28)"
    wrapper_sha256: str
    env: dict[str, str]

    def cmake_flags(self) -> list[str]:
        return [f"-DCMAKE_C_COMPILER={self.cc}", f"-DCMAKE_CXX_COMPILER={self.cxx}"]


def zig_executable() -> Path:
    """The ``zig`` binary of the installed ``ziglang`` package.

    Raises:
        BuildError: the package is not installed (``bash .ci/setup`` installs it).
    """
    # the package is the compiler binary; nothing of it is imported
    spec = importlib.util.find_spec("ziglang")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            "the portable toolchain needs the ziglang package (zig cc), which is not installed",
            hint="run: pip install -e '.[portable]' (pyproject.toml pins ziglang in that extra)",
        )
    zig = Path(next(iter(spec.submodule_search_locations))) / "zig"
    if not os.access(zig, os.X_OK):
        raise BuildError(f"{zig} is not an executable zig compiler", hint="reinstall ziglang")
    return zig


def _zig_version(zig: Path) -> str:
    proc = subprocess.run([str(zig), "version"], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BuildError(f"{zig} version failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


def zig_toolchain(cache_dir: Path | None = None) -> Toolchain:
    """Write the ``cc``/``c++`` wrappers under ``<cache>/zig/<version>`` and describe them.

    ``<cache>`` is ``cache_dir``, else ``$AIRLOCK_CACHE`` (``~/.cache/airlock``): one per
    machine, not per build cache, because zig's own cache (the libc++, compiler-rt and glibc
    stubs it builds on first use, two to seven minutes cold on two cores) lives beside the
    wrappers and every build may share it. The wrappers are written atomically:
    concurrent builds on one machine share them.

    Raises:
        BuildError: zig is missing or does not run.
    """
    zig = zig_executable()
    version = _zig_version(zig)
    base = (cache_dir or default_cache_dir()) / "zig" / version
    (base / "bin").mkdir(parents=True, exist_ok=True)
    paths = {}
    digest = hashlib.sha256()
    for name in ("cc", "c++"):
        # the key hashes the text without this machine's path to zig
        digest.update(_WRAPPER.format(zig="zig", mode=name, target=TARGET).encode())
        path = base / "bin" / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_text(_WRAPPER.format(zig=zig, mode=name, target=TARGET))
        tmp.chmod(0o755)
        os.replace(tmp, path)
        paths[name] = path
    zig_cache = str(base / "cache")
    return Toolchain(
        cc=paths["cc"],
        cxx=paths["c++"],
        compiler=f"zig {version} ({TARGET})",
        wrapper_sha256=digest.hexdigest(),
        env={"ZIG_GLOBAL_CACHE_DIR": zig_cache, "ZIG_LOCAL_CACHE_DIR": zig_cache},
    )
