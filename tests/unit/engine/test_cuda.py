"""The CUDA backend's toolkit, runtime wheels, driver floor and compile-time cuBLAS overlay."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from bundler.engine import cuda as cudalib
from bundler.engine.cuda import CudaOptions, collect_cuda_runtime, min_driver
from bundler.engine.llamacpp import engine_cmake_flags
from bundler.errors import BuildError, UsageError


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
        zf.writestr("nvidia/cublas/lib/libnvblas.so.12", b"ELF-nvblas")  # unused by ggml
        zf.writestr("nvidia/cublas/include/cublas.h", b"header")
        zf.writestr("nvidia/cublas/__init__.py", b"")
        zf.writestr("nvidia_cublas_cu12-12.4.5.8.dist-info/METADATA", b"Name: x")
    out = tmp_path / "engine" / "lib" / "cuda"
    assert collect_cuda_runtime([wheel], out) == ["libcublas.so.12", "libcublasLt.so.12"]
    assert (out / "libcublas.so.12").read_bytes() == b"ELF-cublas"
    assert sorted(p.name for p in out.iterdir()) == ["libcublas.so.12", "libcublasLt.so.12"]


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
    assert cudalib.parse_nvcc_version(out) == "13.0"
    with pytest.raises(BuildError, match="CUDA toolkit version"):
        cudalib.parse_nvcc_version("command not found")


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
    assert cudalib.find_nvcc({"PATH": empty}, prefix=prefix) == str(new)
    assert cudalib.find_nvcc({"PATH": str(on_path.parent)}, prefix=prefix) == str(on_path)
    assert cudalib.find_nvcc({"CUDACXX": str(old), "PATH": empty}, prefix=prefix) == str(old)
    assert cudalib.find_nvcc({"PATH": empty}, prefix=tmp_path / "none") is None


def test_cuda_options_take_the_toolkit_version_and_its_driver_stub(tmp_path: Path) -> None:
    nvcc = _fake_nvcc(tmp_path / "cuda-13.0" / "bin" / "nvcc", "13.0")
    opts = cudalib.cuda_options(["90"], nvcc=str(nvcc))
    assert (opts.cuda_version, opts.nvcc, opts.vmm) == ("13.0", str(nvcc), False)
    assert "-DGGML_CUDA_NO_VMM=ON" in engine_cmake_flags(["x64"], opts)
    stub = tmp_path / "cuda-13.0" / "lib64" / "stubs" / "libcuda.so"
    stub.parent.mkdir(parents=True)
    stub.write_bytes(b"")
    opts = cudalib.cuda_options(["90"], nvcc=str(nvcc))
    assert opts.vmm and "-DGGML_CUDA_NO_VMM=ON" not in engine_cmake_flags(["x64"], opts)


def test_cuda_enabled_without_a_toolkit_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cudalib, "find_nvcc", lambda: None)
    with pytest.raises(BuildError, match="no CUDA toolkit was found") as info:
        cudalib.cuda_options(["90"])
    assert info.value.hint and "CUDACXX" in info.value.hint


def test_a_toolkit_without_a_driver_floor_is_refused_before_building(tmp_path: Path) -> None:
    nvcc = _fake_nvcc(tmp_path / "cuda-9.2" / "bin" / "nvcc", "9.2")
    with pytest.raises(UsageError, match=r"CUDA 9\.2"):
        cudalib.cuda_options(["70"], nvcc=str(nvcc))


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
    assert cudalib.cuda_sdk_members(names) == [
        (f"nvidia/{pkg}/include/cublas_v2.h", "include/cublas_v2.h"),
        (f"nvidia/{pkg}/lib/libcublas.so.{major}", f"lib/libcublas.so.{major}"),
        (f"nvidia/{pkg}/lib/libcublasLt.so.{major}", f"lib/libcublasLt.so.{major}"),
    ]
    wheel = tmp_path / "nvidia_cublas.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in names:
            zf.writestr(name, b"" if name.endswith("/") else name.encode())
    sdk = cudalib.extract_cuda_sdk([wheel], tmp_path / "sdk")
    flags = cudalib.cuda_sdk_flags(sdk)
    assert flags == [
        f"-DCMAKE_CUDA_STANDARD_INCLUDE_DIRECTORIES={sdk / 'include'}",
        f"-DCUDA_cublas_LIBRARY={sdk / 'lib' / f'libcublas.so.{major}'}",
        f"-DCUDA_cublasLt_LIBRARY={sdk / 'lib' / f'libcublasLt.so.{major}'}",
    ]
    assert not (tmp_path / "evil.h").exists()


def test_cuda_sdk_without_cublas_is_a_build_error(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    with pytest.raises(BuildError, match=r"no libcublas\.so"):
        cudalib.cuda_sdk_flags(tmp_path)


def _nvidia_wheel(dest: Path, name: str, version: str, libs: dict[str, bytes]) -> Path:
    dist = name.replace("-", "_")
    wheel = dest / f"{dist}-{version}-py3-none-manylinux_2_27_x86_64.whl"
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        for lib, data in libs.items():
            zf.writestr(f"nvidia/cu13/lib/{lib}", data)
        zf.writestr("nvidia/cu13/include/cublas.h", b"header")
        zf.writestr(
            f"{dist}-{version}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nlong text\n",
        )
    return wheel


def test_runtime_wheel_records_exact_version_file_sha256_and_carried_libraries(
    tmp_path: Path,
) -> None:
    wheel = _nvidia_wheel(
        tmp_path,
        "nvidia-cublas",
        "13.0.2.14",
        {"libcublas.so.13": b"cublas", "libcublasLt.so.13": b"lt", "libnvblas.so.13": b"nv"},
    )
    fact = cudalib.runtime_wheel(wheel, index_url="https://pypi.example/simple")
    assert fact == cudalib.RuntimeWheel(
        name="nvidia-cublas",
        version="13.0.2.14",
        file="nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl",
        sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        size=wheel.stat().st_size,
        index_url="https://pypi.example/simple",
        libraries=("libcublas.so.13", "libcublasLt.so.13"),  # not libnvblas: not carried
    )
    assert cudalib.RuntimeWheel.from_dict(fact.as_dict()) == fact


def test_a_broken_runtime_wheel_is_a_build_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "nvidia_cublas-13.0.2.14-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(BuildError, match=r"nvidia_cublas-13\.0\.2\.14"):
        cudalib.runtime_wheel(bad, index_url=None)


def test_carried_libraries_match_only_the_wheels_they_came_from(tmp_path: Path) -> None:
    libs = {"libcublas.so.13": b"cublas 13.0.2", "libcublasLt.so.13": b"lt 13.0.2"}
    same = _nvidia_wheel(tmp_path / "same", "nvidia-cublas", "13.0.2.14", libs)
    newer = _nvidia_wheel(
        tmp_path / "newer", "nvidia-cublas", "13.0.3.1", {**libs, "libcublas.so.13": b"13.0.3"}
    )
    carried = tmp_path / "lib" / "cuda"
    collect_cuda_runtime([same], carried)
    (carried / "libnvblas.so.13").write_bytes(b"older entries kept it; never staged")
    assert cudalib.carried_mismatches([same], carried) == []
    assert cudalib.carried_mismatches([newer], carried) == [
        "libcublas.so.13 differs from the copy in " + newer.name
    ]
    (carried / "libcudart.so.13").write_bytes(b"cudart")
    assert cudalib.carried_mismatches([same], carried) == ["libcudart.so.13 is in no fetched wheel"]
