"""HTTP download into a file, hashed while written, resumed with ``Range`` (hub.py's I/O edge).

The request goes through ``huggingface_hub``'s own HTTP session (``http_stream_backoff``:
its proxies, headers and backoff; ``hf_raise_for_status``: its error kinds), and every
byte of the body passes through :class:`HashingWriter` on its way to disk.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Optional

import httpcore2
import httpx2
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

from bundler import console
from bundler.errors import IntegrityError

CHUNK = 1024 * 1024

# httpcore reads a response body with recv(64 KiB) and passes every read through h11 in
# Python: at 64 KiB the receiving thread alone costs as much CPU as curl's whole download of
# the same bytes (bench/fetch.py). Reading up to 1 MiB at a time cuts that thread's CPU
# about fourfold (4 MiB is slower again: fresh large buffers fault in page by page).
# h11 frames the body the same whatever each read returns, so only the cost changes.
READ_BYTES = 1024 * 1024

Advance = Callable[[int], None]


class HashingWriter:
    """The download's file object: hashes every byte on its way to disk.

    Why the digest is the digest of the stored bytes: each ``bytes`` object the download
    writes is kept, unchanged (``bytes`` are immutable), in a batch that is handed, the same
    list of the same objects, to the hashers and to ``os.writev`` on the file (looping until
    the kernel took all of it, or raising), on worker threads that take batches strictly in
    order. Nobody else holds the file (our own ``.airlock-partial`` name, under the Hub
    cache's per-file lock), and it is unbuffered, so the file position is the kernel's.
    The only non-appending operation (``truncate``, when a server ignores ``Range``) goes
    through here: it waits for the workers, then rehashes what the file holds.

    Why batches: the HTTP client yields 64 KiB at a time, and a queue hand-off, a progress
    update and a write per 64 KiB cost more CPU than hashing them. Chunks are gathered
    (not copied) until ``BATCH`` bytes, then handed over at once. Why two workers (on
    ``SPLIT_MIN_CORES`` cores or more; one worker hashes then writes otherwise): SHA-256 of
    one stream cannot be split, so the hashing thread is the floor of a fast download;
    writing on a thread of its own keeps the disk copy off that path. hashlib and os.writev
    release the GIL, so hashing, writing and receiving run on separate cores where there
    are cores. The queues are bounded: at most ``DEPTH`` batches per worker are in memory.
    ``f=None`` hashes only (a cached blob being checked). Use as a context manager.
    """

    BATCH = 1024 * 1024
    DEPTH = 16
    # Hash and write on separate threads only with cores to spare for both next to the
    # receiving thread: measured (bench/fetch.py, 256 MiB) 14% faster on 16 cores, 7-10%
    # slower on 2, where three busy threads only take turns.
    SPLIT_MIN_CORES = 4
    _MAX_IOV = 512  # chunks per batch, well under IOV_MAX (1024) for os.writev

    def __init__(
        self,
        f: Optional[BinaryIO],
        *,
        git_size: int,
        advance: Advance,
        git_blob: bool = True,
    ) -> None:
        self._f = f
        self._fd = f.fileno() if f is not None else -1
        self._git_size = git_size
        self._git_blob = git_blob  # LFS files need no git blob id: skip that hash
        self._advance = advance
        self.sha256 = hashlib.sha256()
        self.sha1 = hashlib.sha1(usedforsecurity=False)
        self.written = 0
        self._reset()
        self._batch: list[bytes] = []
        self._batched = 0
        self._error: Optional[BaseException] = None
        if self._fd < 0:
            self._stages = [self._stage("airlock-hash", self._hash_batch)]
        elif _cores() >= self.SPLIT_MIN_CORES:
            self._stages = [
                self._stage("airlock-hash", self._hash_batch),
                self._stage("airlock-write", self._write_batch),
            ]
        else:
            self._stages = [self._stage("airlock-hash-write", self._hash_write_batch)]

    def _stage(
        self, name: str, work: Callable[[list[bytes]], None]
    ) -> tuple[queue.Queue[Optional[list[bytes]]], threading.Thread]:
        q: queue.Queue[Optional[list[bytes]]] = queue.Queue(maxsize=self.DEPTH)

        def run() -> None:
            while True:
                batch = q.get()
                try:
                    if batch is None:
                        return
                    if self._error is None:
                        work(batch)
                except BaseException as e:
                    self._error = e
                finally:
                    q.task_done()

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        return q, t

    def _hash_batch(self, batch: list[bytes]) -> None:
        n = 0
        for data in batch:
            self._update(data)
            n += len(data)
        if self._fd < 0:
            self._advance(n)

    def _write_batch(self, batch: list[bytes]) -> None:
        _write_all(self._fd, batch)
        self._advance(sum(len(data) for data in batch))

    def _hash_write_batch(self, batch: list[bytes]) -> None:
        for data in batch:
            self._update(data)
        self._write_batch(batch)

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._hand_over()  # bytes that arrived are stored even on error: a resume keeps them
        for q, _ in self._stages:
            q.put(None)
        for _, t in self._stages:
            t.join()

    def _reset(self) -> None:
        self.sha256 = hashlib.sha256()
        self.sha1 = hashlib.sha1(b"blob %d\0" % self._git_size, usedforsecurity=False)
        self.written = 0

    def _update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self._git_blob:
            self.sha1.update(data)
        self.written += len(data)

    def _hand_over(self) -> None:
        if self._batch:
            batch, self._batch, self._batched = self._batch, [], 0
            for q, _ in self._stages:
                q.put(batch)

    def _drain(self) -> None:
        """Wait until every written chunk is hashed and stored; re-raise a worker error."""
        self._hand_over()
        for q, _ in self._stages:
            q.join()
        if self._error is not None:
            raise self._error

    def seed(self) -> int:
        """Hash what the file already holds (an interrupted run's bytes); returns its length."""
        self._drain()
        if self._f is None:
            return 0
        self._f.seek(0)
        self._reset()
        while chunk := self._f.read(CHUNK):
            self._update(chunk)
        self._f.seek(self.written)
        return self.written

    def write(self, data: bytes) -> int:
        if self._error is not None:
            raise self._error
        data = bytes(data)  # a bytes object cannot change after it was queued
        if data:
            self._batch.append(data)
            self._batched += len(data)
            if self._batched >= self.BATCH or len(self._batch) >= self._MAX_IOV:
                self._hand_over()
        return len(data)

    def truncate(self, size: int) -> int:
        """Cut the file to ``size`` bytes and rehash what is left."""
        self._drain()
        if self._f is None:
            raise ValueError("truncate: this writer has no file")
        result = self._f.truncate(size)
        self.seed()  # the file changed without passing through write(): rehash it
        return result

    def flush(self) -> None:
        """Wait until every byte written so far is hashed and handed to the kernel."""
        self._drain()
        if self._f is not None:
            self._f.flush()


def _cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Write ``chunks`` at ``fd``'s position with ``os.writev``, through short writes."""
    views = [memoryview(c) for c in chunks]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:])
        if n <= 0:
            raise OSError(f"writev wrote nothing to fd {fd}")
        while i < len(views) and n >= len(views[i]):
            n -= len(views[i])
            i += 1
        if n:
            views[i] = views[i][n:]


