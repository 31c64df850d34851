"""HashingWriter: every byte hashed on its way to disk, in order, through batches and errors."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bundler.sources import download
from bundler.sources.download import HashingWriter, digest_problems, open_partial

SIZE = 300_000


@pytest.fixture(autouse=True, params=["one worker", "hash and write threads"])
def workers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both layouts must store and hash the same bytes, whatever this machine's core count.
    split = 1 if request.param == "hash and write threads" else 1_000_000
    monkeypatch.setattr(HashingWriter, "SPLIT_MIN_CORES", split)


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny batches and queue, so a few hundred KB cross many batch and queue boundaries.
    monkeypatch.setattr(HashingWriter, "BATCH", 10_000)
    monkeypatch.setattr(HashingWriter, "DEPTH", 2)


def _data(n: int = SIZE) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def _chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        yield data[pos : pos + n]
        pos += n
        i += 1


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@pytest.mark.usefixtures("small_batches")
def test_uneven_chunks_across_batches_are_stored_and_hashed_in_order(tmp_path: Path) -> None:
    data = _data()
    seen: list[int] = []
    with open_partial(tmp_path / "p") as f:
        with HashingWriter(f, git_size=len(data), advance=seen.append) as w:
            # empty, tiny, batch-sized and larger-than-batch chunks, in a fixed pattern
            for chunk in _chunks(data, [1, 0, 9_999, 10_000, 25_001, 3, 64 * 1024]):
                w.write(chunk)
            w.flush()
    assert (tmp_path / "p").read_bytes() == data
    assert w.written == len(data) == sum(seen)
    assert w.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert w.sha1.hexdigest() == _git_blob_id(data)  # the Hub's id for a non-LFS file
    assert digest_problems(w, len(data), None, _git_blob_id(data), None) == []


@pytest.mark.usefixtures("small_batches")
def test_many_tiny_chunks_stay_under_the_writev_vector_limit(tmp_path: Path) -> None:
    data = _data(5_000)
    with open_partial(tmp_path / "p") as f:
        with HashingWriter(f, git_size=len(data), advance=lambda n: None) as w:
            for chunk in _chunks(data, [1]):  # 5000 one-byte chunks, one batch by size
                w.write(chunk)
            w.flush()
    assert (tmp_path / "p").read_bytes() == data
    assert w.sha256.hexdigest() == hashlib.sha256(data).hexdigest()


def test_short_writes_are_continued_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.writev
    calls = []

    def short_writev(fd: int, buffers: Any) -> int:
        # The kernel may take less than asked: at most 777 bytes per call here.
        calls.append(1)
        first = bytes(buffers[0])[:777]
        return real(fd, [first])

    monkeypatch.setattr(download.os, "writev", short_writev)
    data = _data(20_000)
    with open_partial(tmp_path / "p") as f:
        with HashingWriter(f, git_size=len(data), advance=lambda n: None) as w:
            for chunk in _chunks(data, [3000, 5000]):
                w.write(chunk)
            w.flush()
    assert (tmp_path / "p").read_bytes() == data
    assert len(calls) >= len(data) // 777


def test_a_write_that_stores_nothing_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download.os, "writev", lambda fd, buffers: 0)
    with open_partial(tmp_path / "p") as f:
        with HashingWriter(f, git_size=3, advance=lambda n: None) as w:
            w.write(b"abc")
            with pytest.raises(OSError, match="wrote nothing"):
                w.flush()


def test_disk_error_in_the_worker_surfaces_in_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, buffers: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(download.os, "writev", full)
    with open_partial(tmp_path / "p") as f:
        with HashingWriter(f, git_size=3, advance=lambda n: None) as w:
            w.write(b"abc")
            with pytest.raises(OSError, match="No space left"):
                w.flush()
            with pytest.raises(OSError, match="No space left"):
                w.write(b"more")  # later writes refuse too: nothing is silently skipped


def test_bytes_received_before_a_failure_are_kept_for_the_resume(tmp_path: Path) -> None:
    # Less than one batch arrived, then the download failed: the partial must hold it all,
    # so the next run resumes from the true byte count (and hashes that prefix from disk).
    with pytest.raises(ConnectionError):
        with open_partial(tmp_path / "p") as f:
            with HashingWriter(f, git_size=10, advance=lambda n: None) as w:
                w.write(b"01234")
                raise ConnectionError("dropped")
    assert (tmp_path / "p").read_bytes() == b"01234"


@pytest.mark.usefixtures("small_batches")
def test_resume_hashes_the_stored_prefix_then_appends(tmp_path: Path) -> None:
    data = _data()
    cut = 123_457
    (tmp_path / "p").write_bytes(data[:cut])
    with open_partial(tmp_path / "p") as f:
        with HashingWriter(f, git_size=len(data), advance=lambda n: None) as w:
            assert w.seed() == cut
            for chunk in _chunks(data[cut:], [4096, 65536]):
                w.write(chunk)
            w.flush()
    assert (tmp_path / "p").read_bytes() == data
    assert w.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert w.sha1.hexdigest() == _git_blob_id(data)


@pytest.mark.usefixtures("small_batches")
def test_truncate_after_queued_writes_rehashes_from_the_file(tmp_path: Path) -> None:
    # A server that ignores Range: the queued bytes land first, then all are thrown away.
    data = _data()
    with open_partial(tmp_path / "p") as f:
        with HashingWriter(f, git_size=len(data), advance=lambda n: None) as w:
            w.write(b"\xff" * 50_000)
            w.truncate(0)
            assert w.written == 0
            for chunk in _chunks(data, [30_000]):
                w.write(chunk)
            w.flush()
    assert (tmp_path / "p").read_bytes() == data
    assert w.sha256.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.usefixtures("small_batches")
def test_hash_only_mode_checks_bytes_without_a_file() -> None:
    data = _data()
    with HashingWriter(None, git_size=len(data), advance=lambda n: None, git_blob=False) as w:
        for chunk in _chunks(data, [65536]):
            w.write(chunk)
        w.flush()
    assert w.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert w.written == len(data)


def test_mutable_buffers_are_copied_before_they_are_queued(tmp_path: Path) -> None:
    buf = bytearray(b"good")
    with open_partial(tmp_path / "p") as f:
        with HashingWriter(f, git_size=4, advance=lambda n: None) as w:
            w.write(buf)  # type: ignore[arg-type]
            buf[:] = b"evil"  # the caller reuses its buffer before the worker ran
            w.flush()
    assert (tmp_path / "p").read_bytes() == b"good"
    assert w.sha256.hexdigest() == hashlib.sha256(b"good").hexdigest()


@pytest.mark.usefixtures("small_batches")
def test_memory_stays_bounded_while_the_disk_is_slow(tmp_path: Path) -> None:
    # The worker is stuck (a stalled disk); the download must block after a few batches
    # instead of buffering the whole file in memory.
    stuck = threading.Event()
    accepted = [0]

    def advance(n: int) -> None:
        stuck.wait(10)

    def produce(w: HashingWriter) -> None:
        for _ in range(200):  # 200 batches' worth
            w.write(b"x" * HashingWriter.BATCH)
            accepted[0] += 1

    with open_partial(tmp_path / "p") as f:
        with HashingWriter(f, git_size=0, advance=advance) as w:
            t = threading.Thread(target=produce, args=(w,), daemon=True)
            t.start()
            t.join(0.5)
            held = accepted[0]
            stuck.set()
            t.join(10)
            w.flush()
    # one batch in the worker, DEPTH queued, one more blocked in put()
    assert held <= HashingWriter.DEPTH + 2
    assert accepted[0] == 200
    assert (tmp_path / "p").stat().st_size == 200 * HashingWriter.BATCH


def test_hash_and_write_threads_follow_the_core_count(tmp_path: Path) -> None:
    split = HashingWriter.SPLIT_MIN_CORES == 1  # set by the workers fixture
    with open_partial(tmp_path / "p") as f:
        with HashingWriter(f, git_size=0, advance=lambda n: None):
            names = {t.name for t in threading.enumerate() if t.name.startswith("airlock-")}
    if split:
        assert names == {"airlock-hash", "airlock-write"}
    else:
        assert names == {"airlock-hash-write"}


def test_the_body_is_read_in_large_reads_not_64_kib_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64 KiB reads, each through h11 in Python, made receiving cost as much CPU as curl's
    # whole download; stream() raises httpcore's read size for the process.
    import http.server

    import httpcore2

    body = os.urandom(8 << 20)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    monkeypatch.setattr(httpcore2.HTTP11Connection, "READ_NUM_BYTES", 64 * 1024)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sizes: list[int] = []

    class Recording(HashingWriter):
        def write(self, data: bytes) -> int:
            sizes.append(len(data))
            return super().write(data)

    try:
        with (
            open_partial(tmp_path / "body") as f,
            Recording(f, git_size=len(body), advance=lambda n: None) as w,
        ):
            url = f"http://127.0.0.1:{server.server_address[1]}/body"
            download.stream(url, w, headers={}, start=0, size=len(body), name="body")
            w.flush()
    finally:
        server.shutdown()
        server.server_close()
    assert (tmp_path / "body").read_bytes() == body
    assert w.sha256.hexdigest() == hashlib.sha256(body).hexdigest()
    assert httpcore2.HTTP11Connection.READ_NUM_BYTES == download.READ_BYTES
    assert max(sizes) > 64 * 1024, f"every read was 64 KiB or less: {sorted(set(sizes))[-5:]}"
