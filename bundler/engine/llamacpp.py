"""The llama.cpp engine: llama-server with CPU variant modules, and the binding wheel.

``llama-server`` is built from the pinned sdist's vendored llama.cpp (:mod:`bundler.engine.sdist`)
with ``GGML_BACKEND_DL`` so the CPU backend is a set of loadable modules
(``libggml-cpu-<variant>.so``) and ggml picks the best one for the host at load time: no
build ever dies with SIGILL on an older CPU. Optionally a CUDA module is built
(:mod:`bundler.engine.cuda`), with the CUDA runtime libraries it needs carried in
``engine/lib/cuda``.

Every result is audited (:mod:`bundler.engine.elfaudit`): the manifest records the glibc
and libstdc++ levels it needs, so a host that cannot load it refuses before any transfer.
With the portable toolchain (:mod:`bundler.engine.portable`, the default, see
:data:`Compiler`) the result is also checked against the glibc 2.28 floor. The command
lines (cmake flags, variant choice) are pure functions; the adapters around them run cmake,
copy files and check that the result is relocatable.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bundler import console
from bundler.engine import buildprogress, elfaudit, portable
from bundler.engine import cuda as cudalib
from bundler.engine.buildcache import BuildCache, CacheEntry, copy_log, log_tail
from bundler.engine.cuda import CudaOptions, RuntimeWheel
from bundler.engine.portable import Toolchain
from bundler.engine.sdist import SourceArchive, source_tree
from bundler.errors import BuildError, FetchError, UsageError
from runtime import variants
from runtime.components import CUDA_MODULE, CUDA_RUNTIME_DIR, ENGINE_LIB_DIR, ENGINE_SERVER

__all__ = [
    "ALL_X86_VARIANTS",
    "EngineBuild",
    "best_variant",
    "build_engine",
    "build_llama_cpp_python_wheel",
    "cpu_flags",
    "default_variants",
    "engine_cmake_flags",
    "isolation_prefix",
    "run_logged",
    "stage_engine",
]


# ggml's x86 CPU variants in its order (ggml/src/CMakeLists.txt, GGML_CPU_ALL_VARIANTS),
# one CMake target each; the list and the features of each live in runtime.variants.
ALL_X86_VARIANTS: tuple[str, ...] = variants.X86_VARIANT_NAMES


# The cmake include (CMAKE_PROJECT_INCLUDE: read at the end of every project() call, so the
# vendored source stays untouched) that shapes the engine build:
# - it limits the CPU modules built to the requested variants: ggml makes its core library
#   depend on every module (add_dependencies(ggml ggml-cpu-*)), so building the
#   llama-server target would otherwise compile all 14;
# - with AIRLOCK_SHARED_GGML, ggml's libraries stay shared while the rest of the build
#   (BUILD_SHARED_LIBS=OFF) is static: llama.cpp and common link into llama-server, and
#   only libggml, libggml-base and the backend modules are shared, as GGML_BACKEND_DL
#   needs. llama.cpp's CMake ties both to BUILD_SHARED_LIBS; a normal variable in ggml's
#   directory scope overrides the cache value there (CMP0077: ggml's option() then keeps
#   it). Each ELF file of a portable build carries its own static libc++, so the fewer
#   C++ interfaces cross between files, the better (bundler.engine.portable).
_ENGINE_CMAKE = """\
# airlock: llama.cpp static, ggml shared (AIRLOCK_SHARED_GGML).
if(AIRLOCK_SHARED_GGML AND PROJECT_NAME STREQUAL "ggml")
  set(BUILD_SHARED_LIBS ON)
  message(STATUS "airlock: ggml's libraries shared, llama.cpp static (AIRLOCK_SHARED_GGML)")
