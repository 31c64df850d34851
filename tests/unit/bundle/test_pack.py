"""The archive writer: determinism, layout, stock-tar compatibility, one-pass digests, stamps."""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from pathlib import Path

import pytest

from bundler.bundle.pack import pack
from bundler.bundle.region import member_header
from bundler.errors import AirlockError, IntegrityError, UsageError
from bundler.ssh import sig as sshsig
from runtime.bundle import read_metadata
from tests.bundlekit import EPOCH, EXPIRES, make_bundle, make_key, make_stage, policy_for


@pytest.fixture
def alice(tmp_path: Path):
    return make_key(tmp_path / "keys", "alice")


def test_same_inputs_give_identical_bytes(tmp_path: Path, alice) -> None:
    stage = make_stage(tmp_path)
    a = make_bundle(tmp_path, [alice], stage=stage, out=tmp_path / "a")
    os.utime(stage / "README.md", (1, 1))  # input mtimes never leak into the archive
    b = make_bundle(tmp_path, [alice], stage=stage, out=tmp_path / "b")
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.signature_path.read_bytes() == b.signature_path.read_bytes()
    assert a.manifest_sha256 == b.manifest_sha256


def test_source_date_epoch_from_environment(tmp_path: Path, alice, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH + 60))
    result = pack(
        make_stage(tmp_path),
        name="d",
        version="1",
        sequence=1,
        expires=EXPIRES,
        components={},
        signers=[alice.signer],
        out_dir=tmp_path / "o",
    )
    meta = read_metadata(result.path)
    assert meta.manifest["created"] == "2026-01-01T00:01:00Z"
    with tarfile.open(result.path) as tf:
        assert {m.mtime for m in tf.getmembers()} == {EPOCH + 60}


