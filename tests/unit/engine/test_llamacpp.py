"""llama.cpp runtime build: variant choice, cmake flags, engine properties (pure parts)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from bundler.engine import cuda as cudalib
from bundler.engine import llamacpp
from bundler.engine.cuda import CudaOptions
from bundler.engine.llamacpp import (
    ALL_X86_VARIANTS,
    best_variant,
    cpu_flags,
    engine_cmake_flags,
    engine_properties,
    resolve_variants,
)
from bundler.engine.sdist import SourceArchive
from bundler.errors import FetchError, UsageError

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
        # llama.cpp linked into llama-server, ggml's libraries shared (the include keeps them)
        "-DBUILD_SHARED_LIBS=OFF",
        "-DAIRLOCK_SHARED_GGML=ON",
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


# --------------------------------------------------------------------------- CUDA wheel facts

CUBLAS_LIBS = {"libcublas.so.13": b"cublas 13.0.2.14", "libcublasLt.so.13": b"cublasLt 13.0.2.14"}


def _nvidia_wheel(dest: Path, name: str, version: str, libs: dict[str, bytes]) -> Path:
    dist = name.replace("-", "_")
    wheel = dest / f"{dist}-{version}-py3-none-manylinux_2_27_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for lib, data in libs.items():
            zf.writestr(f"nvidia/cu13/lib/{lib}", data)
        zf.writestr(f"{dist}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")
    return wheel


class FakeIndex:
    """pip download of NVIDIA's wheels: what the index serves now, and how often it was asked."""

    def __init__(self) -> None:
        self.cublas = ("13.0.2.14", CUBLAS_LIBS)
        self.calls = 0
        self.down = False

    def download(self, cuda: CudaOptions, dest: Path, *, index_url: str | None) -> list[Path]:
        self.calls += 1
        if self.down:
            raise FetchError("could not download the CUDA runtime wheels", hint="offline")
        dest.mkdir(parents=True, exist_ok=True)
        version, libs = self.cublas
        return [
            _nvidia_wheel(dest, "nvidia-cublas", version, libs),
            _nvidia_wheel(dest, "nvidia-cuda-runtime", "13.0.96", {"libcudart.so.13": b"rt"}),
        ]


@pytest.fixture
def fake_cuda_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeIndex:
    """build_engine with every tool faked (no cmake, no nvcc) but the cache and wheels real."""
    index = FakeIndex()
    tools = {"compiler": "gcc 12.2.0", "cmake": "cmake version 3.25.1", "arch": "x86_64"}

    def collect(bin_dir: Path, out: Path, variants: Any, cuda: Any) -> None:
        bin_dir.mkdir(parents=True)  # what cmake would have left in _build
        (out / "bin").mkdir()
        (out / "lib").mkdir()
        (out / "bin" / "llama-server").write_bytes(b"server")
        (out / "lib" / "libggml-cuda.so").write_bytes(b"module")

    monkeypatch.setattr(cudalib, "download_cuda_wheels", index.download)
    monkeypatch.setattr(llamacpp, "toolchain", lambda zig=None: dict(tools))
    monkeypatch.setattr(llamacpp, "_first_line", lambda argv, last=False: "V13.0.88")
    monkeypatch.setattr(llamacpp, "source_tree", lambda source, cache_dir: tmp_path / "src")
    monkeypatch.setattr(llamacpp, "isolation_prefix", lambda: [])
    monkeypatch.setattr(llamacpp, "run_logged", lambda *a, **kw: None)
    monkeypatch.setattr(llamacpp, "_collect", collect)
    monkeypatch.setattr(llamacpp, "check_relocatable", lambda root: None)
    return index


CUDA13 = CudaOptions(architectures=("90",), cuda_version="13.0", nvcc="/opt/nvcc", vmm=False)


def _build(cache: Path) -> llamacpp.EngineBuild:
    return llamacpp.build_engine(
        _source(),
        variants=["x64"],
        cuda=CUDA13,
        cache_dir=cache,
        index_url="https://idx/simple",
        compiler="system",
    )


def test_a_cuda_engine_with_the_portable_toolchain_is_refused(
    fake_cuda_build: FakeIndex, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="CUDA engine cannot be built with the portable"):
        llamacpp.build_engine(_source(), variants=["x64"], cuda=CUDA13, cache_dir=tmp_path)
    assert not (tmp_path / "engine").exists()