endif()
# airlock: build only the CPU variant modules listed in AIRLOCK_CPU_VARIANTS.
get_property(_airlock_done GLOBAL PROPERTY AIRLOCK_ADD_DEPS_OVERRIDE)
if(NOT _airlock_done)
  set_property(GLOBAL PROPERTY AIRLOCK_ADD_DEPS_OVERRIDE TRUE)
  function(add_dependencies target)
    set(_keep)
    foreach(dep ${ARGN})
      if(target STREQUAL "ggml" AND dep MATCHES "^ggml-cpu-(.+)$"
         AND NOT CMAKE_MATCH_1 IN_LIST AIRLOCK_CPU_VARIANTS)
        message(STATUS "airlock: not building ${dep} (not in AIRLOCK_CPU_VARIANTS)")
      else()
        list(APPEND _keep ${dep})
      endif()
    endforeach()
    if(_keep)
      _add_dependencies(${target} ${_keep})
    endif()
  endfunction()
endif()
"""

_OUR_LIBS = re.compile(r"^lib(llama|ggml|mtmd)[\w.-]*\.so")

# In a CUDA engine's cache entry, next to bin/ and lib/: the NVIDIA wheels the build fetched
# (bundler.engine.cuda.RuntimeWheel), so a cache hit reports the same facts as the cold build.
CUDA_WHEELS_FILE = "cuda-wheels.json"

WheelRecord = tuple["list[RuntimeWheel] | None", "str | None"]
"""The NVIDIA wheels a CUDA engine's libraries came from (None: unknown), and a note on how
they were established (None: recorded by the build itself)."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class EngineBuild:
    """A finished engine build: ``root`` holds ``bin/`` and ``lib/``; manifest properties."""

    root: Path
    properties: dict[str, Any]
    log: Path
    cached: bool = False
    seconds: float = 0.0
    cold_seconds: float | None = None
    files: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- CPU variants


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags of the first processor in ``cpuinfo``."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def best_variant(flags: Iterable[str]) -> str:
    """The x86 variant ggml would load among all 14 for a CPU with ``/proc/cpuinfo`` flags.

    Uses ggml's own feature-bit scoring, shared with the far side's selection
    (``runtime.variants``), so the build machine and the hosts agree on what "best" means.
    """
    features = variants.cpu_features("x86_64", list(flags))
    return max(ALL_X86_VARIANTS, key=lambda v: variants.variant_score("x86_64", v, features) or 0)


def default_variants() -> list[str]:
    """The one variant list used by tests and the demo: baseline plus this CPU's best."""
    best = best_variant(cpu_flags())
    return ["x64"] if best == "x64" else ["x64", best]


def resolve_variants(variants: Sequence[str] | Literal["all"]) -> list[str]:
    """Validate a variant list (or ``"all"``) and return it in ggml's order.

    Raises:
        UsageError: an unknown variant name or an empty list.
    """
    if variants == "all":
        return list(ALL_X86_VARIANTS)
    wanted = list(variants)
    unknown = [v for v in wanted if v not in ALL_X86_VARIANTS]
    if unknown or not wanted:
        raise UsageError(
            "unknown CPU variant(s): " + ", ".join(unknown) if unknown else "no CPU variant",
            hint="choose 'all' or some of: " + ", ".join(ALL_X86_VARIANTS),
        )
    return [v for v in ALL_X86_VARIANTS if v in wanted]


# --------------------------------------------------------------------------- cmake flags


def engine_cmake_flags(variants: Sequence[str], cuda: CudaOptions | None) -> list[str]:
    """The cmake cache flags for a relocatable llama-server with CPU variant modules.

    Pure: the same inputs give the same list; it is recorded in the manifest and is part of
    the build cache key. The include file that limits the built variants and keeps ggml
    shared is passed separately (its path differs per machine; its text is in the key).
    """
    rpath = "$ORIGIN/../lib;$ORIGIN/cuda" if cuda else "$ORIGIN/../lib"
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        # llama.cpp, common and mtmd static (linked into llama-server), ggml shared
        "-DBUILD_SHARED_LIBS=OFF",
        "-DAIRLOCK_SHARED_GGML=ON",
        "-DGGML_BACKEND_DL=ON",
        "-DGGML_NATIVE=OFF",
        "-DGGML_CPU_ALL_VARIANTS=ON",
        "-DAIRLOCK_CPU_VARIANTS=" + ";".join(variants),
        "-DGGML_CCACHE=OFF",
        # ggml's own thread pool: no libgomp needed on the target host
        "-DGGML_OPENMP=OFF",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        # no web UI: neither an npm build nor the prebuilt download from the HF bucket
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        # no HTTPS client in the server: it never downloads models
        "-DLLAMA_OPENSSL=OFF",
        "-DFETCHCONTENT_FULLY_DISCONNECTED=ON",
        "-DCMAKE_SKIP_BUILD_RPATH=OFF",
        "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
        "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
        "-DCMAKE_INSTALL_RPATH=" + rpath,
    ]
    if cuda is not None:
        flags += [
            "-DGGML_CUDA=ON",
            "-DCMAKE_CUDA_ARCHITECTURES=" + ";".join(cuda.architectures),
            # the toolkit's own CUB, never a git clone of CCCL during the build
            "-DGGML_CUDA_CUB_3DOT2=OFF",
        ]
        if not cuda.vmm:
            flags.append("-DGGML_CUDA_NO_VMM=ON")
        if cuda.nvcc:
            flags.append("-DCMAKE_CUDA_COMPILER=" + cuda.nvcc)
    else:
        flags.append("-DGGML_CUDA=OFF")
    return flags


