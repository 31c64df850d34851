"""The CUDA module's run path and carried runtime libraries, checked on real ELF files.

No GPU and no CUDA toolkit needed: gcc builds stand-ins with the real sonames
(``libcublas.so.13``, ``libggml-cuda.so``) so ``check_relocatable`` reads real dynamic
sections, as it does after a real CUDA build.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from bundler.engine import llamacpp
from bundler.errors import BuildError


def _so(path: Path, soname: str, *, needs: Sequence[Path] = (), rpath: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path.with_suffix(".c")
    src.write_text(f"int {soname.split('.')[0].replace('-', '_')}_symbol(void) {{ return 1; }}\n")
    argv = ["gcc", "-shared", "-fPIC", "-o", str(path), str(src), f"-Wl,-soname,{soname}"]
    argv += ["-Wl,--no-as-needed", *(str(n) for n in needs)]
    if rpath:
        argv.append(f"-Wl,-rpath,{rpath}")
    subprocess.run(argv, check=True)
    src.unlink()


def _engine(root: Path, *, carry_cublas: bool) -> None:
    build = root.parent / "build"
    cublas = build / "libcublas.so.13"
    _so(cublas, "libcublas.so.13")
    base = root / "lib" / "libggml-base.so"
    _so(base, "libggml-base.so", rpath="$ORIGIN/../lib")
    _so(
        root / "lib" / "libggml-cuda.so",
        "libggml-cuda.so",
        needs=[base, cublas],
        rpath="$ORIGIN/../lib:$ORIGIN/cuda",
    )
    server = root / "bin" / "llama-server"
    _so(server, "llama-server", needs=[base], rpath="$ORIGIN/../lib")
    (root / "lib" / "cuda").mkdir()
    if carry_cublas:
        (root / "lib" / "cuda" / "libcublas.so.13").write_bytes(cublas.read_bytes())


def test_cuda_module_with_its_runtime_libraries_carried_is_relocatable(tmp_path: Path) -> None:
    _engine(tmp_path / "engine", carry_cublas=True)
    llamacpp.check_relocatable(tmp_path / "engine")


def test_cuda_module_needing_an_uncarried_cublas_fails_the_build(tmp_path: Path) -> None:
    _engine(tmp_path / "engine", carry_cublas=False)
    with pytest.raises(BuildError, match="not relocatable") as info:
        llamacpp.check_relocatable(tmp_path / "engine")
    assert list(info.value.problems) == [
        "lib/libggml-cuda.so: needs libcublas.so.13, not in lib/cuda/"
    ]