_RETRYABLE = (httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError)


def stream(
    url: str,
    w: HashingWriter,
    *,
    headers: dict[str, str],
    start: int,
    size: int,
    name: str,
    retries: int = 5,
) -> None:
    """GET ``url`` into ``w`` from byte ``start``; on a dropped connection resume with Range.

    Gives up after ``retries`` attempts in a row that brought no new bytes.
    """
    larger_reads()
    pos = start
    failures = 0
    while pos < size or (pos == 0 and size == 0):
        h = dict(headers)
        h["Accept-Encoding"] = "identity"  # Range offsets must count stored bytes
        if pos:
            h["Range"] = f"bytes={pos}-"
        before = pos
        try:
            with http_stream_backoff(
                "GET",
                url,
                headers=h,
                timeout=hf_constants.HF_HUB_DOWNLOAD_TIMEOUT,
                retry_on_exceptions=(),
                retry_on_status_codes=(408, 429),
            ) as r:
                hf_raise_for_status(r)
                if pos and r.status_code == 200:
                    w.truncate(0)  # the server ignored Range and sends everything again
                    pos = 0
                for chunk in r.iter_bytes():
                    if pos + len(chunk) > size:
                        raise IntegrityError(
                            f"{name}: the server sent more than the {size} bytes pinned",
                            hint="check HF_ENDPOINT; the lock pins every file's size",
                        )
                    w.write(chunk)
                    pos += len(chunk)
            if pos < size:
                raise httpx2.RemoteProtocolError(f"body ended after {pos} of {size} bytes")
            return
        except _RETRYABLE as e:
            failures = 0 if pos > before else failures + 1
            if failures >= retries:
                raise
            console.warn(f"{name}: connection lost at byte {pos} ({e}); resuming")
            time.sleep(1)


def larger_reads() -> None:
    """Let httpcore's HTTP/1.1 connections read up to READ_BYTES per recv (process-wide).

    ``READ_NUM_BYTES`` is the class attribute each connection reads its size from
    (``self.READ_NUM_BYTES``); an httpcore without it is left alone (64 KiB reads, slower).
    """
    if hasattr(httpcore2.HTTP11Connection, "READ_NUM_BYTES"):
        httpcore2.HTTP11Connection.READ_NUM_BYTES = READ_BYTES


@contextmanager
def open_partial(path: Path) -> Iterator[BinaryIO]:
    """Open (or create) a partial download for reading and writing, unbuffered."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+b", buffering=0) as f:
        yield f


def digest_problems(
    w: HashingWriter,
    size: int,
    lfs_sha256: Optional[str],
    blob_id: Optional[str],
    sha256: Optional[str],
) -> list[str]:
    problems = []
    if w.written != size:
        problems.append(f"size: expected {size}, got {w.written}")
    got_sha256 = w.sha256.hexdigest()
    if lfs_sha256 is not None and got_sha256 != lfs_sha256:
        problems.append(f"sha256: expected {lfs_sha256} (Hub LFS), got {got_sha256}")
    elif sha256 is not None and got_sha256 != sha256:
        problems.append(f"sha256: expected {sha256} (lock), got {got_sha256}")
    if lfs_sha256 is None and blob_id is not None and w.sha1.hexdigest() != blob_id:
        problems.append(f"git blob id: expected {blob_id}, got {w.sha1.hexdigest()}")
    return problems