def engine_targets(variants: Sequence[str], cuda: CudaOptions | None) -> list[str]:
    targets = ["llama-server", *(f"ggml-cpu-{v}" for v in variants)]
    if cuda is not None:
        targets.append("ggml-cuda")
    return targets


# --------------------------------------------------------------------------- toolchain


Compiler = Literal["portable", "system"]
"""``portable`` (the default): zig cc for the glibc 2.28 floor with a static libc++ kept
private to each ELF file (:mod:`bundler.engine.portable`), checked against the floor.
``system``: the build machine's ``cc``/``c++`` (``$CC``), linked against its own glibc and
libstdc++; the audit records the levels it needs (``glibc_min``, ``glibcxx_min``) and hosts
below them are refused before any transfer (bench/runtime.py's comparison build, and CUDA
engines: nvcc's objects need the system C++ library)."""


def toolchain(zig: Toolchain | None = None) -> dict[str, str]:
    """Compiler and cmake versions (part of every build key)."""
    tools = {
        "compiler": zig.compiler if zig else _compiler_id(os.environ.get("CC", "cc")),
        "cmake": _first_line(["cmake", "--version"]),
        "arch": platform.machine(),
    }
    if zig is not None:
        tools["toolchain_sha256"] = zig.wrapper_sha256
    return tools


def _zig(compiler: Compiler) -> Toolchain | None:
    if compiler not in ("portable", "system"):
        raise UsageError(f"unknown compiler {compiler!r}", hint="use 'portable' or 'system'")
    return portable.zig_toolchain() if compiler == "portable" else None


def _compiler_id(cc: str) -> str:
    out = _first_line([cc, "--version"])
    m = re.search(r"\b(\d+\.\d+\.\d+)\b", out)
    name = (
        "clang" if "clang" in out.lower() else "gcc" if "gcc" in out.lower() or "GCC" in out else cc
    )
    return f"{name} {m.group(1)}" if m else out


def compiler_display(compiler_id: str) -> str:
    """``gcc 12.2.0`` for Debian's ``cc 12.2.0`` (the cache key keeps the raw id)."""
    name, _, version = compiler_id.partition(" ")
    if name in ("cc", "c++", "g++") and version:
        probe = subprocess.run(
            [name, "--version"], capture_output=True, text=True, check=False
        ).stdout
        if "Free Software Foundation" in probe:
            return f"gcc {version}"
    return compiler_id


def _first_line(argv: list[str], *, last: bool = False) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    except OSError as e:
        raise BuildError(
            f"{argv[0]} is not installed: {e}", hint="run: bash .ci/setup (installs the toolchain)"
        ) from e
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]) if lines else "unknown"


def isolation_prefix() -> list[str]:
    """``unshare -n`` (a network namespace with no interfaces) where the host allows it."""
    for argv in (["unshare", "-n"], ["unshare", "-rn"]):
        try:
            ok = subprocess.run([*argv, "true"], capture_output=True, check=False).returncode == 0
        except OSError:
            ok = False
        if ok:
            return argv
    return []


