"""bundler.engine.portable: the zig wrappers keep each ELF file's static libc++ private."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bundler.engine import portable

# A shared library and an executable that both use iostreams: each carries its own static
# libc++ (zig links it into every ELF file). Exported, the library's libc++ symbols
# interpose the executable's and the program dies at start (the engine's
# "free(): invalid pointer"); kept local by the version script, it prints "3 yy2".
LIBRARY = """\
#include <sstream>
extern "C" int ggml_toy(void) { std::ostringstream o; o << "yy" << 2; return (int)o.str().size(); }
"""
PROGRAM = """\
#include <cstdio>
#include <sstream>
extern "C" int ggml_toy(void);
int main() { std::ostringstream o; o << ggml_toy() << " yy2"; std::puts(o.str().c_str()); }
"""


def fake_wrapper(tmp_path: Path, mode: str) -> Path:
    """The real wrapper text around a fake zig that prints its arguments."""
    zig = tmp_path / "zig"
    zig.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    zig.chmod(0o755)
    wrapper = tmp_path / mode
    wrapper.write_text(portable.wrapper_text(zig=str(zig), mode=mode, exports="/x/exports.map"))
    wrapper.chmod(0o755)
    return wrapper


def readelf(what: str, elf: Path) -> str:
    return subprocess.run(
        ["readelf", what, "-W", str(elf)], capture_output=True, text=True, check=True
    ).stdout


def args_of(wrapper: Path, *argv: str) -> list[str]:
    out = subprocess.run([str(wrapper), *argv], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.parametrize(
    "argv",
    [
        ["-shared", "a.o", "-o", "liba.so"],
        ["a.o", "-o", "prog"],
        ["-O2", "prog.cpp", "-o", "prog"],
    ],
)
def test_linking_an_elf_file_applies_the_version_script(tmp_path: Path, argv: list[str]) -> None:
    got = args_of(fake_wrapper(tmp_path, "c++"), *argv)
    defaults = portable.DEFAULTS.split()
    head = [
        "c++",
        "-target",
        portable.TARGET,
        *defaults,
        "-Wl,--strip-debug",
        "-Wl,--version-script=/x/exports.map",
    ]
    assert got[: len(head)] == head
    # the build's own flags come after the defaults: its -O2/-O3/-g wins
    assert got[len(head) :] == argv


@pytest.mark.parametrize(
    "argv",
    [
        ["-MD", "-MT", "a.o", "-MF", "a.o.d", "-c", "a.cpp", "-o", "a.o"],
        ["-E", "a.c"],
        ["-S", "a.c"],
        ["-M", "a.c"],
    ],
)
def test_compiling_gets_no_link_flags(tmp_path: Path, argv: list[str]) -> None:
    got = args_of(fake_wrapper(tmp_path, "cc"), *argv)
    assert got == ["cc", "-target", portable.TARGET, *portable.DEFAULTS.split(), *argv]


def test_the_defaults_match_gccs_no_debug_info_and_never_debug_mode() -> None:
    """zig cc emits DWARF unless -g0 and compiles in Debug mode (UBSan runtime) without an
    -O flag; gcc does neither."""
    assert portable.DEFAULTS.split() == ["-O2", "-g0"]
    assert portable.LINK_DEFAULTS == "-Wl,--strip-debug"  # zig's own runtime's DWARF


def test_the_exports_are_llama_cpp_apis_and_nothing_else_is_global() -> None:
    assert "local: *;" in portable.EXPORTS
    for api in ("llama_*;", "ggml_*;", "gguf_*;", "mtmd_*;", "quantize_*;"):
        assert api in portable.EXPORTS
    # nothing of the C++ runtime is named global
    assert "std" not in portable.EXPORTS.split("global:")[1].split("local:")[0]


def test_the_version_script_is_part_of_the_cache_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = portable.zig_toolchain(tmp_path)
    monkeypatch.setattr(portable, "EXPORTS", portable.EXPORTS.replace(" llava_*;", ""))
    second = portable.zig_toolchain(tmp_path)
    assert first.wrapper_sha256 != second.wrapper_sha256
    # each text has its own directory: a build in progress keeps its wrappers
    assert first.cxx.parent != second.cxx.parent
    assert first.cxx.is_file() and second.cxx.is_file()
    assert (first.cxx.parent / "exports.map").read_text() != (
        second.cxx.parent / "exports.map"
    ).read_text()


@pytest.mark.slow
def test_a_library_and_a_program_each_with_static_libcxx_run_together(tmp_path: Path) -> None:
    zig = portable.zig_toolchain()
    env = {**os.environ, **zig.env}
    (tmp_path / "lib.cpp").write_text(LIBRARY)
    (tmp_path / "main.cpp").write_text(PROGRAM)
    cxx = str(zig.cxx)
    for argv in (
        [cxx, "-O2", "-fPIC", "-c", "lib.cpp", "-o", "lib.o"],
        [cxx, "-shared", "lib.o", "-o", "libggml-toy.so"],
        [cxx, "-O2", "main.cpp", "-L.", "-lggml-toy", "-Wl,-rpath,$ORIGIN", "-o", "prog"],
    ):
        subprocess.run(argv, cwd=tmp_path, env=env, check=True, capture_output=True)
    run = subprocess.run([str(tmp_path / "prog")], capture_output=True, text=True, check=False)
    assert (run.returncode, run.stdout) == (0, "3 yy2\n"), run.stderr
    dynsym = readelf("--dyn-syms", tmp_path / "libggml-toy.so")
    defined = [
        line.split()[7]
        for line in dynsym.splitlines()
        if len(line.split()) >= 8 and line.split()[0][:-1].isdigit() and " UND " not in line
    ]
    assert defined == ["ggml_toy"]


@pytest.mark.slow
def test_flagless_checks_and_the_release_build_share_one_zig_runtime(tmp_path: Path) -> None:
    """What CMake's compiler checks do (compile and link with no -O flag) and what the build
    does (-O3 -fPIC -shared) need the same compiler-rt and libunwind: zig builds each once,
    with no UBSan runtime, and the output carries no debug info, even with -g asked for on
    the compile (the link drops it)."""
    zig = portable.zig_toolchain()
    cache = tmp_path / "zig-cache"  # a fresh zig cache: what is built here is counted
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(cache), "ZIG_LOCAL_CACHE_DIR": str(cache)}
    (tmp_path / "check.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "lib.c").write_text("int ggml_toy(int x) { return x * 3; }\n")
    cc = str(zig.cc)
    for argv in (
        [cc, "check.c", "-o", "check"],
        [cc, "-O3", "-g", "-fPIC", "-shared", "lib.c", "-o", "libggml-toy.so"],
    ):
        subprocess.run(argv, cwd=tmp_path, env=env, check=True, capture_output=True)
    built = sorted(p.name for p in cache.rglob("*.a"))
    assert built.count("libcompiler_rt.a") == 1, built
    assert "libubsan_rt.a" not in built, built
    sections = readelf("-S", tmp_path / "libggml-toy.so")
    assert ".dynsym" in sections  # the listing is real
    assert ".debug_" not in sections, sections
