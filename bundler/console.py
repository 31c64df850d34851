"""Human and machine output: messages on stderr, results on stdout, progress on stderr
(rich bars on a terminal; plain lines at most PLAIN_INTERVAL apart in logs and pipes)."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from runtime.bundle import printable

# Messages carry file names, Ansible output, model text and bundle contents: never let
# them reach the terminal as control characters or escape sequences (safe), never interpret
# them as rich markup (escape), never re-wrap them when stderr is a file or a pipe.
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def safe(text: object) -> str:
    """``text`` with every control, bidi and invisible character shown as an escape
    (``\\x1b``), newlines kept: for any line built from untrusted input."""
    return printable(str(text), keep_newlines=True)


# The longest a long job stays silent on stderr: progress lines and "still working"
# lines come at most this far apart when no bar is shown (CI logs, pipes).
PLAIN_INTERVAL = 10.0
_clock: Callable[[], float] = time.monotonic
_lock = threading.RLock()
_last_output = [time.monotonic()]
_live_bars = [0]
_working: list[tuple[str | None, float]] = []
_last_step: list[tuple[str, float]] = [("working", time.monotonic())]
_watcher: list[threading.Thread] = []
_plain: list[_PlainProgress] = []  # the plain progress reporters now running, innermost last


def _print(markup: str) -> None:
    with _lock:
        err.print(markup)
        _last_output[0] = _clock()


def step(message: str) -> None:
    """Announce one step of a longer job on stderr."""
    with _lock:
        _print(f"[bold cyan]==>[/] {escape(safe(message))}")
        _last_step[0] = (message, _clock())


def info(message: str) -> None:
    _print(f"    {escape(safe(message))}")


def warn(message: str) -> None:
    _print(f"[bold yellow]warning:[/] {escape(safe(message))}")


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def _due(since: float = 0.0) -> bool:
    """Whether a plain line is due: nothing printed for PLAIN_INTERVAL seconds (counted
    from ``since`` at the earliest)."""
    return _clock() - max(_last_output[0], since) >= PLAIN_INTERVAL


def tick() -> None:
    """When nothing has been printed for PLAIN_INTERVAL seconds and no bar is live: the
    innermost plain progress's line if it has one, else "LABEL: still working (N s)" for
    the innermost :func:`working` block (its label, else the last step's message). The
    watcher thread calls it every second."""
    with _lock:
        if _live_bars[0] or not _due():
            return
        if _plain and _plain[-1].seen:
            _plain[-1].report()
            return
        if not _working:
            return
        label, since = _working[-1]
        if label is None:
            label, since = _last_step[0]
        _print(f"    ... {escape(safe(label))}: still working ({_duration(_clock() - since)})")


def _watch() -> None:
    while True:
        time.sleep(1.0)
        tick()


@contextmanager
def working(label: str | None = None) -> Iterator[None]:
    """Mark work that may run long without output of its own: while the block runs, a
    "still working" line keeps stderr from going silent longer than PLAIN_INTERVAL. It
    names ``label``, or (None) the step last announced with :func:`step`."""
    entry = (label, _clock())
    with _lock:
        _working.append(entry)
        if not _watcher:
            thread = threading.Thread(target=_watch, name="console-watch", daemon=True)
            _watcher.append(thread)
            thread.start()
    try:
        yield
    finally:
        with _lock:
            _working.remove(entry)


def out(line: str) -> None:
    """One line of a command's human-readable result on stdout, made safe."""
    sys.stdout.write(safe(line) + "\n")


def emit_json(data: Any) -> None:
    """Write one JSON document to stdout (``--json`` output)."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


class _PlainProgress:
    """Progress as lines, printed when PLAIN_INTERVAL has passed since the last output."""

    def __init__(self, description: str, total: int | None, unit: str | None) -> None:
        self.description = description
        self.total = total
        self.unit = unit  # None: bytes
        self.done = 0
        self.start = _clock()
        self.seen = False  # an update has come: there is something to report
        self.printed = False

    def _amount(self) -> str:
        pct = f" ({100 * self.done // self.total}%)" if self.total else ""
        if self.unit is None:
            of = f" of {decimal(self.total)}" if self.total else ""
            return f"{decimal(self.done)}{of}{pct}"
        of = f"/{self.total}" if self.total else ""
        return f"{self.done}{of} {self.unit}{pct}"

    def report(self) -> None:
        with _lock:
            info(f"{self.description}: {self._amount()}, {_duration(_clock() - self.start)}")
            self.printed = True

    def update(self, done: int, total: int | None = None) -> None:
        with _lock:
            self.done = done
            self.seen = True
            if total is not None:
                self.total = total
            if _due(self.start):
                self.report()

    @contextmanager
    def running(self) -> Iterator[None]:
        with _lock:
            _plain.append(self)
        try:
            yield
        finally:
            with _lock:
                _plain.remove(self)
        if self.printed:  # a long one ends with a line; a quick one stays quiet
            took = _duration(_clock() - self.start)
            info(f"{self.description}: {self._amount()}, done in {took}")


@contextmanager
def byte_progress(description: str, total: int | None) -> Iterator[Any]:
    """Bytes progress on stderr; yields ``advance(n)``. A bar (with bytes/s) on a
    terminal, else a line at most PLAIN_INTERVAL after the last output."""
    if not err.is_terminal:
        plain = _PlainProgress(description, total, None)

        def advance_plain(n: int) -> None:
            plain.update(plain.done + n)

        with plain.running():
            yield advance_plain
        return
    with _bar(
        TextColumn("    {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: int) -> None:
            progress.advance(task, n)

        yield advance


@contextmanager
def count_progress(description: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """Progress of counted steps (a build's ``[n/m]``); yields ``update(done, total)``.
    A bar on a terminal, else a line at most PLAIN_INTERVAL after the last output."""
    if not err.is_terminal:
        plain = _PlainProgress(description, None, unit)
        with plain.running():
            yield plain.update
        return
    with _bar(
        TextColumn("    {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


@contextmanager
def _bar(*columns: Any) -> Iterator[Progress]:
    with Progress(*columns, console=err, transient=True) as progress:
        _live_bars[0] += 1
        try:
            yield progress
        finally:
            _live_bars[0] -= 1
            _last_output[0] = _clock()
