"""Atomic file writes: a temp file beside the destination, fsync, then ``os.replace``.

A reader (or a crash) never sees half a bundle, lock, report or SBOM: the destination either
keeps its old content or holds the whole new one (python-tuf ``_persist_metadata``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

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


def read_small(path: Path, limit: int) -> bytes:
    """The bytes of a small regular file, read without blocking and never past ``limit``.

    For inputs that anyone could have replaced (policy files, indexes, journals): a FIFO or
    a device never blocks the reader, a sparse or huge file is never loaded. Raises OSError
    (a plain one for what is not a regular file) and ValueError when over ``limit``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is over {limit} bytes")
    return data


def hash_file(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file, read once in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


# A file modified this shortly before it was hashed could be modified again within the same
# timestamp tick without its mtime moving ("racily clean" in git): no stamp vouches for it.
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class FileStamp:
    """A file's identity and content-change marker: device, inode, size, mtime (ns).

    Taken when a digest is computed from the file, it lets a later step reuse that digest
    while ``os.fstat`` still gives the same stamp, instead of hashing the bytes again (as
    git's index, rsync and make do). Every ``write``, ``truncate`` or copy onto the file
    moves its mtime to the current time; a hard link or chmod (ctime only) does not change
    the content and is ignored. Not covered: a writer that sets the mtime back on purpose,
    or stores through a shared writable mmap not yet written back (the digest is then
    wrong, and verification refuses the bundle).
    """

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def vouching_stamp(
    before: os.stat_result, after: os.stat_result, started_ns: int
) -> Optional[FileStamp]:
    """The stamp that vouches for a digest of a file read between ``before`` and ``after``.

    ``started_ns`` is ``time.time_ns()`` taken before ``before``. None when the file
    changed while it was read or was modified less than RACY_NS before the read started
    (a later change could then keep the same mtime).
    """
    stamp = FileStamp.of(before)
    if FileStamp.of(after) != stamp or stamp.mtime_ns >= started_ns - RACY_NS:
        return None
    return stamp
