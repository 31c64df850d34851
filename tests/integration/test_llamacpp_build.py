"""Real llama.cpp builds from the pinned sdist: variant modules, relocatable, no AVX in x64.

The engine is built once per cache (``$AIRLOCK_CACHE``) with ``default_variants()``, the
same list the demo uses, so every run after the first reuses it.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from bundler.engine import elfaudit, llamacpp
from bundler.engine.llamacpp import EngineBuild
from bundler.engine.sdist import SourceArchive
from bundler.errors import BuildError
from tests.integration.llamacpp_support import VERSION, engine_build

# VEX/EVEX-encoded mnemonics all start with "v" (vmovups, vfmadd231ps, vpxor, vzeroupper...);
# the only legacy "v" instructions are verr/verw.


@pytest.fixture(scope="module")
def built() -> EngineBuild:
    return engine_build()


@pytest.fixture
def staged(built: EngineBuild, tmp_path: Path) -> Path:
    dest = tmp_path / "bundle" / "engine"
    llamacpp.stage_engine(built, dest)
    return dest


def avx_instructions(lib: Path) -> list[str]:
    """Every AVX/AVX-512 instruction (VEX/EVEX mnemonic or ymm/zmm operand) in ``lib``."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(lib)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].strip().endswith(":"):
            continue
        insn = parts[1].strip()
        mnemonic = insn.split()[0] if insn else ""
        if (mnemonic.startswith("v") and mnemonic not in ("verr", "verw")) or re.search(
            r"%[yz]mm\d+", insn
        ):
            found.append(insn)
    return found


@pytest.mark.slow
def test_engine_records_the_pinned_source_and_variants(built: EngineBuild) -> None:
    p = built.properties
    assert re.fullmatch(r"[0-9a-f]{40}", p["llama_cpp_commit"])
    assert p["llama_cpp_python"]["version"] == VERSION
    assert re.fullmatch(r"[0-9a-f]{64}", p["llama_cpp_python"]["sha256"])
    assert p["cpu_variants"] == llamacpp.default_variants()
    assert "-DGGML_BACKEND_DL=ON" in p["cmake_flags"]
    assert "-DGGML_NATIVE=OFF" in p["cmake_flags"]
    assert p["server"] == "engine/bin/llama-server"
    assert p["cuda"] is None
    # the portable toolchain (the default): the glibc floor and no host libstdc++
    assert p["compiler"].startswith("zig ") and p["compiler"].endswith("(x86_64-linux-gnu.2.28)")
    assert p["glibc_min"] is not None
    assert tuple(map(int, p["glibc_min"].split("."))) <= (2, 28)
    assert p["glibcxx_min"] is None
    facts = elfaudit.read_files(built.root, built.files)
    assert {f.path for f in facts} == set(built.files)
    assert p["glibc_min"] == elfaudit.highest(facts, "GLIBC")
    assert elfaudit.floor_problems(facts) == []


@pytest.mark.slow
def test_only_the_requested_variant_modules_are_built(built: EngineBuild) -> None:
    mods = sorted(f for f in built.files if f.startswith("lib/libggml-cpu-"))
    assert mods == sorted(f"lib/libggml-cpu-{v}.so" for v in llamacpp.default_variants())
    assert "bin/llama-server" in built.files
    for lib in ("libggml.so", "libggml-base.so"):
        assert any(f.startswith(f"lib/{lib}") for f in built.files), lib
    # llama.cpp, common and mtmd are linked into llama-server (AIRLOCK_SHARED_GGML)
    assert not any(f.startswith(("lib/libllama", "lib/libmtmd")) for f in built.files)
    assert not any(Path(built.root, f).is_symlink() for f in built.files)


def exported(elf: Path) -> list[str]:
    """The names of the symbols ``elf`` defines in its dynamic symbol table."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as fh:
        dynsym = ELFFile(fh).get_section_by_name(".dynsym")
        return [
            s.name
            for s in dynsym.iter_symbols()
            if s.name and s["st_shndx"] != "SHN_UNDEF" and s["st_info"]["bind"] != "STB_LOCAL"
        ]


@pytest.mark.slow
def test_no_elf_file_exports_its_static_cxx_runtime(built: EngineBuild) -> None:
    """Each file's static libc++ stays private: exported, the copies interpose each other
    and the engine aborts at start (free(): invalid pointer).

    What a file exports is llama.cpp's C API, and C++ symbols of llama.cpp's own types
    (the version script's extern "C++" patterns also match template instantiations such as
    std::vector<ggml_tensor *>::emplace_back: same code in every file); never libc++,
    libc++abi or libunwind themselves (operator new, std::string, locales, __cxa_*)."""
    api = re.compile(r"^(llama|ggml|gguf|mtmd|clip|llava|quantize|dequantize|iq2xs|iq3xs)_")
    ours = re.compile(r"(llama|ggml|gguf|mtmd|clip)_")
    for rel in built.files:
        names = exported(built.root / rel)
        runtime = [n for n in names if not api.match(n) and not ours.search(n)]
        assert runtime == [], rel
        assert not [n for n in names if n.startswith(("__cxa_", "_Unwind_", "_Zn"))], rel
    modules = [f for f in built.files if f.startswith("lib/libggml-cpu-")]
    for rel in modules:  # what ggml's loader looks up in each backend module
        assert {"ggml_backend_init", "ggml_backend_score"} <= set(exported(built.root / rel)), rel


@pytest.mark.slow
def test_no_elf_file_carries_debug_info(built: EngineBuild) -> None:
    """zig cc emits DWARF unless told -g0 (the engine was 154 MB, about 140 MB of it debug
    sections): the portable wrappers pass -g0, as gcc's default is."""
    from elftools.elf.elffile import ELFFile

    for rel in built.files:
        with open(built.root / rel, "rb") as fh:
            names = [s.name for s in ELFFile(fh).iter_sections()]
        assert ".dynsym" in names, rel
        assert [n for n in names if n.startswith(".debug_")] == [], rel


