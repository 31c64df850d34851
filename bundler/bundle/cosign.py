"""Co-signing an existing bundle: one more manifest signature, in place or by a rewrite.

In place when the signature fits the metadata region's reserve (the payload is checked and
the new whole-archive digest computed in one read, then the region rewritten through a redo
journal), otherwise by one streaming copy into a new archive with a larger region. The
co-signer signs the manifest the bundle already carries, and is shown what that is first.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from bundler.bundle.journal import CosignJournal, prove, read_journal
from bundler.bundle.region import (
    ARCHIVE_HASH,
    Progress,
    archive_signature,
    build_region,
    journal_path,
    metadata_region_size,
    pwrite_all,
    signature_name,
)
from bundler.errors import ArchiveFormatError, IntegrityError, UsageError
from bundler.fsio import atomic_file, write_atomic
from bundler.ssh import sig as sshsig
from bundler.ssh.keys import Signer
from runtime.bundle import BundleMetadata, check_payload, read_metadata_stream


@dataclass(frozen=True)
class CosignTarget:
    """What the co-signer is about to sign: the bundle's identity and its manifest digest."""

    name: str
    version: str
    sequence: int
    manifest_sha256: str


@dataclass(frozen=True)
class CosignResult:
    """A co-signed bundle: which signature was added and whether it fit in place."""

    path: Path
    signature_path: Path
    added: str
    in_place: bool
    signatures: tuple[str, ...]
    target: CosignTarget


Show = Optional[Callable[[CosignTarget], None]]


def _target(meta: BundleMetadata) -> CosignTarget:
    m = meta.manifest
    return CosignTarget(m["name"], m["version"], m["sequence"], meta.manifest_sha256)


def _read(bundle: Path) -> tuple[BundleMetadata, bytes]:
    """The metadata region, parsed from the very bytes that will be kept in the journal."""
    with open(bundle, "rb") as f:
        offset = read_metadata_stream(f).payload_offset
        f.seek(0)
        base = f.read(offset)
    meta = read_metadata_stream(io.BytesIO(base))
    if meta.payload_offset != offset:
        raise IntegrityError(f"{bundle} changed while it was being read; co-sign it again")
    return meta, base


