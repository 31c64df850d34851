"""Deterministic single-pass bundle writer: the payload copied by the kernel, hashed as written.

Layout (docs/FORMAT.md, "Archive"): a metadata region sized up front from the file list
(manifest, signatures, zero ``airlock/reserve``; :mod:`bundler.bundle.region`), then the
payload sorted by path. The payload is streamed once while hashed; the region is written
last into the space kept for it (or first, when the digests are known), so no input byte is
read twice.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
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
from bundler.bundle.region import (
    ARCHIVE_HASH,
    CHUNK,
    Progress,
    archive_digest,
    hash_range,
    journal_path,
    member_header,
    metadata_region_size,
    pwrite_all,
    sign_region,
    signature_name,
    write_archive_signature,
)
from bundler.bundle.split import write_parts
from bundler.errors import IntegrityError, UsageError
from bundler.fsio import FileStamp, atomic_file
from bundler.ssh.keys import Signer
from runtime.bundle import BLOCK, BUNDLE_COMPONENT, RECORD, component_of

SUMS_NAME = "SHA256SUMS"
# Pack copies each staged file into the archive in chunks of COPY_CHUNK with the kernel
# (copy_file_range; no user-space copy) and hashes each chunk from the archive's page cache
# (a read-only mmap window) on a second thread while the next chunk is copied; the digest is
# therefore of exactly the bytes in the archive. At most two chunks are mapped at a time, so
# memory stays flat whatever the bundle size. docs/DEVELOPING.md, "Performance", has numbers.
COPY_CHUNK = 16 << 20


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
            manifest_bytes = manifest_for(digests).to_bytes()
            region = sign_region(manifest_bytes, signers, region_size, mtime)
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
            manifest_bytes = manifest_for(digests).to_bytes()
            region = sign_region(manifest_bytes, signers, region_size, mtime)
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
        return self.pool.submit(hash_range, self.hash, fd, offset, length)

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


def _component(name: str, components: Mapping[str, Mapping[str, Any]]) -> Component:
    spec = components.get(name)
    if spec is None:
        return Component(type="files")
    return Component(type=str(spec.get("type", "files")), properties=spec.get("properties", {}))


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
                pending = [] if vouched else [pool.submit(hash_range, digest, fd, offset, n)]
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
