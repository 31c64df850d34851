"""Co-signing an existing bundle: one more manifest signature, in place or by a rewrite.

In place when the signature fits the metadata region's reserve (the payload is checked and
the new whole-archive digest computed in one read, then the region rewritten through a redo
journal), otherwise by one streaming copy into a new archive with a larger region.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
from runtime.bundle import check_payload, read_metadata_stream


@dataclass(frozen=True)
class CosignResult:
    """A co-signed bundle: which signature was added and whether it fit in place."""

    path: Path
    signature_path: Path
    added: str
    in_place: bool
    signatures: tuple[str, ...]


def cosign(bundle: Path, signer: Signer, *, progress: Progress = None) -> CosignResult:
    """Add ``signer``'s signature over the manifest; rewrite only the metadata region.

    The payload is checked against the manifest first (a co-signer vouches for the bytes),
    in the same pass that computes the new whole-archive digest. Falls back to a streaming
    copy when the reserve is exhausted. An in-place rewrite goes through a redo journal
    (``<bundle>.cosign-journal``) so a crash never leaves a half-written region; a leftover
    journal is replayed first (re-running the interrupted co-sign just finishes it).
    Raises UsageError (already signed by that key), IntegrityError / ArchiveFormatError
    (the bundle or a leftover journal is damaged; nothing is changed).
    """
    if bundle.name.endswith(".parts"):
        raise UsageError(
            f"{bundle} is a split bundle's index; co-signing rewrites the archive",
            hint="airlock join it, co-sign the .tar, then split it again if needed",
        )
    recovered = recover_cosign(bundle)
    with open(bundle, "rb") as f:
        meta = read_metadata_stream(f)
    name = signature_name(signer)
    if any(n == name for n, _ in meta.signatures):
        if recovered:  # the interrupted co-sign was this one: it is now complete
            return CosignResult(
                path=bundle,
                signature_path=Path(str(bundle) + ".sig"),
                added=name,
                in_place=True,
                signatures=tuple(
                    n for n, _ in sorted(meta.signatures, key=lambda s: s[0].encode())
                ),
            )
        raise UsageError(
            f"{bundle} is already signed by {signer.public_key.fingerprint}",
            hint="co-sign with a different key",
        )
    sig = sshsig.sign(meta.manifest_bytes, signer, namespace=sshsig.MANIFEST_NAMESPACE)
    signatures = [*meta.signatures, (name, sig)]
    mtime = int(
        datetime.strptime(meta.manifest["created"], "%Y-%m-%dT%H:%M:%SZ")
        .replace(tzinfo=timezone.utc)
        .timestamp()
    )
    region = build_region(meta.manifest_bytes, signatures, meta.payload_offset, mtime)
    in_place = region is not None
    if region is None:
        size = metadata_region_size(len(meta.manifest_bytes), len(signatures))
        region = build_region(meta.manifest_bytes, signatures, size, mtime)
        assert region is not None
    h = hashlib.new(ARCHIVE_HASH, region)
    with open(bundle, "rb") as f:
        f.seek(meta.payload_offset)
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
                _write_journal(bundle, region, archive_sig, mode="rewrite", size=out.tell())
            # the new archive is in place (rename): now its .tar.sig
            _apply_journal(bundle, region, archive_sig, mode="rewrite")
    if in_place:
        archive_sig = archive_signature(signer, h.digest())
        _write_journal(bundle, region, archive_sig, mode="in-place", size=bundle.stat().st_size)
        _apply_journal(bundle, region, archive_sig, mode="in-place")
    sig_path = Path(str(bundle) + ".sig")
    return CosignResult(
        path=bundle,
        signature_path=sig_path,
        added=name,
        in_place=in_place,
        signatures=tuple(n for n, _ in sorted(signatures, key=lambda s: s[0].encode())),
    )


# ------------------------------------------------------------------ co-sign journal
#
# Rewriting the region in place is not atomic: a crash (power, kill -9, full disk) midway
# could leave a half-old, half-new region and a .tar.sig over other bytes. So the new
# region and the new .tar.sig are first written, whole and fsynced, to a redo journal
# ``<bundle>.cosign-journal``; then the region is overwritten and fsynced, the .tar.sig
# replaced atomically, and the journal removed. Replaying a journal is idempotent and needs
# no key: ``airlock sign`` replays a leftover one before anything else; ``airlock verify``
# refuses a bundle that has one (docs/FORMAT.md, "Metadata region"). A rewrite (reserve
# full) is atomic by its rename; its journal only carries the .tar.sig across a crash
# between the rename and the .tar.sig.

_JOURNAL_FORMAT = "airlock-cosign-journal"


def _write_journal(
    bundle: Path, region: bytes, archive_sig: bytes, *, mode: str, size: int
) -> None:
    record = {
        "format": _JOURNAL_FORMAT,
        "version": 1,
        "mode": mode,
        "bundle_size": size,
        "region_sha256": hashlib.sha256(region).hexdigest(),
        "region": base64.b64encode(region).decode("ascii"),
        "archive_signature": archive_sig.decode("ascii"),
    }
    write_atomic(journal_path(bundle), json.dumps(record, sort_keys=True).encode())


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


def _read_journal(bundle: Path) -> tuple[str, int, bytes, bytes]:
    path = journal_path(bundle)
    hint = f"restore {bundle.name} and its .sig from their source, then delete {path.name}"
    try:
        record = json.loads(path.read_bytes())
        region = base64.b64decode(record["region"], validate=True)
        archive_sig = str(record["archive_signature"]).encode("ascii")
        mode, size = record["mode"], record["bundle_size"]
        ok = (
            record["format"] == _JOURNAL_FORMAT
            and record["version"] == 1
            and mode in ("in-place", "rewrite")
            and isinstance(size, int)
            and hashlib.sha256(region).hexdigest() == record["region_sha256"]
            and 0 < len(region) < size
            and (mode == "rewrite" or size == bundle.stat().st_size)
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArchiveFormatError(f"cannot read the co-sign journal {path}: {e}", hint=hint) from e
    if not ok:
        raise ArchiveFormatError(
            f"the co-sign journal {path} does not belong to {bundle} or is damaged", hint=hint
        )
    return mode, size, region, archive_sig


def recover_cosign(bundle: Path) -> bool:
    """Finish a co-sign that was interrupted (replay ``<bundle>.cosign-journal``).

    In place: the region and .tar.sig are rewritten from the journal. A rewrite (reserve
    full) that crashed before its rename left the old, consistent bundle: the journal is
    dropped; after the rename, only the .tar.sig is still to write. Returns True when the
    interrupted co-sign is now complete, False when there was none or it was dropped.
    Raises ArchiveFormatError when the journal is damaged or belongs to another file.
    """
    if not journal_path(bundle).exists():
        return False
    mode, size, region, archive_sig = _read_journal(bundle)
    if mode == "rewrite":
        with open(bundle, "rb") as f:
            renamed = os.fstat(f.fileno()).st_size == size and f.read(len(region)) == region
        if not renamed:
            journal_path(bundle).unlink()
            return False
    _apply_journal(bundle, region, archive_sig, mode=mode)
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
            "key; the journal is replayed first), then verify again",
        )
