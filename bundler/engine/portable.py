"""The portable toolchain: ``zig cc``/``zig c++`` building for glibc 2.28 with a static libc++.

Everything airlock runs on a host must load on glibc 2.28 without the host's libstdc++
(docs/OPERATIONS.md, "Supported hosts"). The system compiler cannot promise that: it links
against the build machine's glibc (Debian 12: 2.36, symbols up to ``GLIBC_2.34``) and
libstdc++ (``GLIBCXX_3.4.30``). Zig's bundled clang can: ``-target x86_64-linux-gnu.2.28``
links against glibc 2.28's symbol versions (zig ships their stubs) and zig links its own
libc++, libc++abi, libunwind and compiler-rt statically into every binary. It comes from the
``ziglang`` package on PyPI, pinned in pyproject.toml's ``build`` extra, so the build machine
needs no extra system package.

A static libc++ per ELF file is only sound if each copy stays private: left exported, the
libc++ symbols of ``libggml-base.so``, each CPU variant module and ``llama-server`` interpose
each other at load time, one copy's code runs on another copy's objects, and the engine
aborts at start (``free(): invalid pointer``). So every shared object and executable the
wrappers link gets a linker version script (:data:`EXPORTS`) that exports only llama.cpp's
own C API and binds everything else, the C++ runtime included, locally.

CMake and scikit-build-core take a compiler as one executable path, so the toolchain is
two tiny wrapper scripts (``cc`` and ``c++``) and the version script, written under the
machine's cache; their text and the zig version are part of every build's cache key.
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

__all__ = [
    "DEFAULTS",
    "EXPORTS",
    "LINK_DEFAULTS",
    "TARGET",
    "Toolchain",
    "zig_executable",
    "zig_toolchain",
]

TARGET = "x86_64-linux-gnu.2.28"
"""Zig's target: x86-64, Linux, glibc 2.28 symbol versions (the floor, RHEL 8)."""

# The C++ patterns are needed: the binding wheel's libmtmd.so imports
# llama_model_get_tok_embd(llama_model const*, float*), a C++ function, from libllama.so.
# lld also matches them against template instantiations over llama.cpp's types
# (std::vector<ggml_tensor*>::emplace_back...), which some engine files then export: the
# same libc++ header code in every file, never libc++'s own runtime (tests/integration/
# test_llamacpp_build.py checks that).
EXPORTS = """\
/* airlock portable toolchain: what an ELF file linked by zig exports.
   llama.cpp's C API (and the backend-module entry points ggml_backend_init and
   ggml_backend_score, the quantization kernels libggml-base.so gives the CPU modules,
   the multimodal API the Python binding loads); C++ functions of those APIs by their
   demangled names. Everything else, the static libc++/libc++abi/libunwind/compiler-rt
   above all, stays local to the file. */
{
  global:
    llama_*; ggml_*; gguf_*; mtmd_*; clip_*; llava_*;
    quantize_*; dequantize_*; iq2xs_*; iq3xs_*;
    extern "C++" { llama_*; ggml_*; gguf_*; mtmd_*; clip_*; };
  local: *;
};
"""
"""The linker version script applied to every shared object and executable zig links."""

DEFAULTS = "-O2 -g0"
"""What the wrappers put before the build's own flags, where zig cc's defaults differ from
gcc's and cost every build. Without ``-g0`` zig emits DWARF debug info (the engine was
154 MB, about 140 MB of it debug information, against gcc's 16 MB, and compiling and linking
it took time). Without an ``-O`` flag zig compiles in Debug mode with the UBSan runtime, so
CMake's compiler checks (which pass no ``-O``) made zig build a second, Debug compiler-rt,
libunwind and UBSan runtime besides the release ones the build links. A build's own
``-O3``, ``-O0`` or ``-g`` comes later on the command line and wins. Measured on the
engine (bench/README.md): cold configure 87 s -> 70 s, compile 390 s -> 340 s."""

LINK_DEFAULTS = "-Wl,--strip-debug"
"""On the command lines that link: zig's own libc++, libc++abi, libunwind and compiler-rt
carry DWARF (about 6 MB in ``llama-server``), which ``-g0`` cannot reach. Zig takes this as
its strip mode, so the static symbol table goes too, as in a distribution's packaged
binaries: what stays is the dynamic symbol table (the exported API the loader and ggml's
backend modules use). ``llama-server`` is 9.2 MB (gcc's unstripped build: 12.9 MB)."""

# Compiling (-c), preprocessing (-E, -M, -MM) and assembling (-S) link nothing: the
# version script goes only on the command lines that produce an ELF file.
_WRAPPER = (
    "#!/bin/sh\n"
    "# airlock portable toolchain ({target})\n"
    'for arg in "$@"; do\n'
    '  case "$arg" in\n'
    '    -c|-E|-S|-M|-MM) exec "{zig}" {mode} -target {target} {defaults} "$@" ;;\n'
    "  esac\n"
    "done\n"
    'exec "{zig}" {mode} -target {target} {defaults} {link_defaults} '
    '-Wl,--version-script="{exports}" "$@"\n'
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
            hint="install airlock with its build extra: pip install 'airlock[build]' "
            "(from a source checkout: bash .ci/setup-demo)",
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
    """Write the ``cc``/``c++`` wrappers and the version script under ``<cache>/zig/<version>``.

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
    # the key hashes the texts without this machine's paths to zig and the script
    digest = hashlib.sha256(EXPORTS.encode())
    for name in ("cc", "c++"):
        digest.update(wrapper_text(zig="zig", mode=name, exports="exports.map").encode())
    # one directory per wrapper text: a build never picks up another airlock's wrappers
    # (another checkout on this machine) rewritten under it halfway through
    bin_dir = base / f"bin-{digest.hexdigest()[:16]}"
    bin_dir.mkdir(parents=True, exist_ok=True)
    exports = bin_dir / "exports.map"
    _write_atomic(exports, EXPORTS, 0o644)
    paths = {}
    for name in ("cc", "c++"):
        path = bin_dir / name
        _write_atomic(path, wrapper_text(zig=str(zig), mode=name, exports=str(exports)), 0o755)
        paths[name] = path
    zig_cache = str(base / "cache")
    return Toolchain(
        cc=paths["cc"],
        cxx=paths["c++"],
        compiler=f"zig {version} ({TARGET})",
        wrapper_sha256=digest.hexdigest(),
        env={"ZIG_GLOBAL_CACHE_DIR": zig_cache, "ZIG_LOCAL_CACHE_DIR": zig_cache},
    )


def wrapper_text(*, zig: str, mode: str, exports: str) -> str:
    """The ``cc``/``c++`` wrapper script (``mode``: ``cc`` or ``c++``)."""
    return _WRAPPER.format(
        zig=zig,
        mode=mode,
        target=TARGET,
        defaults=DEFAULTS,
        link_defaults=LINK_DEFAULTS,
        exports=exports,
    )


def _write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)
