"""Deterministic single-pass bundle writer (hash while writing) and in-place co-signing.

Layout (docs/FORMAT.md, "Archive"): a metadata region sized up front from the file list
(manifest, signatures, zero ``airlock/reserve``), then the payload sorted by path. The
payload is streamed once while hashed; the region is written last into the space kept for
it, so no input byte is read twice.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import stat
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from bundler.bundle.manifest import Builder, Component, FileEntry, Manifest, check_path
from bundler.errors import IntegrityError, UsageError
from bundler.fsio import FileStamp, atomic_file, write_atomic
from bundler.ssh import sig as sshsig
from bundler.ssh.keys import Signer
from runtime.bundle import (
    BLOCK,
    BUNDLE_COMPONENT,
    MANIFEST_NAME,
    PAX_NAME,
    RECORD,
    RESERVE_NAME,
    SIGNATURE_DIR,
    component_of,
)

SUMS_NAME = "SHA256SUMS"
CHUNK = 1 << 20
# Pack copies each staged file into the archive in chunks of COPY_CHUNK with the kernel
# (copy_file_range; no user-space copy) and hashes each chunk from the archive's page cache
# (a read-only mmap window) on a second thread while the next chunk is copied; the digest is
# therefore of exactly the bytes in the archive. At most two chunks are mapped at a time, so
# memory stays flat whatever the bundle size. docs/DEVELOPING.md, "Performance", has numbers.
COPY_CHUNK = 16 << 20
HASH_WINDOW = 16 << 20  # mmap window for hashing the finished archive
SIGNATURE_ALLOWANCE = 1024  # header + padded armored Ed25519 SSHSIG (about 300 bytes)
COSIGN_SLOTS = 16  # co-signatures that fit in place before a rewrite is needed
REGION_ALIGN = 4096
_MAX_OCTAL_SIZE = 8**11 - 1
# The whole-archive SSHSIG hashes with sha256: PROTOCOL.sshsig allows it, every
# `ssh-keygen -Y verify` accepts it, and with SHA extensions it is about twice as fast as
# sha512 over a multi-GB tar (the one extra read pack cannot avoid).
ARCHIVE_HASH = "sha256"

Progress = Optional[Callable[[int], None]]


@dataclass(frozen=True)
class PackResult:
    """A written bundle: the tar (or its split index), its whole-archive signature."""

    path: Path
    signature_path: Path
    manifest_sha256: str
    size: int
    files: int
    payload_bytes: int
    signers: tuple[str, ...]
    parts: tuple[Path, ...] = ()
    index: Optional[Path] = None


@dataclass(frozen=True)
class _Source:
    path: str
    src: Optional[Path]
    size: int
    mode: str


# --------------------------------------------------------------------------- tar headers


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + len(str(len(body)))
    if len(str(length)) != len(str(length - len(body))):
        length = len(body) + len(str(length))
    return str(length).encode("ascii") + body


def _block(name: bytes, size: int, mode: int, mtime: int, typeflag: bytes) -> bytes:
    header = bytearray(BLOCK)
    header[0 : len(name)] = name
    header[100:108] = b"%07o\0" % mode
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"%011o\0" % mtime
    header[148:156] = b" " * 8
    header[156:157] = typeflag
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[329:337] = b"0000000\0"
    header[337:345] = b"0000000\0"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def member_header(path: str, size: int, mode: int, mtime: int) -> bytes:
    """The header block(s) of one regular file; a PAX header only when ustar cannot hold it."""
    raw = path.encode("utf-8")
    records = b""
    if len(raw) > 100 or not raw.isascii():
        records += _pax_record("path", path)
    if size > _MAX_OCTAL_SIZE:
        records += _pax_record("size", str(size))
    out = b""
    if records:
        out = _block(PAX_NAME.encode(), len(records), 0o644, mtime, b"x") + _pad(records)
    name = raw if len(raw) <= 100 and raw.isascii() else raw[:100]
    return out + _block(name, 0 if size > _MAX_OCTAL_SIZE else size, mode, mtime, b"0")


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def _member(path: str, data: bytes, mtime: int) -> bytes:
    return member_header(path, len(data), 0o644, mtime) + _pad(data)


def build_region(
    manifest_bytes: bytes, signatures: Sequence[tuple[str, bytes]], size: int, mtime: int
) -> Optional[bytes]:
    """The metadata region of exactly ``size`` bytes, or None when it does not fit."""
    head = _member(MANIFEST_NAME, manifest_bytes, mtime)
    for name, sig in sorted(signatures, key=lambda s: s[0].encode()):
        head += _member(name, sig, mtime)
    for header_len in (BLOCK, 3 * BLOCK):  # a plain ustar header, or one with a PAX size
        reserve = size - len(head) - header_len
        if reserve < 0:
            return None
        header = member_header(RESERVE_NAME, reserve, 0o644, mtime)
        if len(header) == header_len:
            return head + header + b"\0" * reserve
    return None


def signature_name(signer: Signer) -> str:
    return f"{SIGNATURE_DIR}{sshsig.signature_id(signer.public_key)}.sig"


# --------------------------------------------------------------------------- pack


def scan_stage(stage: Path) -> list[_Source]:
    """Every regular file under ``stage`` with its bundle path; refuses links and specials."""
    found: list[_Source] = []
    problems: list[str] = []
    if not stage.is_dir():
        raise UsageError(f"{stage} is not a directory", hint="pass the staged bundle directory")
    for root, dirs, files in os.walk(stage, followlinks=False):
        dirs.sort()
        for name in [*dirs, *files]:
            full = Path(root) / name
            rel = full.relative_to(stage).as_posix()
            st = full.lstat()
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{rel}: not a regular file (links and devices are never bundled)")
                continue
            try:
                check_path(rel)
            except UsageError as e:
                problems.append(e.message)
                continue
            if rel == SUMS_NAME:
                problems.append(f"{rel}: pack writes this file itself; remove it from the stage")
                continue
            if rel.startswith("airlock/"):
                problems.append(f"{rel}: airlock/ is reserved for bundle metadata")
                continue
            mode = "0755" if st.st_mode & 0o111 else "0644"
            found.append(_Source(rel, full, st.st_size, mode))
    if problems:
        raise UsageError(
            f"{len(problems)} staged files cannot be bundled",
            problems=problems,
            hint="replace links with the files they point to, and rename the paths named",
        )
    return found


def _sums_line(path: str, digest: str) -> bytes:
    return f"{digest}  {path}\n".encode()


def pack(
    stage: Path,
    *,
    name: str,
    version: str,
    sequence: int,
    expires: datetime,
    components: Mapping[str, Mapping[str, Any]],
    signers: Sequence[Signer],
    out_dir: Path,
    source_date_epoch: Optional[int] = None,
    split: Optional[int] = None,
    progress: Progress = None,
    known_digests: Optional[Mapping[str, str]] = None,
    stamps: Optional[Mapping[str, FileStamp]] = None,
    durable: bool = False,
) -> PackResult:
    """Write ``<out_dir>/<name>-<version>.tar`` (and ``.tar.sig``) from the staged files.

    ``components`` maps a component (first path segment) to ``{"type", "properties"}``.
    ``known_digests`` maps bundle paths to the sha256 the caller already has (hashed while
    downloading, index digests): pack then writes the archive in one pass, hashing the
    whole archive while writing it; files it lacks are hashed first. Each file is re-hashed
    as written, and one that differs from its given digest fails the pack, except where
    ``stamps`` holds the fsio.FileStamp under which the given digest was computed and the
    file still shows it before and after it is copied: its bytes are then only hashed into
    the whole-archive digest (one hash pass instead of two; a stamp that no longer matches
    before the copy means a re-hash, one that changes during the copy fails the pack).
    ``durable`` flushes the bundle (or its parts) to disk before renaming it into place and
    returning; by default the kernel writes it back in the background, as ``tar`` and ``cp``
    leave theirs (the rename is atomic either way: no reader or interrupted run ever sees a
    partial bundle under the final name; a power loss before writeback can, and verify
    refuses it; the same inputs rebuild the same bytes).
    Raises UsageError (bad stage or arguments), IntegrityError (a file changed while read,
    or differs from its given digest; nothing is written).
    """
    if not signers:
        raise UsageError("no signing key given", hint="pass at least one --key")
    ids = [signature_name(s) for s in signers]
    if len(set(ids)) != len(ids):
        raise UsageError("the same key was given twice", hint="give each --key once")
    if source_date_epoch is None and os.environ.get("SOURCE_DATE_EPOCH"):
        source_date_epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    mtime = int(time.time()) if source_date_epoch is None else source_date_epoch
    created = datetime.fromtimestamp(mtime, tz=timezone.utc)
    if out_dir.resolve().is_relative_to(stage.resolve()):
        raise UsageError(
            f"the output directory {out_dir} is inside the stage {stage}",
            hint="write the bundle outside the directory being packed",
        )
    sources = scan_stage(stage)
    sums_size = sum(len(_sums_line(s.path, "0" * 64)) for s in sources)
    sources.append(_Source(SUMS_NAME, None, sums_size, "0644"))
    sources.sort(key=lambda s: s.path.encode())
    comps = {c: _component(c, components) for c in sorted({component_of(s.path) for s in sources})}
    comps.pop(BUNDLE_COMPONENT, None)
    for cname in components:
        comps.setdefault(cname, _component(cname, components))
    if BUNDLE_COMPONENT in components:
        comps[BUNDLE_COMPONENT] = _component(BUNDLE_COMPONENT, components)

    def manifest_for(digests: Mapping[str, str]) -> Manifest:
        return Manifest(
            name=name,
            version=version,
            sequence=sequence,
            created=created,
            expires=expires,
            builder=Builder.current(),
            components=comps,
            files=[
                FileEntry(s.path, s.size, digests.get(s.path, "0" * 64), s.mode) for s in sources
            ],
        )

    planned = manifest_for({}).to_bytes()
    region_size = metadata_region_size(len(planned), len(signers))
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}-{version}.tar"
    # With digests known before the first byte is written (the build pipeline hashed models
    # while downloading, wheels have index digests), the region is written FIRST and the
    # whole-archive hash runs in the same pass as the payload copy: no second read of the tar.
    # Every file is still hashed as it lies in the archive and compared with what was given.
    digests: dict[str, str] = {}
    whole: Optional[_Whole] = None
    sums = b""
    if known_digests is not None:
        digests = _digests_up_front(sources, known_digests)
        sums = b"".join(_sums_line(s.path, digests[s.path]) for s in sources if s.src)
        digests[SUMS_NAME] = hashlib.sha256(sums).hexdigest()
    with atomic_file(final) as (tmp, out):
        fd = out.fileno()  # every write below is positional; ``out``'s buffer stays empty
        if known_digests is not None:
            manifest_bytes, region = _sign_region(
                manifest_for(digests), signers, region_size, mtime
            )
            pwrite_all(fd, region, 0)
            whole = _Whole(region)
        pos = region_size
        sums_offset = 0
        payload = 0
        problems: list[str] = []
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="airlock-hash")
        try:
            for s in sources:
                mode = 0o755 if s.mode == "0755" else 0o644
                pos += _pwrite_fed(fd, member_header(s.path, s.size, mode, mtime), pos, whole)
                if s.src is None:
                    sums_offset = pos  # written below, once every digest is known
                    if whole is not None:
                        _pwrite_fed(fd, sums, pos, whole)
                else:
                    stamp = (stamps or {}).get(s.path) if whole is not None else None
                    got = _copy(
                        s,
                        fd,
                        pos,
                        pool,
                        progress,
                        whole,
                        writeback=durable and not split,
                        stamp=stamp,
                    )
                    if whole is None:
                        assert got is not None
                        digests[s.path] = got
                    elif got is not None and got != digests[s.path]:
                        problems.append(
                            f"{s.path}: sha256 is {got} but {digests[s.path]} was given for it"
                        )
                pos += s.size
                pos += _pwrite_fed(fd, b"\0" * (-s.size % BLOCK), pos, whole)
                payload += s.size
            end = b"\0" * (2 * BLOCK)
            pos += _pwrite_fed(fd, end + b"\0" * (-(pos + len(end)) % RECORD), pos, whole)
        finally:
            pool.shutdown()
            if whole is not None:
                whole.close()
        if problems:
            raise IntegrityError(
                f"{len(problems)} staged files changed after they were hashed",
                problems=problems,
                hint="find what wrote into the stage directory, then build or pack again",
            )
        size = pos
        if whole is None:
            sums = b"".join(_sums_line(s.path, digests[s.path]) for s in sources if s.src)
            digests[SUMS_NAME] = hashlib.sha256(sums).hexdigest()
            pwrite_all(fd, sums, sums_offset)
            manifest_bytes, region = _sign_region(
                manifest_for(digests), signers, region_size, mtime
            )
            pwrite_all(fd, region, 0)
        assert len(sums) == sums_size and len(manifest_bytes) == len(planned)
        if not split and whole is not None:
            if durable:
                os.fsync(fd)
            sig_path = write_archive_signature(final, signers[-1], whole.digest())
        elif not split:
            # Hash the finished archive (from the page cache), beside the fsync if durable.
            with ThreadPoolExecutor(max_workers=1) as reader:
                digest = reader.submit(archive_digest, tmp, region=region)
                if durable:
                    os.fsync(out.fileno())
                sig_path = write_archive_signature(final, signers[-1], digest.result())
        else:
            # No fsync: this tar is only the source of the parts and is deleted.
            from bundler.bundle.split import write_parts

            index = write_parts(
                tmp, final, split, signer=signers[-1], region=region, durable=durable
            )
            tmp.unlink()
            return PackResult(
                path=index.index,
                signature_path=index.signature_path,
                manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
                size=size,
                files=len(sources),
                payload_bytes=payload,
                signers=tuple(s.public_key.fingerprint for s in signers),
                parts=index.parts,
                index=index.index,
            )
    from bundler.bundle.cosign import journal_path

    journal_path(final).unlink(missing_ok=True)  # about the bundle just replaced, if any
    return PackResult(
        path=final,
        signature_path=sig_path,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        size=size,
        files=len(sources),
        payload_bytes=payload,
        signers=tuple(s.public_key.fingerprint for s in signers),
    )


class _Whole:
    """The whole-archive hash fed in archive order by one worker thread (single-pass pack)."""

    def __init__(self, region: bytes) -> None:
        self.hash = hashlib.new(ARCHIVE_HASH, region)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="airlock-archive-hash")

    def feed(self, data: bytes) -> None:
        if data:
            self.pool.submit(self.hash.update, data)

    def feed_range(self, fd: int, offset: int, length: int) -> Future[None]:
        return self.pool.submit(_hash_range, self.hash, fd, offset, length)

    def close(self) -> None:
        self.pool.shutdown()

    def digest(self) -> bytes:
        self.pool.shutdown()
        return self.hash.digest()


def _pwrite_fed(fd: int, data: bytes, offset: int, whole: Optional[_Whole]) -> int:
    if whole is not None:
        whole.feed(data)
    return pwrite_all(fd, data, offset)


def _digests_up_front(sources: Sequence[_Source], known: Mapping[str, str]) -> dict[str, str]:
    """The given digests of the staged files; the files without one are hashed now."""
    bad = sorted(p for p, d in known.items() if not _is_sha256_hex(d))
    if bad:
        raise UsageError(
            f"{len(bad)} known digests are not 64 lowercase hex characters",
            problems=[f"{p}: {known[p]!r}" for p in bad],
        )
    out: dict[str, str] = {}
    for s in sources:
        if s.src is None:
            continue
        digest = known.get(s.path)
        if digest is None:  # read, not mmap: a staged file truncated meanwhile is no SIGBUS
            h = hashlib.sha256()
            with open(s.src, "rb", buffering=0) as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            digest = h.hexdigest()  # a size change is caught when the file is copied
        out[s.path] = digest
    return out


def _is_sha256_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _sign_region(
    manifest: Manifest, signers: Sequence[Signer], region_size: int, mtime: int
) -> tuple[bytes, bytes]:
    """The manifest bytes and the metadata region carrying every signer's signature."""
    manifest_bytes = manifest.to_bytes()
    signatures = [
        (signature_name(s), sshsig.sign(manifest_bytes, s, namespace=sshsig.MANIFEST_NAMESPACE))
        for s in signers
    ]
    region = build_region(manifest_bytes, signatures, region_size, mtime)
    if region is None:  # pragma: no cover - the allowance covers Ed25519 signatures
        raise UsageError("signatures are larger than the space kept for them")
    return manifest_bytes, region


