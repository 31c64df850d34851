"""Atomic file writes: a temp file beside the destination, fsync, then ``os.replace``.

A reader (or a crash) never sees half a bundle, lock, report or SBOM: the destination either
keeps its old content or holds the whole new one (python-tuf ``_persist_metadata``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from bundler.errors import UsageError


@contextmanager
def atomic_file(final: Path, *, mode: int = 0o644) -> Iterator[tuple[Path, IO[bytes]]]:
    """Yield ``(temp path, file)`` beside ``final``; renamed over it only if the block succeeds.

    Raises UsageError when the destination directory cannot be written.
    """
    directory = final.parent if str(final.parent) else Path(".")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise UsageError(
            f"cannot write {final}: {e.strerror}",
            hint="choose a path in an existing, writable directory",
        ) from e
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w+b") as out:
            yield tmp, out
        if tmp.exists():
            os.chmod(tmp, mode)
            os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` whole or not at all, flushed to disk."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path, mode=mode) as (_, out):
        out.write(payload)
        out.flush()
        os.fsync(out.fileno())


def hash_file(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file, read once in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