def run_logged(
    argv: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    what: str,
) -> None:
    # progress (done/total from the build tool's lines) and no silence while it runs
    rc = buildprogress.run_with_progress(argv, log, label=what, cwd=cwd, env=env)
    if rc != 0:
        raise BuildError(
            f"{what} failed (exit {rc})",
            hint="the compiler output above is the end of the log; fix the toolchain and rebuild",
            problems=log_tail(log).splitlines(),
        )


# --------------------------------------------------------------------------- engine build


def build_engine(
    source: SourceArchive,
    *,
    variants: Sequence[str] | Literal["all"],
    cuda: CudaOptions | None,
    cache_dir: Path,
    log_dir: Path | None = None,
    jobs: int = 2,
    index_url: str | None = None,
    compiler: Compiler = "portable",
) -> EngineBuild:
    """Build (or reuse from the cache) llama-server and its modules from ``source``.

    ``compiler="portable"`` (the default) builds for the glibc 2.28 floor and checks every
    file against it. ``compiler="system"`` builds with the build machine's compiler and
    skips the floor check: the audit records what it needs (bench/runtime.py's comparison
    build, and CUDA engines, which must use it).

    Raises:
        BuildError: cmake or the compiler failed (with the log's tail and its path), the
            result is not relocatable, or a file needs more than the glibc floor.
        UsageError: unknown variant names, or a CUDA engine with the portable toolchain.
    """
    if cuda is not None and compiler == "portable":
        # nvcc compiles the CUDA module with the system's gcc and libstdc++ headers, whose
        # objects cannot link with zig's libc++
        raise UsageError(
            "a CUDA engine cannot be built with the portable toolchain",
            hint="build it with compiler='system' (bundler.pipeline does)",
        )
    chosen = resolve_variants(variants)
    flags = engine_cmake_flags(chosen, cuda)
    zig = _zig(compiler)
    tools = toolchain(zig)
    if cuda is not None:
        tools["nvcc"] = _first_line([cuda.nvcc or "nvcc", "--version"], last=True)
    inputs: dict[str, Any] = {
        "kind": "engine",
        "source_sha256": source.sha256,
        "flags": flags,
        "variants": chosen,
        "targets": engine_targets(chosen, cuda),
        "cuda": _cuda_inputs(cuda),
        **tools,
        "cmake_include_sha256": hashlib.sha256(_ENGINE_CMAKE.encode()).hexdigest(),
        "recipe": 1,
    }
    cache = BuildCache(cache_dir)
    env = {**os.environ, **zig.env} if zig else None

    def builder(out: Path, log: Path) -> None:
        buildprogress.announce(
            "llama.cpp: llama-server with CPU variants " + ", ".join(chosen),
            len(chosen),
            jobs=jobs,
            history=_cold_builds(cache),
        )
        wheels: list[Path] = []
        if cuda is not None:
            # fetched first: a missing wheel fails in seconds, not after the CUDA compile
            wheels = cudalib.download_cuda_wheels(cuda, out / "_cuda-wheels", index_url=index_url)
            facts = [cudalib.runtime_wheel(w, index_url=index_url) for w in wheels]
            _write_wheel_record(out, facts, None)
        tree = source_tree(source, cache_dir=cache_dir) / "vendor" / "llama.cpp"
        build_dir = out / "_build"
        include = out / "_airlock-engine.cmake"
        include.write_text(_ENGINE_CMAKE)
        prefix = isolation_prefix()
        with open(log, "ab") as fh:
            fh.write(f"# network isolation: {' '.join(prefix) or 'none available'}\n".encode())
        commit = source.llama_cpp_commit
        sdk_flags: list[str] = []
        if cuda is not None:
            sdk_flags = cudalib.cuda_sdk_flags(cudalib.extract_cuda_sdk(wheels, out / "_cuda-sdk"))
        configure = [
            *prefix,
            "cmake",
            "-S",
            str(tree),
            "-B",
            str(build_dir),
            *(["-G", "Ninja"] if shutil.which("ninja") else []),
            *flags,
            *(zig.cmake_flags() if zig else []),
            "-DCMAKE_PROJECT_INCLUDE=" + str(include),
            "-DLLAMA_BUILD_COMMIT=" + (commit[:9] if commit != "unknown" else "unknown"),
            "-DLLAMA_BUILD_NUMBER=0",
            *sdk_flags,
        ]
        run_logged(configure, log, env=env, what="cmake configure of llama.cpp")
        build = [
            *prefix,
            "cmake",
            "--build",
            str(build_dir),
            "-j",
            str(jobs),
            "--target",
            *engine_targets(chosen, cuda),
        ]
        run_logged(build, log, env=env, what="llama.cpp build (" + ", ".join(chosen) + ")")
        _collect(build_dir / "bin", out, chosen, cuda)
        if cuda is not None:
            cudalib.collect_cuda_runtime(wheels, out / "lib" / "cuda")
            shutil.rmtree(out / "_cuda-wheels")
            shutil.rmtree(out / "_cuda-sdk")
        shutil.rmtree(build_dir)
        include.unlink()
        check_relocatable(out)

    entry = cache.build("engine", inputs, builder)
    copy_log(entry, log_dir, "engine-build.log")
    wheels: WheelRecord = (None, None)
    if cuda is not None:
        wheels = _read_wheel_record(entry.path) or _recover_wheel_record(entry, cuda, index_url)
    result = _engine_result(entry, source, chosen, flags, cuda, tools, wheels)
    if zig is not None:
        elfaudit.require_floor(
            elfaudit.read_files(entry.path, result.files), f"the engine build {entry.key[:12]}"
        )
    return result