def _component(name: str, components: Mapping[str, Mapping[str, Any]]) -> Component:
    spec = components.get(name)
    if spec is None:
        return Component(type="files")
    return Component(type=str(spec.get("type", "files")), properties=spec.get("properties", {}))


def metadata_region_size(manifest_len: int, signers: int) -> int:
    # manifest header (with room for a PAX header) and padding, reserve header
    used = 3 * BLOCK + manifest_len + BLOCK + BLOCK
    used += (signers + COSIGN_SLOTS) * SIGNATURE_ALLOWANCE
    return (used + REGION_ALIGN - 1) // REGION_ALIGN * REGION_ALIGN


def pwrite_all(fd: int, data: bytes, offset: int) -> int:
    """``os.pwrite`` all of ``data`` at ``offset``, through short writes."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


def _load_sync_file_range() -> Optional[Callable[[int, int, int, int], int]]:
    """libc's sync_file_range(2) (Linux, 64-bit), or None where there is none."""
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - every Linux libc has it
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``[offset, offset+length)`` to disk now, without waiting.

    Only a head start for the final fsync (which alone makes the bundle durable): the disk
    works while pack still copies and hashes, instead of after it. A no-op without
    sync_file_range(2) or when it fails (the fsync then does all of the work).
    """
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


# copy_file_range(2) refuses some pairs of files (across file systems on some kernels,
# on some file systems at all); pack then copies through sendfile(2), then read/write.
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}
_NO_KERNEL_COPY.add(getattr(errno, "ENOTSUP", errno.EOPNOTSUPP))


class _Copier:
    """Copies ``n`` bytes from a file's current position to ``offset`` in the archive."""

    def __init__(self) -> None:
        self.methods = ["copy_file_range", "sendfile", "read"]

    def copy(self, src: int, dst: int, offset: int, n: int) -> int:
        while True:
            method = self.methods[0]
            try:
                if method == "copy_file_range":
                    return os.copy_file_range(src, dst, n, None, offset)
                if method == "sendfile":
                    os.lseek(dst, offset, os.SEEK_SET)
                    return os.sendfile(dst, src, None, n)
                data = os.read(src, n)
                return pwrite_all(dst, data, offset) if data else 0
            except OSError as e:
                if method == "read" or e.errno not in _NO_KERNEL_COPY:
                    raise
                self.methods.pop(0)  # nothing was copied; try the next way