def test_the_cmake_include_text_is_part_of_the_cache_key(
    fake_cuda_build: FakeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _build(tmp_path / "cache")
    monkeypatch.setattr(llamacpp, "_ENGINE_CMAKE", llamacpp._ENGINE_CMAKE + "# changed\n")
    second = _build(tmp_path / "cache")
    assert not second.cached
    assert first.root != second.root


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cuda_build_records_the_exact_wheels_in_the_manifest_and_the_cache_entry(
    fake_cuda_build: FakeIndex, tmp_path: Path
) -> None:
    cold = _build(tmp_path / "cache")
    facts = cold.properties["cuda"]["runtime_wheel_files"]
    assert [(w["name"], w["version"], w["file"]) for w in facts] == [
        (
            "nvidia-cublas",
            "13.0.2.14",
            "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl",
        ),
        (
            "nvidia-cuda-runtime",
            "13.0.96",
            "nvidia_cuda_runtime-13.0.96-py3-none-manylinux_2_27_x86_64.whl",
        ),
    ]
    # the wheel's sha256: the digest of the very file pip downloaded, as the index lists it
    again = fake_cuda_build.download(CUDA13, tmp_path / "again", index_url=None)
    assert [w["sha256"] for w in facts] == [_digest(w) for w in again]
    assert facts[0]["libraries"] == [
        "engine/lib/cuda/libcublas.so.13",
        "engine/lib/cuda/libcublasLt.so.13",
    ]
    assert {w["index_url"] for w in facts} == {"https://idx/simple"}
    assert cold.properties["cuda"]["runtime_wheels"] == CUDA13.wheel_requirements()
    assert cold.properties["cuda"]["runtime_wheel_files_note"] is None
    record = json.loads((cold.root / llamacpp.CUDA_WHEELS_FILE).read_text())
    assert [w["sha256"] for w in record["wheels"]] == [w["sha256"] for w in facts]
    assert llamacpp.CUDA_WHEELS_FILE not in cold.files  # kept in the cache, never staged
    # a cache hit reports the same facts without fetching anything
    calls = fake_cuda_build.calls
    hit = _build(tmp_path / "cache")
    assert hit.cached and fake_cuda_build.calls == calls
    assert hit.properties["cuda"] == cold.properties["cuda"]


def test_resolved_wheels_do_not_change_the_engine_cache_key(
    fake_cuda_build: FakeIndex, tmp_path: Path
) -> None:
    first = _build(tmp_path / "a")
    fake_cuda_build.cublas = ("13.0.3.1", {**CUBLAS_LIBS, "libcublas.so.13": b"newer"})
    second = _build(tmp_path / "b")
    assert first.root.name == second.root.name
    assert second.properties["cuda"]["runtime_wheel_files"][0]["version"] == "13.0.3.1"


def test_old_cache_entry_gets_its_wheels_from_a_byte_identical_refetch(
    fake_cuda_build: FakeIndex, tmp_path: Path
) -> None:
    cold = _build(tmp_path / "cache")
    (cold.root / llamacpp.CUDA_WHEELS_FILE).unlink()  # as cached by an older airlock
    old = _build(tmp_path / "cache")
    assert old.cached and fake_cuda_build.calls == 2  # fetched again, not rebuilt
    cuda = old.properties["cuda"]
    assert cuda["runtime_wheel_files"] == cold.properties["cuda"]["runtime_wheel_files"]
    assert "byte-identical" in cuda["runtime_wheel_files_note"]
    assert _build(tmp_path / "cache").properties["cuda"] == cuda  # kept in the entry
    assert fake_cuda_build.calls == 2
    assert not list((tmp_path / "cache" / "engine").glob(".wheels-*"))


def test_old_cache_entry_whose_libraries_the_index_no_longer_serves_says_unknown(
    fake_cuda_build: FakeIndex, tmp_path: Path
) -> None:
    cold = _build(tmp_path / "cache")
    (cold.root / llamacpp.CUDA_WHEELS_FILE).unlink()
    fake_cuda_build.cublas = ("13.0.3.1", {**CUBLAS_LIBS, "libcublas.so.13": b"newer"})
    old = _build(tmp_path / "cache")
    cuda = old.properties["cuda"]
    assert cuda["runtime_wheel_files"] is None  # never the newer wheel's facts
    assert "libcublas.so.13 differs" in cuda["runtime_wheel_files_note"]
    assert f"engine/{cold.root.name} to rebuild" in cuda["runtime_wheel_files_note"]
    assert _build(tmp_path / "cache").properties["cuda"] == cuda
    assert fake_cuda_build.calls == 2  # the verdict is kept: no download on every build


def test_old_cache_entry_still_builds_offline_and_retries_later(
    fake_cuda_build: FakeIndex, tmp_path: Path
) -> None:
    cold = _build(tmp_path / "cache")
    (cold.root / llamacpp.CUDA_WHEELS_FILE).unlink()
    fake_cuda_build.down = True
    offline = _build(tmp_path / "cache")
    assert offline.properties["cuda"]["runtime_wheel_files"] is None
    assert "failed" in offline.properties["cuda"]["runtime_wheel_files_note"]
    fake_cuda_build.down = False
    online = _build(tmp_path / "cache")
    assert online.properties["cuda"]["runtime_wheel_files"] is not None