def _cold_builds(cache: BuildCache) -> list[tuple[int, float]]:
    """(variant count, seconds) of the cold CPU engine builds in the cache, newest first."""
    found: list[tuple[float, int, float]] = []
    for path in cache.entries("engine"):
        entry = CacheEntry("engine", path.name, path, {}, hit=True, seconds=0.0)
        try:
            inputs = json.loads((path / "inputs.json").read_text())
        except (OSError, ValueError):
            continue
        seconds = entry.cold_seconds
        if seconds and not inputs.get("cuda") and isinstance(inputs.get("variants"), list):
            found.append((path.stat().st_mtime, len(inputs["variants"]), seconds))
    return [(n, s) for _, n, s in sorted(found, reverse=True)]


def _write_wheel_record(entry: Path, wheels: list[RuntimeWheel] | None, note: str | None) -> None:
    data = {"wheels": None if wheels is None else [w.as_dict() for w in wheels], "note": note}
    tmp = entry / f".{CUDA_WHEELS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, entry / CUDA_WHEELS_FILE)


def _read_wheel_record(entry: Path) -> WheelRecord | None:
    """The entry's wheel record, or None for an entry cached before it was kept."""
    try:
        data = json.loads((entry / CUDA_WHEELS_FILE).read_text())
        wheels = data["wheels"]
        facts = None if wheels is None else [RuntimeWheel.from_dict(w) for w in wheels]
        note = data.get("note")
        return facts, None if note is None else str(note)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _recover_wheel_record(
    entry: CacheEntry, cuda: CudaOptions, index_url: str | None
) -> WheelRecord:
    """The wheel facts for a CUDA engine cached before airlock recorded them.

    Its cache key is unchanged (the inputs are), so instead of a 90-minute rebuild the
    wheels are fetched again for the same requirements: if every library the entry carries
    is byte-identical to theirs, their facts describe the carried bytes and are kept in the
    entry. If not (NVIDIA published a newer patch release since), the facts stay unknown,
    recorded so, and the note says how to get them (rebuild). A failed fetch is not
    recorded: the next build tries again.
    """
    reqs = " ".join(cuda.wheel_requirements())
    old = "this cached engine was built by an airlock that did not record its CUDA wheels"
    console.info(
        f"cached engine {entry.key[:12]} predates the CUDA wheel record: fetching {reqs} "
        "again to match its libraries against them"
    )
    with tempfile.TemporaryDirectory(
        prefix=f".wheels-{entry.key[:16]}-", dir=entry.path.parent
    ) as t:
        try:
            fetched = cudalib.download_cuda_wheels(cuda, Path(t), index_url=index_url)
        except FetchError as e:
            note = f"{old}, and fetching {reqs} again to establish them failed: {e.message}"
            console.warn(note)
            return None, note
        problems = cudalib.carried_mismatches(fetched, entry.path / "lib" / "cuda")
        if problems:
            note = (
                f"{old}; the wheels fetched again for {reqs} do not match the carried "
                f"libraries ({'; '.join(problems)}); delete the engine cache entry "
                f"{entry.kind}/{entry.key} to rebuild it with its wheels recorded"
            )
            console.warn(note)
            facts = None
        else:
            note = (
                f"{old}; established afterwards: the wheels fetched again for {reqs} hold "
                "byte-identical copies of every carried library"
            )
            facts = [cudalib.runtime_wheel(w, index_url=index_url) for w in fetched]
    try:
        _write_wheel_record(entry.path, facts, note)
    except OSError:
        pass  # a read-only cache: the facts are still reported for this build
    return facts, note


