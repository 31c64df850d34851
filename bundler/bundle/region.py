"""The metadata region and the archive's framing: tar headers, the region, the archive signature.

docs/FORMAT.md, "Archive": the manifest, one signature per signer and a zero-filled
``airlock/reserve`` form a metadata region of a size fixed before the payload is written,
so co-signing rewrites only the region in place. The whole-archive SSHSIG
(``<bundle>.tar.sig``, namespace airlock-archive-v1) covers the region and the payload.
Pack, co-sign and split share these primitives; none of them imports another for them.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from bundler.errors import IntegrityError, UsageError
from bundler.fsio import write_atomic
from bundler.ssh import sig as sshsig
from bundler.ssh.keys import Signer
from runtime.bundle import (
    BLOCK,
    MANIFEST_NAME,
    REGION_ALIGN,
    RESERVE_NAME,
    SIGNATURE_DIR,
)
from runtime.bundle import member_header as member_header  # pack writes payload headers

CHUNK = 1 << 20
HASH_WINDOW = 16 << 20  # mmap window for hashing the finished archive
SIGNATURE_ALLOWANCE = 1024  # header + padded armored Ed25519 SSHSIG (about 300 bytes)
COSIGN_SLOTS = 16  # co-signatures that fit in place before a rewrite is needed
# The whole-archive SSHSIG hashes with sha256: PROTOCOL.sshsig allows it, every
# `ssh-keygen -Y verify` accepts it, and with SHA extensions it is about twice as fast as
# sha512 over a multi-GB tar (the one extra read pack cannot avoid).
ARCHIVE_HASH = "sha256"

Progress = Optional[Callable[[int], None]]


# --------------------------------------------------------------------------- tar headers
# One header writer for both sides: runtime.tarformat.member_header, which the readers also
# rebuild every header with and compare byte for byte.


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


def sign_region(
    manifest_bytes: bytes, signers: Sequence[Signer], region_size: int, mtime: int
) -> bytes:
    """The metadata region of ``region_size`` bytes: the manifest and every signer's signature."""
    signatures = [
        (signature_name(s), sshsig.sign(manifest_bytes, s, namespace=sshsig.MANIFEST_NAMESPACE))
        for s in signers
    ]
    region = build_region(manifest_bytes, signatures, region_size, mtime)
    if region is None:  # pragma: no cover - the allowance covers Ed25519 signatures
        raise UsageError("signatures are larger than the space kept for them")
    return region


# --------------------------------------------------------------------------- archive signature


def hash_range(digest: Any, fd: int, offset: int, length: int) -> None:
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
            hash_range(h, fd, offset, n)
            offset += n
            if progress is not None:
                progress(n)
    return h.digest()


def archive_signature(signer: Signer, digest: bytes) -> bytes:
    """The armored SSHSIG (airlock-archive-v1) for a tar whose ARCHIVE_HASH is ``digest``."""
    return sshsig.sign_digest(
        digest, signer, namespace=sshsig.ARCHIVE_NAMESPACE, hash_algorithm=ARCHIVE_HASH
    )


def journal_path(bundle: Path) -> Path:
    """``<bundle>.cosign-journal``: the redo journal of an in-place co-sign (bundle.cosign),
    beside the bundle like its ``.tar.sig``; pack removes a stale one, verify refuses one."""
    return Path(str(bundle) + ".cosign-journal")


def write_archive_signature(final: Path, signer: Signer, digest: bytes) -> Path:
    """Write ``<final>.sig``: SSHSIG (airlock-archive-v1) given the tar's ARCHIVE_HASH digest."""
    sig_path = Path(str(final) + ".sig")
    write_atomic(sig_path, archive_signature(signer, digest))
    return sig_path
