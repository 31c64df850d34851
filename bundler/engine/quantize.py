"""``llama-quantize`` from the engine's pinned llama.cpp source, and quantizing a GGUF with it.

The tool is a CMake target of the same vendored llama.cpp as ``llama-server``
(:mod:`bundler.engine.sdist`), built under the same cache rules (:mod:`bundler.engine.buildcache`:
keyed by the source digest, the flags and the toolchain; built without a network). It runs
on the build machine only, so it is one static executable for the x86-64 baseline: the
quantized bytes do not depend on the CPU that built or ran it. A quantized model is cached
by the input's sha256, the type and the tool's cache key.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler import console
from bundler.engine.buildcache import BuildCache, CacheEntry, copy_log

# the engine build's helpers: the same network isolation and logging for every llama.cpp tool
from bundler.engine.llamacpp import isolation_prefix, run_logged, toolchain
from bundler.engine.sdist import SourceArchive, source_tree
from bundler.errors import BuildError, ConvertError
from bundler.fsio import hash_file

__all__ = ["QuantizeTool", "Quantized", "build_quantize_tool", "quantize", "tool_types"]

TOOL = "llama-quantize"
OUTPUT = "model.gguf"


@dataclass(frozen=True)
class QuantizeTool:
    """A built ``llama-quantize``: its path, cache key and the types it lists."""

    path: Path
    key: str
    sha256: str
    types: tuple[str, ...]
    cached: bool


@dataclass(frozen=True)
class Quantized:
    """A quantized GGUF in the cache: ``path``, its size and sha256."""

    path: Path
    size: int
    sha256: str
    type: str
    cached: bool
    seconds: float


def quantize_cmake_flags() -> list[str]:
    """The cmake flags of the tool (pure; part of its cache key)."""
    return [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DGGML_BACKEND_DL=OFF",
        "-DGGML_NATIVE=OFF",
        "-DGGML_CPU_ALL_VARIANTS=OFF",
        *(
            f"-DGGML_{isa}=OFF"
            for isa in ("SSE42", "AVX", "AVX2", "BMI2", "FMA", "F16C", "AVX512", "AVX_VNNI")
        ),
        "-DGGML_OPENMP=OFF",
        "-DGGML_CCACHE=OFF",
        "-DGGML_CUDA=OFF",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_CURL=OFF",
        "-DFETCHCONTENT_FULLY_DISCONNECTED=ON",
    ]


def parse_types(help_text: str) -> tuple[str, ...]:
    """The type names in ``llama-quantize --help`` ("allowed quantization types"), in order."""
    _, _, table = help_text.partition("allowed quantization types")
    return tuple(re.findall(r"^\s+(?:\d+\s+or\s+)?([A-Z0-9_]+)\s+:", table, re.MULTILINE))


def tool_types(tool: Path) -> tuple[str, ...]:
    """The types the built tool lists (it prints its usage and exits 1 without arguments)."""
    out = subprocess.run(
        [str(tool), "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    return parse_types(out.stdout + out.stderr)


def build_quantize_tool(
    source: SourceArchive, *, cache_dir: Path, log_dir: Path | None = None, jobs: int = 2
) -> QuantizeTool:
    """Build (or reuse) ``llama-quantize`` from ``source``.

    Raises:
        BuildError: cmake or the compiler failed (with the log's tail and its path).
    """
    flags = quantize_cmake_flags()
    inputs: dict[str, Any] = {
        "kind": "llama-quantize",
        "source_sha256": source.sha256,
        "flags": flags,
        **toolchain(),
        "recipe": 1,
    }

    def builder(out: Path, log: Path) -> None:
        tree = source_tree(source, cache_dir=cache_dir) / "vendor" / "llama.cpp"
        build_dir = out / "_build"
        prefix = isolation_prefix()
        commit = source.llama_cpp_commit
        configure = [
            *prefix,
            "cmake",
            "-S",
            str(tree),
            "-B",
            str(build_dir),
            *(["-G", "Ninja"] if shutil.which("ninja") else []),
            *flags,
            "-DLLAMA_BUILD_COMMIT=" + (commit[:9] if commit != "unknown" else "unknown"),
            "-DLLAMA_BUILD_NUMBER=0",
        ]
        run_logged(configure, log, what="cmake configure of llama-quantize")
        build = [*prefix, "cmake", "--build", str(build_dir), "-j", str(jobs), "--target", TOOL]
        run_logged(build, log, what="llama-quantize build")
        (out / "bin").mkdir()
        shutil.copy2(build_dir / "bin" / TOOL, out / "bin" / TOOL)
        shutil.rmtree(build_dir)

    entry = BuildCache(cache_dir).build("quantize-tool", inputs, builder)
    copy_log(entry, log_dir, "llama-quantize-build.log")
    path = entry.path / "bin" / TOOL
    return QuantizeTool(
        path=path,
        key=entry.key,
        sha256=hash_file(path)[1],
        types=tool_types(path),
        cached=entry.hit,
    )


def quantize(
    tool: QuantizeTool,
    gguf: Path,
    *,
    input_sha256: str,
    qtype: str,
    cache_dir: Path,
    threads: int | None = None,
) -> Quantized:
    """Quantize ``gguf`` (sha256 ``input_sha256``) to ``qtype``, or reuse the cached result.

    Raises:
        ConvertError: the tool does not list ``qtype`` (the error lists what it does), or
            quantizing failed (with the tool's output).
    """
    if qtype not in tool.types:
        raise ConvertError(
            f"the pinned llama-quantize does not support the type {qtype!r}",
            hint="use one of: " + ", ".join(tool.types),
        )
    inputs = {
        "kind": "quantize",
        "input_sha256": input_sha256,
        "type": qtype,
        "tool": tool.key,
        "recipe": 1,
    }

    def builder(out: Path, log: Path) -> None:
        # The thread count only spreads rows over workers: each row is quantized alone, so
        # the bytes do not depend on it (tests compare two builds).
        n = threads or os.cpu_count() or 1
        argv = [*isolation_prefix(), str(tool.path), str(gguf), str(out / OUTPUT), qtype, str(n)]
        try:
            run_logged(argv, log, what=f"llama-quantize {qtype}")
        except BuildError as e:
            raise ConvertError(
                f"quantizing {gguf.name} to {qtype} failed",
                hint="some types (IQ1/IQ2, Q2_K_S) need an importance matrix; choose another "
                "type, or see the log",
                problems=e.problems,
            ) from e

    entry: CacheEntry = BuildCache(cache_dir).build("quantize", inputs, builder)
    path = entry.path / OUTPUT
    size, sha = hash_file(path)
    if not entry.hit:
        console.info(f"quantized to {qtype} in {entry.seconds:.1f} s")
    return Quantized(
        path=path, size=size, sha256=sha, type=qtype, cached=entry.hit, seconds=entry.seconds
    )