def _cuda_inputs(cuda: CudaOptions | None) -> Any:
    if cuda is None:
        return None
    return {
        "architectures": list(cuda.architectures),
        "cuda_version": cuda.cuda_version,
        "wheels": cuda.wheel_requirements(),
        "vmm": cuda.vmm,
    }


def _collect(bin_dir: Path, out: Path, variants: Sequence[str], cuda: CudaOptions | None) -> None:
    """Copy llama-server and the shared libraries, one regular file per SONAME."""
    (out / "bin").mkdir()
    (out / "lib").mkdir()
    shutil.copy2(bin_dir / "llama-server", out / "bin" / "llama-server")
    for so in sorted(bin_dir.glob("lib*.so*")):
        if so.is_symlink() or not so.is_file():
            continue
        name = _soname(so) or so.name
        if name.startswith(("libggml-cpu-", "libggml-cuda")):
            # backend modules are dlopen()ed by file name: ggml looks for
            # libggml-<backend>-*.so exactly, never a versioned name
            name = name.split(".so")[0] + ".so"
        if (
            name.startswith("libggml-cpu-")
            and name.removeprefix("libggml-cpu-").split(".so")[0] not in variants
        ):
            continue
        shutil.copy2(so, out / "lib" / name)
    missing = [
        f"libggml-cpu-{v}.so"
        for v in variants
        if not (out / "lib" / f"libggml-cpu-{v}.so").exists()
    ]
    if cuda is not None and not (out / "lib" / "libggml-cuda.so").exists():
        missing.append("libggml-cuda.so")
    if missing:
        raise BuildError(
            "the build finished but did not produce " + ", ".join(missing),
            hint="the vendored llama.cpp may name its CPU modules differently; check the log",
        )


def _readelf_dynamic(path: Path) -> list[tuple[str, str]]:
    out = subprocess.run(
        ["readelf", "-d", str(path)], capture_output=True, text=True, check=False
    ).stdout
    rows = []
    for line in out.splitlines():
        m = re.search(r"\((\w+)\)\s+.*?\[(.*)\]", line)
        if m:
            rows.append((m.group(1), m.group(2)))
    return rows


def _soname(path: Path) -> str | None:
    for tag, value in _readelf_dynamic(path):
        if tag == "SONAME":
            return value
    return None


def check_relocatable(root: Path) -> None:
    """Every ELF file finds llama.cpp's libraries through an ``$ORIGIN`` run path.

    Raises:
        BuildError: listing every file with an absolute run path, no run path, or a
            NEEDED llama/ggml library missing from ``lib/``.
    """
    problems = []
    libs = {p.name for p in (root / "lib").glob("*.so*")}
    cuda_libs = {p.name for p in (root / "lib" / "cuda").glob("*.so*")}
    for elf in [root / "bin" / "llama-server", *sorted((root / "lib").glob("*.so*"))]:
        dyn = _readelf_dynamic(elf)
        paths = [v for t, v in dyn if t in ("RUNPATH", "RPATH")]
        needed = [v for t, v in dyn if t == "NEEDED"]
        ours = [n for n in needed if _OUR_LIBS.match(n)]
        rel = elf.relative_to(root)
        if ours and not paths:
            problems.append(f"{rel}: no run path, needs {', '.join(ours)}")
        for p in paths:
            for entry in p.split(":"):
                if not entry.startswith("$ORIGIN"):
                    problems.append(f"{rel}: run path entry {entry!r} is not under $ORIGIN")
        problems += [f"{rel}: needs {n}, not in lib/" for n in ours if n not in libs]
        carried = [n for n in needed if cudalib.RUNTIME_LIBRARY.match(n)]
        problems += [f"{rel}: needs {n}, not in lib/cuda/" for n in carried if n not in cuda_libs]
    if problems:
        raise BuildError(
            "the engine build is not relocatable",
            hint="the cmake flags must set CMAKE_INSTALL_RPATH='$ORIGIN/../lib'",
            problems=problems,
        )


