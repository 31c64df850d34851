"""llama.cpp runtime build: variant choice, cmake flags, engine properties (pure parts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler import llamacpp
from bundler.cuda import CudaOptions
from bundler.errors import UsageError
from bundler.llamacpp import (
    ALL_X86_VARIANTS,
    best_variant,
    cpu_flags,
    engine_cmake_flags,
    engine_properties,
    resolve_variants,
)
from bundler.sdist import SourceArchive

ZEN3 = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2 popcnt".split()
ZEN4 = [
    *ZEN3,
    "avx512f",
    "avx512cd",
    "avx512vl",
    "avx512dq",
    "avx512bw",
    "avx512vbmi",
    "avx512_vnni",
    "avx512_bf16",
]
SPR = [*ZEN4, "amx_tile", "amx_int8", "avx_vnni"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], "x64"),
        (["sse4_2"], "sse42"),
        (["sse4_2", "avx"], "sandybridge"),
        (ZEN3, "haswell"),
        ([*ZEN3, "avx_vnni"], "alderlake"),
        ([*ZEN3, "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"], "skylakex"),
        (ZEN4, "zen4"),
        (SPR, "sapphirerapids"),
    ],
)
def test_best_variant_for_cpu_flags(flags: list[str], expected: str) -> None:
    assert best_variant(flags) == expected


def test_avx512_without_bw_is_not_skylakex() -> None:
    assert best_variant([*ZEN3, "avx512f"]) == "haswell"


def test_cpu_flags_reads_first_processor(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 bmi2\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "bmi2"}


def test_default_variants_are_baseline_plus_best_here() -> None:
    v = llamacpp.default_variants()
    assert v[0] == "x64"
    assert v[-1] == best_variant(cpu_flags())


def test_resolve_variants_all_is_every_x86_variant_in_ggml_order() -> None:
    assert resolve_variants("all") == list(ALL_X86_VARIANTS)
    assert len(ALL_X86_VARIANTS) == 14
    assert resolve_variants(["haswell", "x64"]) == ["x64", "haswell"]


def test_resolve_variants_rejects_unknown_names() -> None:
    with pytest.raises(UsageError, match="znver9"):
        resolve_variants(["x64", "znver9"])


def test_engine_flags_are_portable_relocatable_and_offline() -> None:
    flags = engine_cmake_flags(["x64", "haswell"], None)
    for wanted in (
        "-DGGML_BACKEND_DL=ON",
        "-DGGML_NATIVE=OFF",
        "-DGGML_CPU_ALL_VARIANTS=ON",
        "-DAIRLOCK_CPU_VARIANTS=x64;haswell",
        "-DBUILD_SHARED_LIBS=ON",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib",
        "-DGGML_CUDA=OFF",
    ):
        assert wanted in flags
    assert not any("NATIVE=ON" in f for f in flags)


def test_cuda_flags_architectures_and_runtime_rpath() -> None:
    cuda = CudaOptions(architectures=("80", "90"), cuda_version="12.4")
    flags = engine_cmake_flags(["x64"], cuda)
    assert "-DGGML_CUDA=ON" in flags
    assert "-DCMAKE_CUDA_ARCHITECTURES=80;90" in flags
    assert "-DGGML_CUDA_CUB_3DOT2=OFF" in flags  # no FetchContent of CCCL from GitHub
    assert "-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib;$ORIGIN/cuda" in flags
    assert "ggml-cuda" in llamacpp.engine_targets(["x64"], cuda)
    assert cuda.wheel_requirements() == [
        "nvidia-cuda-runtime-cu12==12.4.*",
        "nvidia-cublas-cu12==12.4.*",
    ]


def _source(commit: str = "0c1e57098bba43ac29e6e3b677cdceebdd22334f") -> SourceArchive:
    return SourceArchive(
        Path("/c/llama_cpp_python-0.3.36.tar.gz"),
        "0.3.36",
        "ab" * 32,
        "https://files.example/llama_cpp_python-0.3.36.tar.gz",
        commit,
    )


def test_engine_properties_use_the_agreed_keys() -> None:
    tools = {"compiler": "gcc 12.2.0", "cmake": "cmake version 3.25.1", "arch": "x86_64"}
    cuda = CudaOptions(architectures=("86",), cuda_version="12.4")
    props = engine_properties(
        _source(),
        ["x64", "haswell"],
        ["-DA=1"],
        cuda,
        tools,
        ["bin/llama-server", "lib/cuda/libcudart.so.12"],
    )
    assert props["llama_cpp_python"] == {
        "version": "0.3.36",
        "sdist": "llama_cpp_python-0.3.36.tar.gz",
        "sha256": "ab" * 32,
        "url": "https://files.example/llama_cpp_python-0.3.36.tar.gz",
    }
    assert props["llama_cpp_commit"] == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert props["cpu_variants"] == ["x64", "haswell"]
    assert props["server"] == "engine/bin/llama-server"
    assert props["lib_dir"] == "engine/lib"
    assert props["cuda"]["min_driver"] == "525.60.13"
    assert props["cuda"]["module"] == "engine/lib/libggml-cuda.so"
    assert props["cuda"]["runtime_libraries"] == ["engine/lib/cuda/libcudart.so.12"]
    assert props["cuda"]["runtime_wheels"] == cuda.wheel_requirements()
    assert engine_properties(_source(), ["x64"], [], None, tools)["cuda"] is None


def test_wheel_is_built_for_the_baseline_never_native() -> None:
    args = llamacpp.wheel_cmake_args().split()
    assert "-DGGML_NATIVE=OFF" in args
    for isa in ("AVX", "AVX2", "FMA", "F16C", "AVX512"):
        assert f"-DGGML_{isa}=OFF" in args
    assert not any(a.endswith("NATIVE=ON") or "march=native" in a for a in args)
