"""bundler.engine.elfaudit: the glibc floor audit on real ELF files compiled here."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from bundler.engine import elfaudit, portable
from bundler.errors import BuildError

PROGRAM = """\
#include <iostream>
#include <string>
#include <thread>
#include <vector>
int main(int argc, char **argv) {
    std::vector<std::thread> ts;
    for (int i = 0; i < 2; i++) ts.emplace_back([] {});
    for (auto &t : ts) t.join();
    std::cout << std::to_string(argc) << argv[0] << "\\n";
}
"""


def compile_cxx(tmp_path: Path, cxx: list[str], name: str) -> Path:
    src = tmp_path / "p.cpp"
    src.write_text(PROGRAM)
    out = tmp_path / name
    subprocess.run([*cxx, "-O1", str(src), "-o", str(out)], check=True, capture_output=True)
    return out


def facts_of(path: Path) -> elfaudit.ElfFacts:
    with open(path, "rb") as fh:
        found = elfaudit.read_elf(fh, path.name)
    assert found is not None
    return found


def test_system_compiler_build_needs_the_build_machines_glibc_and_libstdcxx(
    tmp_path: Path,
) -> None:
    """Debian 12's g++ links __libc_start_main@GLIBC_2.34 and the host's libstdc++."""
    f = facts_of(compile_cxx(tmp_path, ["g++"], "prog"))
    assert "libstdc++.so.6" in f.needed
    assert "__libc_start_main" in f.versions["GLIBC_2.34"]
    problems = elfaudit.floor_problems([f])
    assert "prog: needs GLIBC_2.34 (needed by __libc_start_main), above the floor 2.28" in problems
    assert any(p.startswith("prog: needs GLIBCXX_3.4.") for p in problems)
    assert (
        "prog: needs libstdc++.so.6, which glibc does not provide and the bundle does not carry"
        in problems
    )
    assert elfaudit.highest([f], "GLIBC") == "2.34"
    with pytest.raises(BuildError, match=r"needs more from the host than glibc 2\.28") as e:
        elfaudit.require_floor([f], "the test build")
    assert list(e.value.problems) == problems


def test_a_library_the_bundle_carries_is_not_a_problem(tmp_path: Path) -> None:
    f = facts_of(compile_cxx(tmp_path, ["g++"], "prog"))
    carried = elfaudit.floor_problems([f], carried=["libstdc++.so.6", "libgcc_s.so.1"])
    assert not [p for p in carried if "which glibc does not provide" in p]


def test_wheel_members_are_audited_by_member_name(tmp_path: Path) -> None:
    lib = compile_cxx(tmp_path, ["g++", "-shared", "-fPIC"], "libllama.so")
    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(lib, "llama_cpp/lib/libllama.so")
        zf.writestr("llama_cpp/__init__.py", "")
    facts = elfaudit.read_wheel(wheel)
    assert [f.path for f in facts] == [f"{wheel.name}:llama_cpp/lib/libllama.so"]
    with pytest.raises(BuildError) as e:
        elfaudit.require_floor(facts, f"the wheel {wheel.name}")
    assert any(
        p.startswith(f"{wheel.name}:llama_cpp/lib/libllama.so: needs") for p in e.value.problems
    )


def test_files_that_are_not_elf_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not an ELF file")
    assert elfaudit.read_files(tmp_path, ["README"]) == []


def test_a_truncated_elf_file_is_a_build_error(tmp_path: Path) -> None:
    (tmp_path / "bad.so").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 20)
    with pytest.raises(BuildError, match=r"bad\.so: not a readable ELF file"):
        elfaudit.read_files(tmp_path, ["bad.so"])


@pytest.mark.slow
def test_portable_toolchain_meets_the_floor_with_no_host_libstdcxx(tmp_path: Path) -> None:
    """zig c++ -target x86_64-linux-gnu.2.28: glibc <= 2.28, libc++ linked in statically."""
    zig = portable.zig_toolchain()
    env = {**os.environ, **zig.env}
    src = tmp_path / "p.cpp"
    src.write_text(PROGRAM)
    out = tmp_path / "prog"
    subprocess.run([str(zig.cxx), "-O1", str(src), "-o", str(out)], check=True, env=env)
    f = facts_of(out)
    assert elfaudit.floor_problems([f]) == []
    assert set(f.needed) <= elfaudit.HOST_LIBRARIES
    assert elfaudit.highest([f], "GLIBCXX") is None
    assert subprocess.run([str(out)], capture_output=True, text=True, check=True).stdout.startswith(
        "1"
    )