def _mtime(meta: BundleMetadata) -> int:
    try:
        created = datetime.strptime(meta.manifest["created"], "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError) as e:
        raise ArchiveFormatError(f"the manifest's created time is unreadable: {e}") from e
    return int(created.replace(tzinfo=timezone.utc).timestamp())


def cosign(
    bundle: Path,
    signer: Signer,
    *,
    expect_manifest: Optional[str] = None,
    show: Show = None,
    progress: Progress = None,
) -> CosignResult:
    """Add ``signer``'s signature over the manifest; rewrite only the metadata region.

    A leftover journal (``<bundle>.cosign-journal``) of an interrupted co-sign is replayed
    first, only once it proves it belongs to this bundle and manifest (bundler/bundle/
    journal.py). Then ``show`` is told the name, version, sequence and manifest digest about
    to be signed; with ``expect_manifest`` (a sha256 the co-signer reviewed) any other
    manifest is refused. The payload is checked against the manifest (a co-signer vouches
    for the bytes) in the pass that computes the new whole-archive digest; the region is
    rewritten through a redo journal, or the archive copied when the reserve is full.
    Raises UsageError (already signed by that key), IntegrityError (a journal that does not
    belong, another manifest than expected, damaged bytes) or ArchiveFormatError; nothing is
    changed when it raises before writing.
    """
    if bundle.name.endswith(".parts"):
        raise UsageError(
            f"{bundle} is a split bundle's index; co-signing rewrites the archive",
            hint="airlock join it, co-sign the .tar, then split it again if needed",
        )
    try:
        kind = os.stat(bundle).st_mode
    except OSError as e:
        raise UsageError(
            f"cannot read {bundle}: {e.strerror or e}", hint="pass the bundle .tar to co-sign"
        ) from e
    if not stat.S_ISREG(kind):
        raise UsageError(f"{bundle} is not a regular file", hint="pass the bundle .tar to co-sign")
    recovered = recover_cosign(bundle, expect_manifest=expect_manifest)
    meta, base = _read(bundle)
    target = _target(meta)
    if expect_manifest is not None and target.manifest_sha256 != expect_manifest:
        raise IntegrityError(
            f"{bundle} carries manifest sha256 {target.manifest_sha256} "
            f"({target.name} {target.version}, sequence {target.sequence}), not the "
            f"{expect_manifest} given with --manifest-sha256; nothing was signed",
            hint="check that this is the bundle you reviewed",
        )
    if show is not None:
        show(target)
    name = signature_name(signer)
    listed = tuple(n for n, _ in sorted(meta.signatures, key=lambda s: s[0].encode()))
    if name in listed:
        if recovered:  # the interrupted co-sign was this one: it is now complete
            return CosignResult(bundle, Path(str(bundle) + ".sig"), name, True, listed, target)
        raise UsageError(
            f"{bundle} is already signed by {signer.public_key.fingerprint}",
            hint="co-sign with a different key",
        )
    sig = sshsig.sign(meta.manifest_bytes, signer, namespace=sshsig.MANIFEST_NAMESPACE)
    signatures = [*meta.signatures, (name, sig)]
    mtime = _mtime(meta)
    region = build_region(meta.manifest_bytes, signatures, meta.payload_offset, mtime)
    in_place = region is not None
    if region is None:
        size = metadata_region_size(len(meta.manifest_bytes), len(signatures))
        region = build_region(meta.manifest_bytes, signatures, size, mtime)
        assert region is not None
    h = hashlib.new(ARCHIVE_HASH, region)
    with open(bundle, "rb") as f:
        if f.read(len(base)) != base:
            raise IntegrityError(f"{bundle} changed while it was being co-signed; run it again")
        if in_place:
            check_payload(f, meta.manifest, offset=meta.payload_offset, observe=h.update)
        else:
            with atomic_file(bundle) as (_tmp, out):
                out.write(region)

                def tee(chunk: Any) -> None:
                    h.update(chunk)
                    out.write(chunk)

                check_payload(f, meta.manifest, offset=meta.payload_offset, observe=tee)
                out.flush()
                os.fsync(out.fileno())
                archive_sig = archive_signature(signer, h.digest())
                _write_journal(bundle, meta, base, region, archive_sig, "rewrite", out.tell())
            # the new archive is in place (rename): now its .tar.sig
            _apply_journal(bundle, region, archive_sig, mode="rewrite")
    if in_place:
        archive_sig = archive_signature(signer, h.digest())
        size = bundle.stat().st_size
        _write_journal(bundle, meta, base, region, archive_sig, "in-place", size)
        _apply_journal(bundle, region, archive_sig, mode="in-place")
    return CosignResult(
        path=bundle,
        signature_path=Path(str(bundle) + ".sig"),
        added=name,
        in_place=in_place,
        signatures=tuple(n for n, _ in sorted(signatures, key=lambda s: s[0].encode())),
        target=target,
    )


# ------------------------------------------------------------------ co-sign journal
#
# Rewriting the region in place is not atomic: a crash (power, kill -9, full disk) midway
# could leave a half-old, half-new region and a .tar.sig over other bytes. So the new
# region and the new .tar.sig are first written, whole and fsynced, to a redo journal
# ``<bundle>.cosign-journal`` (with the region it replaces and the manifest digest, which
# prove where it belongs: bundler/bundle/journal.py); then the region is overwritten and
# fsynced, the .tar.sig replaced atomically, and the journal removed. Replaying a journal is
# idempotent and needs no key: ``airlock sign`` replays a leftover one, once proven, before
# anything else; ``airlock verify`` refuses a bundle that has one (docs/FORMAT.md, "Metadata
# region"). A rewrite (reserve full) is atomic by its rename; its journal only carries the
# .tar.sig across a crash between the rename and the .tar.sig.


def _write_journal(
    bundle: Path,
    meta: BundleMetadata,
    base: bytes,
    region: bytes,
    archive_sig: bytes,
    mode: str,
    size: int,
) -> None:
    journal = CosignJournal(mode, size, meta.manifest_sha256, base, region, archive_sig)
    write_atomic(journal_path(bundle), journal.encode())


def _apply_journal(bundle: Path, region: bytes, archive_sig: bytes, *, mode: str) -> None:
    """Redo: the region in place (fsynced; in-place mode only), the .tar.sig, drop the journal."""
    if mode == "in-place":
        fd = os.open(bundle, os.O_WRONLY)
        try:
            pwrite_all(fd, region, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    write_atomic(Path(str(bundle) + ".sig"), archive_sig)
    journal_path(bundle).unlink()


def recover_cosign(bundle: Path, *, expect_manifest: Optional[str] = None) -> bool:
    """Finish a co-sign that was interrupted (replay ``<bundle>.cosign-journal``).

    The journal is first proven to belong to this bundle and its manifest (journal.prove);
    in place, the region and .tar.sig are then rewritten from it. A rewrite (reserve full)
    that crashed before its rename left the old, consistent bundle: the journal is dropped;
    after the rename, only the .tar.sig is still to write. Returns True when the interrupted
    co-sign is now complete, False when there was none or it was dropped. Raises
    ArchiveFormatError (unreadable journal) or IntegrityError (a journal that does not
    belong here); the bundle, its .sig and the journal are then left as they are.
    """
    if not journal_path(bundle).exists():
        return False
    journal = read_journal(bundle)
    if not prove(bundle, journal, expect_manifest=expect_manifest):
        journal_path(bundle).unlink()
        return False
    _apply_journal(bundle, journal.region, journal.archive_signature, mode=journal.mode)
    return True


def refuse_pending_cosign(bundle: Path) -> None:
    """Raise IntegrityError when an interrupted co-sign left a journal beside ``bundle``.

    For read-only checks (verify): the metadata region may be half-written, so the bundle's
    bytes are not the ones anybody signed until the co-sign is finished.
    """
    journal = journal_path(bundle)
    if journal.exists():
        raise IntegrityError(
            f"a co-sign of {bundle} was interrupted ({journal.name} is still there); its "
            "metadata region and .sig may be half-written",
            hint=f"finish it: run `airlock sign {bundle} --key KEY` again (any co-signer's "
            "key; the journal is replayed first, once it proves it belongs to the bundle), "
            "then verify again",
        )