def _engine_result(
    entry: CacheEntry,
    source: SourceArchive,
    variants: Sequence[str],
    flags: Sequence[str],
    cuda: CudaOptions | None,
    tools: Mapping[str, str],
    wheels: WheelRecord = (None, None),
) -> EngineBuild:
    files = tuple(
        sorted(
            str(p.relative_to(entry.path))
            for p in entry.path.rglob("*")
            if p.is_file()
            and p.parts[len(entry.path.parts)] in ("bin", "lib")
            # builds cached before the filter also hold libnvblas: not staged
            and (p.parent.name != "cuda" or cudalib.RUNTIME_LIBRARY.match(p.name))
        )
    )
    props = engine_properties(source, variants, flags, cuda, tools, files, wheels)
    # what a host must have: the newest symbol versions any carried ELF file needs
    facts = elfaudit.read_files(entry.path, files)
    props["glibc_min"] = elfaudit.highest(facts, "GLIBC")
    props["glibcxx_min"] = elfaudit.highest(facts, "GLIBCXX")
    return EngineBuild(
        root=entry.path,
        properties=props,
        log=entry.log,
        cached=entry.hit,
        seconds=entry.seconds,
        cold_seconds=entry.cold_seconds,
        files=files,
    )


def engine_properties(
    source: SourceArchive,
    variants: Sequence[str],
    flags: Sequence[str],
    cuda: CudaOptions | None,
    tools: Mapping[str, str],
    files: Sequence[str] = (),
    wheels: WheelRecord = (None, None),
) -> dict[str, Any]:
    """The manifest's ``components.engine.properties`` (agreed keys, docs/FORMAT.md).

    ``wheels`` are the NVIDIA wheels the carried CUDA libraries came from (exact versions,
    files and sha256) and a note when they were established after the build or are unknown.
    """
    cuda_props = None
    if cuda is not None:
        facts, note = wheels
        runtime_dir = CUDA_RUNTIME_DIR
        cuda_props = {
            "architectures": list(cuda.architectures),
            "cuda_version": cuda.cuda_version,
            "min_driver": cudalib.min_driver(cuda.cuda_version),
            "module": CUDA_MODULE,
            "runtime_dir": runtime_dir,
            "runtime_libraries": sorted("engine/" + f for f in files if f.startswith("lib/cuda/")),
            "runtime_wheels": cuda.wheel_requirements(),
            "runtime_wheel_files": None
            if facts is None
            else [
                {
                    **w.as_dict(),
                    "libraries": [f"{runtime_dir}/{lib}" for lib in w.libraries],
                }
                for w in facts
            ],
            "runtime_wheel_files_note": note,
            "nvcc": tools.get("nvcc", "unknown"),
            "vmm": cuda.vmm,
        }
    return {
        "llama_cpp_python": source.properties(),
        "llama_cpp_commit": source.llama_cpp_commit,
        "cmake_flags": list(flags),
        "cpu_variants": list(variants),
        "cuda": cuda_props,
        "compiler": compiler_display(tools["compiler"]),
        "cmake": tools["cmake"],
        "arch": tools["arch"],
        "server": ENGINE_SERVER,
        "lib_dir": ENGINE_LIB_DIR,
        # ggml looks for its backend modules next to the executable and in the working
        # directory: launch llama-server with this working directory.
        "backend_dir": ENGINE_LIB_DIR,
    }