@pytest.mark.slow
def test_engine_needs_no_openmp_runtime_on_the_host(staged: Path) -> None:
    for elf in [staged / "bin" / "llama-server", *sorted((staged / "lib").glob("*.so*"))]:
        dyn = subprocess.run(
            ["readelf", "-d", str(elf)], capture_output=True, text=True, check=True
        ).stdout
        assert "libgomp" not in dyn, elf.name


@pytest.mark.slow
def test_build_ran_without_network(built: EngineBuild) -> None:
    log = built.log.read_text(errors="replace")
    assert "# network isolation: unshare -n" in log or "# network isolation: unshare -rn" in log


@pytest.mark.slow
def test_unchanged_rebuild_comes_from_the_cache_in_seconds(
    built: EngineBuild, tmp_path: Path
) -> None:
    start = time.monotonic()
    again = engine_build(log_dir=tmp_path / "logs")
    assert again.cached
    assert again.root == built.root
    assert time.monotonic() - start < 30
    assert (tmp_path / "logs" / "engine-build.log").read_bytes() == built.log.read_bytes()


@pytest.mark.slow
def test_every_elf_uses_origin_relative_run_paths(staged: Path) -> None:
    for elf in [staged / "bin" / "llama-server", *sorted((staged / "lib").glob("*.so*"))]:
        dyn = subprocess.run(
            ["readelf", "-d", str(elf)], capture_output=True, text=True, check=True
        ).stdout
        paths = re.findall(r"\((?:RUNPATH|RPATH)\).*\[(.*)\]", dyn)
        assert paths == ["$ORIGIN/../lib"], (elf.name, paths)
    ldd = subprocess.run(
        ["ldd", str(staged / "bin" / "llama-server")], capture_output=True, text=True, check=True
    ).stdout
    assert "not found" not in ldd
    ours = re.findall(r"^\s*(lib(?:llama|ggml|mtmd)\S*) => (\S+)", ldd, re.MULTILINE)
    assert ours, ldd
    for name, path in ours:
        assert Path(path).resolve().parent == (staged / "lib").resolve(), (name, path)


@pytest.mark.slow
def test_baseline_variant_contains_no_avx_instructions(staged: Path) -> None:
    assert avx_instructions(staged / "lib" / "libggml-cpu-x64.so") == []


@pytest.mark.slow
def test_the_avx_scan_does_find_avx_in_the_fast_variant(staged: Path) -> None:
    best = llamacpp.default_variants()[-1]
    if best == "x64":
        pytest.fail("this CPU has no variant above x64; the positive control cannot run")
    found = avx_instructions(staged / "lib" / f"libggml-cpu-{best}.so")
    assert any("%ymm" in i for i in found)


def _broken_sdist(tmp_path: Path) -> SourceArchive:
    path = tmp_path / "llama_cpp_python-0.0.0.tar.gz"
    cmake = b"cmake_minimum_required(VERSION 3.14)\nproject(broken C)\n"
    cmake += b'message(FATAL_ERROR "airlock-test: this llama.cpp does not configure")\n'
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("llama_cpp_python-0.0.0/vendor/llama.cpp/CMakeLists.txt")
        info.size = len(cmake)
        tf.addfile(info, io.BytesIO(cmake))
    return SourceArchive(path, "0.0.0", "f" * 64, "file://" + str(path), "unknown")


def test_failed_build_shows_the_log_tail_and_keeps_the_log(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as info:
        llamacpp.build_engine(
            _broken_sdist(tmp_path), variants=["x64"], cuda=None, cache_dir=tmp_path / "cache"
        )
    err = info.value
    assert "cmake configure" in err.message
    assert any("this llama.cpp does not configure" in p for p in err.problems)
    log = Path(err.problems[-1].removeprefix("build log: "))
    assert log.is_file() and "does not configure" in log.read_text()
    assert not [p for p in (tmp_path / "cache" / "engine").iterdir() if p.is_dir()]


def test_cmake_and_compiler_are_installed() -> None:
    for tool in ("cmake", "cc", "c++", "readelf", "objdump"):
        assert shutil.which(tool), f"{tool} missing: run bash .ci/setup"
