"""llama.cpp runtime build: variant choice, cmake flags, CUDA path, sdist pinning (pure parts)."""

from __future__ import annotations

import functools
import http.server
import io
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from bundler import llamacpp
from bundler.errors import BuildError, FetchError, UsageError
from bundler.llamacpp import (
    ALL_X86_VARIANTS,
    CudaOptions,
    SourceArchive,
    best_variant,
    collect_cuda_runtime,
    cpu_flags,
    engine_cmake_flags,
    engine_properties,
    find_in_simple_index,
    llama_cpp_commit,
    min_driver,
    resolve_variants,
)

COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
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


@pytest.mark.parametrize(("version", "driver"), [("12.4", "525.60.13"), ("11.8", "450.80.02")])
def test_min_driver_table(version: str, driver: str) -> None:
    assert min_driver(version) == driver


def test_min_driver_unknown_major_is_refused() -> None:
    with pytest.raises(UsageError, match=r"CUDA 9\.2"):
        min_driver("9.2")


def test_cuda_runtime_libraries_are_collected_from_nvidia_wheels(tmp_path: Path) -> None:
    wheel = tmp_path / "nvidia_cublas_cu12-12.4.5.8-py3-none-manylinux2014_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("nvidia/cublas/lib/libcublas.so.12", b"ELF-cublas")
        zf.writestr("nvidia/cublas/lib/libcublasLt.so.12", b"ELF-cublasLt")
        zf.writestr("nvidia/cublas/include/cublas.h", b"header")
        zf.writestr("nvidia/cublas/__init__.py", b"")
        zf.writestr("nvidia_cublas_cu12-12.4.5.8.dist-info/METADATA", b"Name: x")
    out = tmp_path / "engine" / "lib" / "cuda"
    assert collect_cuda_runtime([wheel], out) == ["libcublas.so.12", "libcublasLt.so.12"]
    assert (out / "libcublas.so.12").read_bytes() == b"ELF-cublas"
    assert sorted(p.name for p in out.iterdir()) == ["libcublas.so.12", "libcublasLt.so.12"]


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


def test_simple_index_json_page_gives_url_and_digest() -> None:
    doc = {
        "files": [
            {
                "filename": "llama_cpp_python-0.3.35.tar.gz",
                "url": "a/x35.tar.gz",
                "hashes": {"sha256": "1" * 64},
            },
            {
                "filename": "llama_cpp_python-0.3.36.tar.gz",
                "url": "../../f/x36.tar.gz",
                "hashes": {"sha256": "2" * 64},
            },
        ]
    }
    url, digest = find_in_simple_index(
        json.dumps(doc).encode(),
        "application/vnd.pypi.simple.v1+json",
        "https://mirror.example/simple/llama-cpp-python/",
        "0.3.36",
    )
    assert url == "https://mirror.example/f/x36.tar.gz"
    assert digest == "2" * 64


def test_simple_index_html_page_reads_the_hash_fragment() -> None:
    html = (
        b'<html><body><a href="/p/llama_cpp_python-0.3.36.tar.gz#sha256='
        + b"3" * 64
        + b'">llama_cpp_python-0.3.36.tar.gz</a></body></html>'
    )
    url, digest = find_in_simple_index(
        html, "text/html", "http://127.0.0.1:9/simple/llama-cpp-python/", "0.3.36"
    )
    assert url == "http://127.0.0.1:9/p/llama_cpp_python-0.3.36.tar.gz"
    assert digest == "3" * 64


def test_version_missing_from_index_is_a_fetch_error() -> None:
    with pytest.raises(FetchError, match=r"0\.9\.99"):
        find_in_simple_index(
            b"<html></html>", "text/html", "http://x/simple/llama-cpp-python/", "0.9.99"
        )


