"""Human and machine output: messages on stderr, results on stdout, progress bars via rich."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
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


def step(message: str) -> None:
    """Announce one step of a longer job on stderr."""
    err.print(f"[bold cyan]==>[/] {escape(safe(message))}")


def info(message: str) -> None:
    err.print(f"    {escape(safe(message))}")


def warn(message: str) -> None:
    err.print(f"[bold yellow]warning:[/] {escape(safe(message))}")


def out(line: str) -> None:
    """One line of a command's human-readable result on stdout, made safe."""
    sys.stdout.write(safe(line) + "\n")


def emit_json(data: Any) -> None:
    """Write one JSON document to stdout (``--json`` output)."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


@contextmanager
def byte_progress(description: str, total: int | None) -> Iterator[Any]:
    """A bytes progress bar (with bytes/s) on stderr; yields ``advance(n)``."""
    with Progress(
        TextColumn("    {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: int) -> None:
            progress.advance(task, n)

        yield advance
