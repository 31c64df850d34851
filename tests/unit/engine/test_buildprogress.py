"""A cmake build's progress read from its log, and the up-front estimate of a cold build."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bundler import console
from bundler.engine import buildprogress
from bundler.engine.buildprogress import estimate_seconds, last_progress

NINJA_LOG = b"""$ cmake --build /tmp/b -j 2
[1/231] Building CXX object ggml/src/CMakeFiles/ggml-base.dir/ggml.cpp.o
[2/231] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml-alloc.c.o
warning: something [3/4] inside a line is not progress
[45/231] Building CXX object ggml/src/CMakeFiles/ggml-cpu-zen4.dir/ops.cpp.o
"""


def test_last_progress_reads_ninja_and_make_lines() -> None:
    assert last_progress(NINJA_LOG) == (45, 231)
    make = b"[  3%] Building C object a.o\n[ 12%] Linking CXX shared library libggml.so\n"
    assert last_progress(make) == (12, 100)
    assert last_progress(b"-- Configuring done\n-- Generating done\n") is None
    # pip --verbose (the binding's wheel build) indents the backend's ninja lines
    assert last_progress(b"  [7/150] Building C object ggml.c.o\n") == (7, 150)


def test_estimate_scales_an_earlier_cold_build_here_by_the_work() -> None:
    two = estimate_seconds(2, jobs=2, cores=2, history=[(2, 331.0)])
    assert two == pytest.approx(331.0)
    assert estimate_seconds(14, jobs=2, cores=2, history=[(2, 331.0)]) > 2 * two
    # without history: the reference costs over the parallel jobs this machine runs
    one_core = estimate_seconds(2, jobs=2, cores=1)
    assert one_core == pytest.approx(2 * estimate_seconds(2, jobs=2, cores=2))
    assert 4 * 60 < estimate_seconds(2, jobs=2, cores=2) < 8 * 60


def test_run_with_progress_shows_the_build_tools_steps_as_they_are_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "PLAIN_INTERVAL", 0.0)  # a line for every poll
    script = (
        "import sys, time\n"
        "for i in range(1, 4):\n"
        "    print(f'[{i}/3] Building CXX object x{i}.o', flush=True)\n"
        "    time.sleep(0.3)\n"
        "sys.exit(3)\n"
    )
    log = tmp_path / "build.log"
    rc = buildprogress.run_with_progress(
        [sys.executable, "-c", script], log, label="compiling x", poll=0.05
    )
    assert rc == 3
    lines = capsys.readouterr().err.splitlines()
    seen = [line.split(": ", 1)[1].split(" (")[0] for line in lines if "steps" in line]
    assert seen[0] in ("1/3 steps", "2/3 steps") and seen[-1] == "3/3 steps", lines
    assert "[3/3] Building CXX object x3.o" in log.read_text()