def _sdist(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_commit_comes_from_the_vendored_submodule_head(tmp_path: Path) -> None:
    sdist = _sdist(
        tmp_path,
        {
            "llama_cpp_python-0.3.36/.git/modules/vendor/llama.cpp/HEAD": COMMIT.encode() + b"\n",
            "llama_cpp_python-0.3.36/CHANGELOG.md": b"- update to ggml-org/llama.cpp@deadbee\n",
        },
    )
    assert llama_cpp_commit(sdist) == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"


def test_commit_falls_back_to_changelog_then_unknown(tmp_path: Path) -> None:
    sdist = _sdist(
        tmp_path,
        {"llama_cpp_python-0.3.36/CHANGELOG.md": b"## [0.3.36]\n- ggml-org/llama.cpp@0c1e57098\n"},
    )
    assert llama_cpp_commit(sdist) == "0c1e57098"
    (tmp_path / "b").mkdir()
    assert (
        llama_cpp_commit(_sdist(tmp_path / "b", {"llama_cpp_python-0.3.36/README.md": b"x"}))
        == "unknown"
    )


def test_fetch_sdist_rejects_bytes_that_differ_from_the_index_digest(tmp_path: Path) -> None:
    served = tmp_path / "srv"
    (served / "llama-cpp-python").mkdir(parents=True)
    sdist = _sdist(tmp_path, {"llama_cpp_python-0.3.36/README.md": b"x"})
    (served / "llama_cpp_python-0.3.36.tar.gz").write_bytes(sdist.read_bytes())
    (served / "llama-cpp-python" / "index.html").write_text(
        '<a href="../llama_cpp_python-0.3.36.tar.gz#sha256=' + "0" * 64 + '">x</a>'
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(FetchError, match="does not match"):
            llamacpp.fetch_sdist(
                "0.3.36",
                cache_dir=tmp_path / "cache",
                index_url=f"http://127.0.0.1:{httpd.server_address[1]}/",
            )
    finally:
        httpd.shutdown()
    assert not list((tmp_path / "cache" / "sdist").glob("*.tar.gz"))


def test_wheel_is_built_for_the_baseline_never_native() -> None:
    args = llamacpp.wheel_cmake_args().split()
    assert "-DGGML_NATIVE=OFF" in args
    for isa in ("AVX", "AVX2", "FMA", "F16C", "AVX512"):
        assert f"-DGGML_{isa}=OFF" in args
    assert not any(a.endswith("NATIVE=ON") or "march=native" in a for a in args)


# --------------------------------------------------------------------------- CUDA toolkit


def test_cuda13_runtime_wheels_are_unsuffixed_and_need_driver_580() -> None:
    cuda = CudaOptions(architectures=("90",), cuda_version="13.0")
    assert cuda.wheel_requirements() == ["nvidia-cuda-runtime==13.0.*", "nvidia-cublas==13.0.*"]
    assert min_driver("13.0") == "580.65.06"


def test_nvcc_version_is_read_from_its_release_line() -> None:
    out = (
        "nvcc: NVIDIA (R) Cuda compiler driver\n"
        "Cuda compilation tools, release 13.0, V13.0.88\n"
        "Build cuda_13.0.r13.0/compiler.36424714_0\n"
    )
    assert llamacpp.parse_nvcc_version(out) == "13.0"
    with pytest.raises(BuildError, match="CUDA toolkit version"):
        llamacpp.parse_nvcc_version("command not found")


def _fake_nvcc(path: Path, release: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    path.chmod(0o755)
    return path


def test_find_nvcc_prefers_cudacxx_then_path_then_newest_toolkit(tmp_path: Path) -> None:
    prefix = tmp_path / "usr-local"
    old = _fake_nvcc(prefix / "cuda-12.4" / "bin" / "nvcc", "12.4")
    new = _fake_nvcc(prefix / "cuda-13.0" / "bin" / "nvcc", "13.0")
    on_path = _fake_nvcc(tmp_path / "bin" / "nvcc", "12.8")
    empty = str(tmp_path / "nothing")
    assert llamacpp.find_nvcc({"PATH": empty}, prefix=prefix) == str(new)
    assert llamacpp.find_nvcc({"PATH": str(on_path.parent)}, prefix=prefix) == str(on_path)
    assert llamacpp.find_nvcc({"CUDACXX": str(old), "PATH": empty}, prefix=prefix) == str(old)
    assert llamacpp.find_nvcc({"PATH": empty}, prefix=tmp_path / "none") is None


def test_cuda_options_take_the_toolkit_version_and_its_driver_stub(tmp_path: Path) -> None:
    nvcc = _fake_nvcc(tmp_path / "cuda-13.0" / "bin" / "nvcc", "13.0")
    opts = llamacpp.cuda_options(["90"], nvcc=str(nvcc))
    assert (opts.cuda_version, opts.nvcc, opts.vmm) == ("13.0", str(nvcc), False)
    assert "-DGGML_CUDA_NO_VMM=ON" in engine_cmake_flags(["x64"], opts)
    stub = tmp_path / "cuda-13.0" / "lib64" / "stubs" / "libcuda.so"
    stub.parent.mkdir(parents=True)
    stub.write_bytes(b"")
    opts = llamacpp.cuda_options(["90"], nvcc=str(nvcc))
    assert opts.vmm and "-DGGML_CUDA_NO_VMM=ON" not in engine_cmake_flags(["x64"], opts)


def test_cuda_enabled_without_a_toolkit_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(llamacpp, "find_nvcc", lambda: None)
    with pytest.raises(BuildError, match="no CUDA toolkit was found") as info:
        llamacpp.cuda_options(["90"])
    assert info.value.hint and "CUDACXX" in info.value.hint


def test_a_toolkit_without_a_driver_floor_is_refused_before_building(tmp_path: Path) -> None:
    nvcc = _fake_nvcc(tmp_path / "cuda-9.2" / "bin" / "nvcc", "9.2")
    with pytest.raises(UsageError, match=r"CUDA 9\.2"):
        llamacpp.cuda_options(["70"], nvcc=str(nvcc))


@pytest.mark.parametrize("tag", ["cu12-style", "cu13-style"])
def test_cuda_sdk_overlay_takes_headers_and_shared_libraries_only(tmp_path: Path, tag: str) -> None:
    pkg = "cublas" if tag == "cu12-style" else "cu13"
    major = "12" if tag == "cu12-style" else "13"
    names = [
        f"nvidia/{pkg}/include/cublas_v2.h",
        f"nvidia/{pkg}/include/sub/",
        f"nvidia/{pkg}/lib/libcublas.so.{major}",
        f"nvidia/{pkg}/lib/libcublasLt.so.{major}",
        f"nvidia/{pkg}/lib/libcudart_static.a",
        f"nvidia/{pkg}/include/../../evil.h",
        "nvidia_cublas-1.dist-info/RECORD",
    ]
    assert llamacpp.cuda_sdk_members(names) == [
        (f"nvidia/{pkg}/include/cublas_v2.h", "include/cublas_v2.h"),
        (f"nvidia/{pkg}/lib/libcublas.so.{major}", f"lib/libcublas.so.{major}"),
        (f"nvidia/{pkg}/lib/libcublasLt.so.{major}", f"lib/libcublasLt.so.{major}"),
    ]
    wheel = tmp_path / "nvidia_cublas.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in names:
            zf.writestr(name, b"" if name.endswith("/") else name.encode())
    sdk = llamacpp.extract_cuda_sdk([wheel], tmp_path / "sdk")
    flags = llamacpp.cuda_sdk_flags(sdk)
    assert flags == [
        f"-DCMAKE_CUDA_STANDARD_INCLUDE_DIRECTORIES={sdk / 'include'}",
        f"-DCUDA_cublas_LIBRARY={sdk / 'lib' / f'libcublas.so.{major}'}",
        f"-DCUDA_cublasLt_LIBRARY={sdk / 'lib' / f'libcublasLt.so.{major}'}",
    ]
    assert not (tmp_path / "evil.h").exists()


def test_cuda_sdk_without_cublas_is_a_build_error(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    with pytest.raises(BuildError, match=r"no libcublas\.so"):
        llamacpp.cuda_sdk_flags(tmp_path)
