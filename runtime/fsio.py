"""The disk primitives runtime/ shares: atomic file writes and streaming file hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile

CHUNK = 1024 * 1024


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old bytes or the new, never a mix.

    The temp file lives in the destination directory (``os.replace`` is atomic only within
    one file system) and is fsynced before the rename, the directory after it, so a power
    cut leaves either version; on any failure the temp file is removed. Creates missing
    parent directories. Raises OSError.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def fsync_dir(path: str) -> None:
    """Make a rename inside ``path`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def file_sha256(path: str) -> str:
    """The sha256 hex digest of the file at ``path``, read in 1 MiB blocks. Raises OSError."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