def test_member_order_and_normalised_headers(tmp_path: Path, alice) -> None:
    result = make_bundle(tmp_path, [alice])
    with tarfile.open(result.path) as tf:
        infos = tf.getmembers()
    names = [m.name for m in infos]
    assert names[0] == "airlock/manifest.json"
    assert names[1].startswith("airlock/signatures/") and names[1].endswith(".sig")
    assert names[2] == "airlock/reserve"
    payload = names[3:]
    assert payload == sorted(payload, key=lambda n: n.encode())
    assert "SHA256SUMS" in payload and "runtime/" + "deep/" * 30 + "long-name.py" in payload
    for m in infos:
        assert m.isreg() and (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
        assert m.mode in (0o644, 0o755)
    assert next(m for m in infos if m.name == "engine/bin/llama-server").mode == 0o755
    assert result.path.stat().st_size % 10240 == 0


def test_sha256sums_lists_every_payload_file(tmp_path: Path, alice) -> None:
    result = make_bundle(tmp_path, [alice])
    with tarfile.open(result.path) as tf:
        sums = tf.extractfile("SHA256SUMS").read().decode()  # type: ignore[union-attr]
        lines = dict(reversed(line.split("  ", 1)) for line in sums.splitlines())
        for name, digest in lines.items():
            data = tf.extractfile(name).read()  # type: ignore[union-attr]
            assert hashlib.sha256(data).hexdigest() == digest
    manifest_paths = {f["path"] for f in read_metadata(result.path).manifest["files"]}
    assert set(lines) == manifest_paths - {"SHA256SUMS"}


def test_large_sizes_get_a_pax_header_that_python_tarfile_reads() -> None:
    small = member_header("a/b", 8**11 - 1, 0o644, EPOCH)
    assert len(small) == 512
    big = member_header("a/b", 8**11, 0o644, EPOCH)
    assert len(big) == 1536 and b"size=8589934592" in big
    long = member_header("x/" * 80 + "f", 1, 0o644, EPOCH)
    assert b"path=" + ("x/" * 80 + "f").encode() in long


def test_stage_with_symlink_or_reserved_names_is_refused(tmp_path: Path, alice) -> None:
    stage = make_stage(tmp_path)
    (stage / "models/link").symlink_to("/etc/passwd")
    (stage / "SHA256SUMS").write_text("mine")
    with pytest.raises(UsageError) as exc:
        make_bundle(tmp_path, [alice], stage=stage)
    assert len(exc.value.problems) == 2
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_file_changing_size_during_pack_leaves_nothing(tmp_path: Path, alice, monkeypatch) -> None:
    import bundler.bundle.pack as archive

    real = archive.scan_stage

    def shrinking(stage: Path):
        found = real(stage)
        (stage / "README.md").write_bytes(b"")
        return found

    monkeypatch.setattr(archive, "scan_stage", shrinking)
    with pytest.raises(IntegrityError, match="changed size"):
        make_bundle(tmp_path, [alice])
    assert list((tmp_path / "out").iterdir()) == []


def test_same_key_twice_is_refused(tmp_path: Path, alice) -> None:
    with pytest.raises(UsageError, match="twice"):
        make_bundle(tmp_path, [alice, alice])


def test_output_inside_the_stage_is_refused(tmp_path: Path, alice) -> None:
    stage = make_stage(tmp_path)
    with pytest.raises(UsageError, match="inside the stage"):
        make_bundle(tmp_path, [alice], stage=stage, out=stage / "out")


@pytest.mark.parametrize("refused", [(), ("copy_file_range",), ("copy_file_range", "sendfile")])
def test_every_staged_byte_is_read_exactly_once(
    tmp_path: Path, alice, monkeypatch, refused: tuple[str, ...]
) -> None:
    """Whichever way the kernel lets pack copy (copy_file_range, sendfile, read), once."""
    import builtins
    import errno

    import bundler.bundle.pack as archive

    stage = make_stage(tmp_path)
    reads: dict[str, int] = {}
    staged_fds: dict[int, str] = {}
    real_open = builtins.open

    class Counting:
        def __init__(self, f, key: str) -> None:
            self._f, self._key = f, key
            staged_fds[f.fileno()] = key

        def fileno(self) -> int:
            return int(self._f.fileno())

        def readinto(self, b) -> int:
            n = self._f.readinto(b)
            reads[self._key] = reads.get(self._key, 0) + (n or 0)
            return n

        def read(self, n: int = -1) -> bytes:
            data = self._f.read(n)
            reads[self._key] = reads.get(self._key, 0) + len(data)
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            del staged_fds[self._f.fileno()]
            self._f.close()

    def counting_open(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        p = Path(path)
        return Counting(f, str(p.relative_to(stage))) if p.is_relative_to(stage) else f

    def counted(name: str, src_arg: int, result_is_bytes: bool = False):
        real = getattr(os, name)

        def wrapper(*args):
            if name in refused:
                raise OSError(errno.EXDEV if name == "copy_file_range" else errno.EINVAL, name)
            got = real(*args)
            key = staged_fds.get(args[src_arg])
            if key is not None:
                reads[key] = reads.get(key, 0) + (len(got) if result_is_bytes else got)
            return got

        monkeypatch.setattr(os, name, wrapper)

    monkeypatch.setattr(archive, "open", counting_open, raising=False)
    counted("copy_file_range", 0)
    counted("sendfile", 1)
    counted("read", 0, result_is_bytes=True)
    result = make_bundle(tmp_path, [alice], stage=stage)
    sizes = {str(p.relative_to(stage)): p.stat().st_size for p in stage.rglob("*") if p.is_file()}
    assert {k: v for k, v in reads.items() if v} == {k: v for k, v in sizes.items() if v}
    with tarfile.open(result.path) as tf:  # and the bytes arrived, whichever way was used
        for name, size in sizes.items():
            data = tf.extractfile(name).read()  # type: ignore[union-attr]
            assert data == (stage / name).read_bytes() and len(data) == size


# ------------------------------------------------------------ interrupted in-place co-sign


def test_pack_drops_a_journal_left_for_the_bundle_it_replaces(tmp_path: Path, alice) -> None:
    from bundler.bundle.region import journal_path

    result = make_bundle(tmp_path, [alice])
    journal_path(result.path).write_text("left over from an older bundle")
    again = make_bundle(tmp_path, [alice])
    assert again.path == result.path and not journal_path(result.path).exists()


# ------------------------------------------------------- one pass with digests already known


def _pack_with(tmp_path: Path, alice, stage: Path, out: str, **kw):
    from tests.bundlekit import COMPONENTS

    return pack(
        stage,
        name="demo",
        version="1.0.0",
        sequence=1,
        expires=EXPIRES,
        components=COMPONENTS,
        signers=[alice.signer],
        out_dir=tmp_path / out,
        source_date_epoch=EPOCH,
        **kw,
    )


def _staged_digests(stage: Path) -> dict[str, str]:
    return {
        p.relative_to(stage).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in stage.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("given", ["all", "some"])
def test_known_digests_give_the_same_bundle_without_reading_the_tar_back(
    tmp_path: Path, alice, monkeypatch, given: str
) -> None:
    import bundler.bundle.pack as archive

    stage = make_stage(tmp_path)
    two_pass = _pack_with(tmp_path, alice, stage, "a")
    known = _staged_digests(stage)
    if given == "some":  # the build pipeline knows models and wheels; pack hashes the rest
        known = {p: d for p, d in known.items() if p.startswith("models/")}

    def no_second_read(*args, **kwargs):
        raise AssertionError("the finished tar was read back")

    monkeypatch.setattr(archive, "archive_digest", no_second_read)
    monkeypatch.setattr(archive, "COPY_CHUNK", 5000)  # many chunks, unaligned mmap offsets
    one_pass = _pack_with(tmp_path, alice, stage, "b", known_digests=known)
    assert one_pass.path.read_bytes() == two_pass.path.read_bytes()
    assert one_pass.signature_path.read_bytes() == two_pass.signature_path.read_bytes()
    data = one_pass.path.read_bytes()
    sshsig.verify(data, one_pass.signature_path.read_bytes(), namespace="airlock-archive-v1")


def _aged_stamps(stage: Path, paths: list[str]) -> dict:
    """Stamps as a check of old cache blobs gives them (last modified a minute ago)."""
    import time

    from bundler.fsio import FileStamp

    stamps = {}
    for rel in paths:
        f = stage / rel
        old = time.time_ns() - 60 * 10**9
        os.utime(f, ns=(old, old))
        stamps[rel] = FileStamp.of(os.stat(f))
    return stamps


def _stamped_stage(tmp_path: Path) -> tuple[Path, str, dict, dict[str, str]]:
    """A stage whose model has a vouching stamp, and every file's digest."""
    stage = make_stage(tmp_path)
    model = "models/tiny/tiny.gguf"
    stamps = _aged_stamps(stage, [model])
    return stage, model, stamps, _staged_digests(stage)


def _hashed_bytes(monkeypatch) -> list[int]:
    import bundler.bundle.pack as archive

    counted: list[int] = []
    real = archive.hash_range

    def counting(digest, fd, offset, length) -> None:
        counted.append(length)
        real(digest, fd, offset, length)

    monkeypatch.setattr(archive, "hash_range", counting)
    return counted


def test_stamped_files_are_hashed_once_into_the_archive_digest_only(
    tmp_path: Path, alice, monkeypatch
) -> None:
    stage, model, stamps, known = _stamped_stage(tmp_path)
    reference = _pack_with(tmp_path, alice, stage, "a", known_digests=known)
    counted = _hashed_bytes(monkeypatch)
    once = _pack_with(tmp_path, alice, stage, "b", known_digests=known, stamps=stamps)
    assert once.path.read_bytes() == reference.path.read_bytes()
    assert once.signature_path.read_bytes() == reference.signature_path.read_bytes()
    payload = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    size = (stage / model).stat().st_size
    assert sum(counted) == 2 * payload - size  # the model: archive digest only; rest: both


def test_a_stamp_the_file_no_longer_shows_means_a_rehash_that_catches_the_change(
    tmp_path: Path, alice
) -> None:
    stage, model, stamps, known = _stamped_stage(tmp_path)
    data = bytearray((stage / model).read_bytes())
    data[100] ^= 1  # same size; the write moves the mtime
    (stage / model).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="changed after they were hashed") as failed:
        _pack_with(tmp_path, alice, stage, "o", known_digests=known, stamps=stamps)
    assert [p for p in failed.value.problems if p.startswith(model + ":")]
    assert list((tmp_path / "o").iterdir()) == []


def test_a_stamped_file_written_to_during_the_copy_fails_the_pack(
    tmp_path: Path, alice, monkeypatch
) -> None:
    import bundler.bundle.pack as archive

    stage, model, stamps, known = _stamped_stage(tmp_path)
    monkeypatch.setattr(archive, "COPY_CHUNK", 4096)
    assert (stage / model).stat().st_size > 2 * 4096
    real_copy = archive._Copier.copy
    touched: list[int] = []

    def copy(self, src: int, dst: int, offset: int, n: int) -> int:
        done = real_copy(self, src, dst, offset, n)
        if not touched and os.readlink(f"/proc/self/fd/{src}").endswith(model):
            touched.append(done)  # after the model's first chunk: a same-size write into it
            with open(stage / model, "r+b") as f:
                f.seek(3 * 4096)
                f.write(b"\0")
        return done

    monkeypatch.setattr(archive._Copier, "copy", copy)
    with pytest.raises(IntegrityError, match=r"was modified .* while it was being packed"):
        _pack_with(tmp_path, alice, stage, "o", known_digests=known, stamps=stamps)
    assert touched
    assert list((tmp_path / "o").iterdir()) == []


def test_a_stamp_faked_by_setting_the_mtime_back_gives_a_bundle_verify_refuses(
    tmp_path: Path, alice
) -> None:
    """The documented limit of stamps: such a writer is caught later, never let through."""
    from bundler.bundle.verify import verify_bundle

    stage, model, stamps, known = _stamped_stage(tmp_path)
    st = os.stat(stage / model)
    data = bytearray((stage / model).read_bytes())
    data[100] ^= 1
    (stage / model).write_bytes(bytes(data))
    os.utime(stage / model, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = _pack_with(tmp_path, alice, stage, "o", known_digests=known, stamps=stamps)
    with pytest.raises(AirlockError) as refused:
        verify_bundle(result.path, policy_for(tmp_path, [alice]))
    assert [p for p in refused.value.problems if model in p]


def test_small_copy_chunks_give_the_same_bundle(tmp_path: Path, alice, monkeypatch) -> None:
    import bundler.bundle.pack as archive
    import bundler.bundle.region as region

    stage = make_stage(tmp_path)
    a = _pack_with(tmp_path, alice, stage, "a")
    monkeypatch.setattr(archive, "COPY_CHUNK", 4097)
    monkeypatch.setattr(region, "HASH_WINDOW", 3000)
    b = _pack_with(tmp_path, alice, stage, "b")
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.signature_path.read_bytes() == b.signature_path.read_bytes()


def test_file_changed_since_it_was_hashed_fails_the_pack_and_leaves_nothing(
    tmp_path: Path, alice
) -> None:
    stage = make_stage(tmp_path)
    known = _staged_digests(stage)
    model = stage / "models/tiny/tiny.gguf"
    data = bytearray(model.read_bytes())
    data[1000] ^= 1  # same size, one bit differs from what the download hashed
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="changed after they were hashed") as failed:
        _pack_with(tmp_path, alice, stage, "o", known_digests=known)
    assert [p for p in failed.value.problems if p.startswith("models/tiny/tiny.gguf:")]
    assert len(failed.value.problems) == 1
    assert list((tmp_path / "o").iterdir()) == []


def test_known_digests_must_be_sha256_hex(tmp_path: Path, alice) -> None:
    stage = make_stage(tmp_path)
    with pytest.raises(UsageError, match="64 lowercase hex"):
        _pack_with(tmp_path, alice, stage, "o", known_digests={"README.md": "ABC"})


def test_a_file_system_without_mmap_gives_the_same_bundle(
    tmp_path: Path, alice, monkeypatch
) -> None:
    import errno
    import mmap

    stage = make_stage(tmp_path)
    a = _pack_with(tmp_path, alice, stage, "a")
    b_known = _staged_digests(stage)

    def no_mmap(*args, **kwargs):
        raise OSError(errno.ENODEV, "no mmap here")

    monkeypatch.setattr(mmap, "mmap", no_mmap)
    b = _pack_with(tmp_path, alice, stage, "b")
    c = _pack_with(tmp_path, alice, stage, "c", known_digests=b_known)
    assert a.path.read_bytes() == b.path.read_bytes() == c.path.read_bytes()
    assert a.signature_path.read_bytes() == b.signature_path.read_bytes()


def test_a_durable_pack_starts_writeback_for_every_copied_byte(
    tmp_path: Path, alice, monkeypatch
) -> None:
    """The disk starts writing while pack copies (the final fsync is then mostly done)."""
    import bundler.bundle.pack as archive

    asked: list[tuple[int, int, int]] = []

    def record(fd: int, offset: int, length: int, flags: int) -> int:
        asked.append((offset, length, flags))
        return 0

    monkeypatch.setattr(archive, "_SYNC_FILE_RANGE", record)
    monkeypatch.setattr(archive, "COPY_CHUNK", 4096)
    stage = make_stage(tmp_path)
    result = _pack_with(tmp_path, alice, stage, "o", durable=True)
    staged = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    assert sum(length for _, length, _ in asked) == staged
    assert {flags for *_, flags in asked} == {2}  # SYNC_FILE_RANGE_WRITE: start, never wait
    assert all(offset + length <= result.size for offset, length, _ in asked)


@pytest.mark.parametrize("split", [None, 1500])
@pytest.mark.parametrize("durable", [False, True])
def test_only_a_durable_pack_waits_for_the_disk_before_the_rename(
    tmp_path: Path, alice, monkeypatch, durable: bool, split
) -> None:
    """--fsync: bundle (or each part) flushed before it gets its name; else no waiting."""
    import bundler.bundle.pack as archive

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("rename " + Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(archive, "_SYNC_FILE_RANGE", lambda *a: events.append("writeback") or 0)
    stage = make_stage(tmp_path)
    result = _pack_with(tmp_path, alice, stage, "o", durable=durable, split=split)
    payloads = (
        [p.name for p in result.parts] if split else [result.path.name]
    )  # the .sig and .parts files are small and always flushed (write_atomic)
    assert len(payloads) >= (2 if split else 1)
    for name in payloads:
        renamed = events.index("rename " + name)
        tmp = re.compile(rf"fsync \.{re.escape(name)}\.(\w+\.)?tmp")
        flushed = [i for i, e in enumerate(events) if tmp.fullmatch(e)]
        if durable:
            assert flushed and flushed[-1] < renamed, events
        else:
            assert not flushed, events
    assert ("writeback" in events) == (durable and not split)
