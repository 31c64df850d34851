"""Real wheelhouses from the package index: per-target pins, offline closure, controller."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from bundler.demo.tinymodel import TinyModelOptions, write_tiny_model
from bundler.engine import elfaudit, llamacpp, sdist
from bundler.engine.buildcache import default_cache_dir
from bundler.errors import ClosureError
from bundler.paths import repo_root
from bundler.sources import wheelhouse
from bundler.sources.wheelhouse import Target
from tests.integration.llamacpp_support import VERSION

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
# in the offline venv: the binding's own API, the tiny generated model, a few tokens
USE_WHEEL = """\
import sys
import llama_cpp
print(llama_cpp.llama_cpp.llama_print_system_info().decode())
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
out = llm("hello", max_tokens=8, temperature=0.0)
n = out["usage"]["completion_tokens"]
print(f"COMPLETION: {n} tokens: {out['choices'][0]['text']!r}")
"""
TARGETS = [Target(HERE, "manylinux_2_28_x86_64"), Target("3.9", "manylinux2014_x86_64")]


@pytest.fixture(scope="module")
def jinja_house(tmp_path_factory: pytest.TempPathFactory) -> wheelhouse.WheelhouseResult:
    dest = tmp_path_factory.mktemp("bundle") / "wheels"
    return wheelhouse.build_wheelhouse(
        TARGETS, ["jinja2==3.1.4"], extra_wheels=[], dest=dest, cache_dir=default_cache_dir()
    )


def test_each_target_gets_its_own_binary_wheels_pinned_by_hash(
    jinja_house: wheelhouse.WheelhouseResult,
) -> None:
    props = jinja_house.properties
    assert [t["abi"] for t in props["targets"]] == [f"cp{HERE.replace('.', '')}", "cp39"]
    assert (
        props["targets"][1]["requirements"] == "wheels/requirements-cp39-manylinux2014_x86_64.txt"
    )
    files = [w["file"] for w in props["wheels"]]
    assert any("markupsafe" in f.lower() and "cp39" in f for f in files)
    assert any("markupsafe" in f.lower() and f"cp{HERE.replace('.', '')}" in f for f in files)
    assert all(f.endswith(".whl") for f in files)  # binary only, no sdists
    req39 = (jinja_house.dest / "requirements-cp39-manylinux2014_x86_64.txt").read_text()
    assert "jinja2==3.1.4 --hash=sha256:" in req39.lower()
    assert "markupsafe==" in req39.lower()
    assert {w["license"] is not None for w in props["wheels"]} == {True}


def test_closure_installs_every_target_offline(jinja_house: wheelhouse.WheelhouseResult) -> None:
    wheelhouse.check_closure(jinja_house.dest, TARGETS)


def test_closure_fails_when_a_wheel_is_removed(
    jinja_house: wheelhouse.WheelhouseResult, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "wheels"
    shutil.copytree(jinja_house.dest, copy)
    for whl in copy.glob("[Mm]arkup[Ss]afe-*cp39*.whl"):
        whl.unlink()
    with pytest.raises(ClosureError) as info:
        wheelhouse.check_closure(copy, TARGETS)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert "Python 3.9" in problem and "markupsafe" in problem.lower()


@pytest.mark.slow
def test_llama_cpp_python_wheel_is_portable_and_installs_offline(tmp_path: Path) -> None:
    cache = default_cache_dir()
    source = sdist.fetch_sdist(VERSION, cache_dir=cache)
    wheel = llamacpp.build_llama_cpp_python_wheel(
        source, variants=llamacpp.default_variants(), cache_dir=cache
    )
    assert wheel.name.endswith("-py3-none-linux_x86_64.whl"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert any(n.startswith("llama_cpp/lib/libllama.so") for n in names)
    facts = elfaudit.read_wheel(wheel)
    assert any(f.path.endswith("libllama.so") for f in facts)
    # built with the portable toolchain (the default): the glibc 2.28 floor, no libstdc++
    assert elfaudit.floor_problems(facts) == []
    assert elfaudit.highest(facts, "GLIBCXX") is None
    # and no DWARF (zig cc's default without -g0; the wrappers pass it)
    with zipfile.ZipFile(wheel) as zf:
        for fact in facts:
            member = fact.path.split(":", 1)[1]  # <wheel>:<member>
            elf = ELFFile(io.BytesIO(zf.read(member)))
            debug = [s.name for s in elf.iter_sections() if s.name.startswith(".debug_")]
            assert debug == [], (fact.path, debug)
    target = Target(HERE, "manylinux_2_28_x86_64")
    house = wheelhouse.build_wheelhouse(
        [target], [], extra_wheels=[wheel], dest=tmp_path / "wheels", cache_dir=cache
    )
    assert {w["name"].lower().replace("_", "-") for w in house.properties["wheels"]} >= {
        "llama-cpp-python",
        "numpy",
        "diskcache",
        "jinja2",
        "typing-extensions",
    }
    wheelhouse.check_closure(house.dest, [target])
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(house.dest),
            "--require-hashes",
            "-r",
            str(house.requirements[target]),
        ],
        check=True,
    )
    model = write_tiny_model(tmp_path / "tiny.gguf", TinyModelOptions())[0]
    run = subprocess.run(
        [str(venv / "bin" / "python"), "-c", USE_WHEEL, str(model)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "AVX2 = 1" not in run.stdout  # built for the baseline, never native
    # ctypes loads libllama, libggml, libggml-base and libggml-cpu, each with its own
    # static libc++: the model loads and generates
    assert re.search(r"^COMPLETION: [1-9]\d* tokens: .+", run.stdout, re.MULTILINE), run.stdout


@pytest.mark.slow
def test_controller_bootstraps_offline_with_the_documented_command(tmp_path: Path) -> None:
    dest = tmp_path / "controller"
    result = wheelhouse.build_controller_wheelhouse(
        dest, cache_dir=default_cache_dir(), pythons=(HERE,)
    )
    names = {w["name"].lower().replace("_", "-") for w in result.properties["wheels"]}
    assert {"airlock", "ansible-core", "cryptography", "pip"} <= names
    # airlock's build extra (the Hub client, its HTTP stack, the 101 MB compiler) stays on
    # the build machine: nothing of it reaches the enclave's controller or hosts
    assert not names & {"huggingface-hub", "hf-xet", "httpx2", "httpcore2", "ziglang"}, names
    assert result.properties["requirements"] == "controller/requirements.txt"
    assert result.properties["pythons"] == [HERE]
    assert result.properties["ansible_core"][HERE].startswith(
        wheelhouse.ANSIBLE_CORE_SERIES[HERE] + "."
    )
    per_python = f"requirements-{Target(HERE, wheelhouse.CONTROLLER_PLATFORM).slug}.txt"
    assert (dest / "requirements.txt").read_bytes() == (dest / per_python).read_bytes()
    venv = tmp_path / "opt" / "airlock-controller"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            "--no-index",
            "--find-links",
            f"{dest}/",
            "--require-hashes",
            "-r",
            str(dest / per_python),
        ],
        check=True,
        cwd=tmp_path,
    )
    assert (
        subprocess.run(
            [str(venv / "bin" / "ansible-playbook"), "--version"], capture_output=True, check=False
        ).returncode
        == 0
    )
    assert (
        subprocess.run(
            [str(venv / "bin" / "airlock"), "--help"], capture_output=True, check=False
        ).returncode
        == 0
    )


def test_airlock_wheel_is_reproducible_and_rebuilt_only_when_sources_change(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    first = wheelhouse.build_airlock_wheel(tmp_path / "a", cache_dir=cache)
    (cache / "selfwheel").rename(tmp_path / "kept")  # force a second real build
    second = wheelhouse.build_airlock_wheel(tmp_path / "b", cache_dir=cache)
    assert first.read_bytes() == second.read_bytes()  # fixed zip timestamps: same bytes
    [entry] = list((cache / "selfwheel").iterdir())
    assert entry.name == wheelhouse._source_key(repo_root())
    third = wheelhouse.build_airlock_wheel(tmp_path / "c", cache_dir=cache)
    assert third.read_bytes() == first.read_bytes()
