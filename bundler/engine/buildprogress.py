"""Progress of a running cmake build, read from its log as it is written, and how long a
cold llama.cpp build takes here.

Ninja prints ``[n/m] Building ...`` per edge, the Makefile generator ``[ nn%] ...``: the
log is followed while the build runs and the last such line is the progress (done/total
on a terminal bar, a line at most ``console.PLAIN_INTERVAL`` apart in logs). The parsing
and the estimate are pure; ``run_with_progress`` is the adapter around the subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Optional

from bundler import console

__all__ = ["announce", "estimate_seconds", "last_progress", "run_with_progress"]

_NINJA = re.compile(rb"^[ \t]*\[(\d+)/(\d+)\] ", re.MULTILINE)
_MAKE = re.compile(rb"^[ \t]*\[\s*(\d+)%\] ", re.MULTILINE)

# CPU seconds of a cold engine build on the 2-core reference VM (cc 12.2): the shared
# libraries and llama-server, and one CPU variant module. Measured: ninja's compilers took
# 798 CPU seconds for x64+zen4 (2026-12-03); 14 variants come out near 17 min at -j2.
_BASE_CPU_SECONDS = 620.0
_VARIANT_CPU_SECONDS = 90.0


def last_progress(text: bytes) -> Optional[tuple[int, int]]:
    """The last ``(done, total)`` in a chunk of build log: ninja's ``[n/m]``, else make's
    ``[ nn%]`` as ``(nn, 100)``; None when the chunk has neither. Pure."""
    ninja = list(_NINJA.finditer(text))
    if ninja:
        return int(ninja[-1].group(1)), int(ninja[-1].group(2))
    make = list(_MAKE.finditer(text))
    if make:
        return int(make[-1].group(1)), 100
    return None


def _cost(variants: int) -> float:
    return _BASE_CPU_SECONDS + _VARIANT_CPU_SECONDS * max(1, variants)


def estimate_seconds(
    variants: int, *, jobs: int, cores: int, history: Iterable[tuple[int, float]] = ()
) -> float:
    """Roughly how long a cold engine build of ``variants`` CPU modules takes. From an
    earlier cold build on this machine (``history``: (variants, seconds) of cached
    entries, the first is used) scaled by the work, else from the reference costs and
    ``min(jobs, cores)`` parallel compilers. Pure."""
    for past_variants, seconds in history:
        if seconds > 0:
            return seconds * _cost(variants) / _cost(past_variants)
    return _cost(variants) / max(1, min(jobs, cores))


def announce(what: str, variants: int, *, jobs: int, history: Iterable[tuple[int, float]]) -> None:
    """Say up front that llama.cpp is being compiled and roughly how long that takes here."""
    cores = os.cpu_count() or 1
    seconds = estimate_seconds(variants, jobs=jobs, cores=cores, history=history)
    console.step(
        f"compiling {what} (about {max(1, round(seconds / 60))} min on this machine, "
        f"{min(jobs, cores)} parallel jobs; cached afterwards)"
    )


def run_with_progress(
    argv: Sequence[str],
    log: Path,
    *,
    label: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    poll: float = 1.0,
) -> int:
    """Run ``argv`` with its output appended to ``log``, showing the build's progress as
    read from the log while it runs; returns the exit code."""
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(argv) + "\n").encode())
        fh.flush()
        start = fh.tell()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env else None,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    unit = "steps"
    done, total = 0, 0
    pending = b""
    with console.working(label), console.count_progress(label, unit) as update:
        with open(log, "rb") as reader:
            reader.seek(start)
            while True:
                rc = proc.poll()
                data = pending + reader.read()
                cut = data.rfind(b"\n") + 1  # whole lines only; the rest waits
                pending = data[cut:]
                found = last_progress(data[:cut])
                if found is not None:
                    done, total = found
                if total:
                    update(done, total)
                if rc is not None:
                    return rc
                time.sleep(poll)