def _hash_range(digest: Any, fd: int, offset: int, length: int) -> None:
    """Feed ``length`` bytes of ``fd`` from ``offset`` into ``digest`` through an mmap window.

    Falls back to pread on a file system that cannot map files.
    """
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        m = mmap.mmap(fd, offset + length - base, access=mmap.ACCESS_READ, offset=base)
    except OSError:
        _hash_by_pread(digest, fd, offset, length)
        return
    with m, memoryview(m) as whole, whole[offset - base :] as view:
        digest.update(view)


def _hash_by_pread(digest: Any, fd: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        data = os.pread(fd, min(CHUNK, end - offset), offset)
        if not data:
            raise IntegrityError(f"the file being hashed ended early at byte {offset}")
        digest.update(data)
        offset += len(data)


def _copy(
    s: _Source,
    fd: int,
    offset: int,
    pool: ThreadPoolExecutor,
    progress: Progress,
    whole: Optional[_Whole] = None,
    *,
    writeback: bool = False,
    stamp: Optional[FileStamp] = None,
) -> Optional[str]:
    """Copy one staged file to ``offset`` in the archive while hashing it; returns its sha256.

    The kernel copies chunk i+1 while ``pool`` hashes chunk i as it now lies in the archive
    (so the digest is of the archive's bytes, even if the source changes meanwhile); every
    source byte is read once. With a ``stamp`` the file still shows, only ``whole`` hashes
    it and None is returned (the digest the stamp vouches for stands). Raises
    IntegrityError when the file changes size, or its stamp while it is copied.
    """
    assert s.src is not None
    digest = hashlib.sha256()
    pending: list[Future[None]] = []
    copier = _Copier()
    remaining = s.size
    try:
        with open(s.src, "rb", buffering=0) as f:
            src = f.fileno()
            vouched = stamp is not None and FileStamp.of(os.fstat(src)) == stamp
            while remaining:
                n = copier.copy(src, fd, offset, min(remaining, COPY_CHUNK))
                if not n:
                    break
                for p in pending:  # one chunk in flight per hash: memory stays bounded
                    p.result()
                pending = [] if vouched else [pool.submit(_hash_range, digest, fd, offset, n)]
                if whole is not None:
                    pending.append(whole.feed_range(fd, offset, n))
                if writeback:
                    start_writeback(fd, offset, n)
                offset += n
                remaining -= n
                if progress is not None:
                    progress(n)
            grew = bool(f.read(1))
            moved = vouched and FileStamp.of(os.fstat(src)) != stamp
    finally:
        for p in pending:
            p.result()
    if remaining or grew or moved:
        what = "changed size" if remaining or grew else "was modified (its mtime moved)"
        raise IntegrityError(
            f"{s.path} {what} while it was being packed",
            hint="stop whatever is writing into the stage directory and pack again",
        )
    return None if vouched else digest.hexdigest()


def archive_digest(tar: Path, *, region: bytes, progress: Progress = None) -> bytes:
    """ARCHIVE_HASH of the whole archive: the (in-memory) region, then the file after it.

    Reads the file through mmap windows of HASH_WINDOW bytes (no copy into Python buffers).
    """
    h = hashlib.new(ARCHIVE_HASH, region)
    with open(tar, "rb", buffering=0) as f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        offset = len(region)
        while offset < end:
            n = min(HASH_WINDOW, end - offset)
            _hash_range(h, fd, offset, n)
            offset += n
            if progress is not None:
                progress(n)
    return h.digest()


def archive_signature(signer: Signer, digest: bytes) -> bytes:
    """The armored SSHSIG (airlock-archive-v1) for a tar whose ARCHIVE_HASH is ``digest``."""
    return sshsig.sign_digest(
        digest, signer, namespace=sshsig.ARCHIVE_NAMESPACE, hash_algorithm=ARCHIVE_HASH
    )


def write_archive_signature(final: Path, signer: Signer, digest: bytes) -> Path:
    """Write ``<final>.sig``: SSHSIG (airlock-archive-v1) given the tar's ARCHIVE_HASH digest."""
    sig_path = Path(str(final) + ".sig")
    write_atomic(sig_path, archive_signature(signer, digest))
    return sig_path