def stage_engine(build: EngineBuild, dest_dir: Path) -> None:
    """Copy ``bin/`` and ``lib/`` of a build into ``dest_dir`` (the bundle's ``engine/``)."""
    for rel in build.files:
        src = build.root / rel
        dst = dest_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o755 if rel.startswith("bin/") else 0o644)
        os.replace(tmp, dst)


# --------------------------------------------------------------------------- python wheel


def wheel_cmake_args() -> str:
    """``CMAKE_ARGS`` for a portable llama-cpp-python wheel (never tuned to the build CPU).

    This sdist's CMakeLists installs a single ``ggml-cpu`` target into the wheel, not the
    ``ggml-cpu-<variant>`` modules of GGML_CPU_ALL_VARIANTS (they would be left out of the
    wheel), so the wheel is built for the x86-64 baseline: no AVX, runs on every CPU.
    """
    return " ".join(
        [
            "-DGGML_NATIVE=OFF",
            "-DGGML_BACKEND_DL=OFF",
            "-DGGML_CPU_ALL_VARIANTS=OFF",
            *(
                f"-DGGML_{isa}=OFF"
                for isa in ("SSE42", "AVX", "AVX2", "BMI2", "FMA", "F16C", "AVX512", "AVX_VNNI")
            ),
            "-DGGML_OPENMP=OFF",
            "-DGGML_CCACHE=OFF",
            "-DLLAMA_BUILD_UI=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_BUILD_SERVER=OFF",
            "-DLLAMA_BUILD_TOOLS=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
        ]
    )


def build_llama_cpp_python_wheel(
    source: SourceArchive,
    *,
    variants: Sequence[str] | Literal["all"] = ("x64",),
    cache_dir: Path,
    log_dir: Path | None = None,
    jobs: int = 2,
    compiler: Compiler = "portable",
) -> Path:
    """Build (or reuse) the portable llama-cpp-python wheel from ``source``.

    ``variants`` is validated but the wheel is always the x86-64 baseline (see
    :func:`wheel_cmake_args`); ``llama-server`` carries the fast variant modules. The
    pipeline passes the result to :func:`bundler.sources.wheelhouse.build_wheelhouse` in
    ``extra_wheels``. The wheel's tag is ``py3-none-linux_x86_64``: llama_cpp loads
    libllama through ctypes (no CPython ABI). Its native code is compiled with the
    portable toolchain like the engine and audited against the same glibc 2.28 floor.

    The build backend (scikit-build-core) comes from the package index in pip's isolated
    build environment; compiling llama.cpp itself needs no network.

    Raises:
        BuildError: the wheel build failed (with the log's tail and its path), or one of
            its libraries needs more than the glibc floor.
    """
    resolve_variants(variants)
    args = wheel_cmake_args()
    zig = _zig(compiler)
    inputs = {
        "kind": "wheel",
        "source_sha256": source.sha256,
        "cmake_args": args,
        **toolchain(zig),
        "recipe": 1,
    }

    def builder(out: Path, log: Path) -> None:
        env = dict(os.environ)
        if zig is not None:
            env.update(zig.env, CC=str(zig.cc), CXX=str(zig.cxx))
        env["CMAKE_ARGS"] = args
        env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs)
        env.pop("PIP_REQUIRE_VIRTUALENV", None)
        argv = [
            *_pip(),
            "wheel",
            "--verbose",  # the compiler output goes to the build log
            "--no-deps",
            "--no-binary",
            ":all:",
            "-w",
            str(out / "dist"),
            str(source.path),
        ]
        run_logged(argv, log, env=env, what="llama-cpp-python wheel build")

    entry = BuildCache(cache_dir).build("wheel", inputs, builder)
    copy_log(entry, log_dir, "llama-cpp-python-wheel.log")
    wheels = sorted((entry.path / "dist").glob("llama_cpp_python-*.whl"))
    if len(wheels) != 1:
        raise BuildError(
            f"{entry.path}/dist: expected one llama_cpp_python wheel, found {len(wheels)}"
        )
    if zig is not None:
        elfaudit.require_floor(elfaudit.read_wheel(wheels[0]), f"the wheel {wheels[0].name}")
    return wheels[0]


def _pip() -> list[str]:
    import sys

    return [sys.executable, "-m", "pip", "--disable-pip-version-check"]
