"""The co-sign redo journal, and the proof that a journal belongs to this bundle and manifest.

An in-place co-sign writes its new metadata region and ``.tar.sig`` to
``<bundle>.cosign-journal`` before it overwrites the region, so a crash can be finished by
replaying the journal (bundler/bundle/cosign.py). The journal lies beside the bundle, where
anyone who can drop a file can plant one, and the replay needs no key; so it is replayed
only when it proves itself against the bundle, and otherwise refused with nothing written:

- it records the region the co-sign started from and the manifest digest it signed;
- both regions carry byte-identical manifests with that digest (a co-sign adds one
  signature; it never changes the manifest, its sequence or its files);
- the new region has the old signatures plus exactly one, which verifies over that
  manifest and is filed under its key's name;
- the bundle on disk is the one the co-sign started from: in place, every byte of its
  region is the old or the new byte (a torn write) and its size is unchanged; after a
  rewrite, it starts with the new region at the recorded size (or still the old one);
- the ``.tar.sig`` to write verifies over the bundle as it will be, by that same key.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bundler.bundle.region import archive_digest, journal_path
from bundler.errors import ArchiveFormatError, IntegrityError, SignatureError
from bundler.fsio import read_small
from bundler.ssh import sig as sshsig
from runtime.bundle import SIGNATURE_DIR, BundleMetadata, read_metadata_stream

FORMAT = "airlock-cosign-journal"
VERSION = 2
MAX_JOURNAL_BYTES = 64 << 20  # two regions in base64; a region is at most a few MiB
MODES = ("in-place", "rewrite")


@dataclass(frozen=True)
class CosignJournal:
    """What an interrupted co-sign was writing, and what it started from."""

    mode: str  # "in-place" (region overwritten) or "rewrite" (new archive renamed into place)
    bundle_size: int  # the bundle's size once the co-sign is done
    manifest_sha256: str  # the manifest the co-signer signed (and the bundle carries)
    base_region: bytes  # the metadata region before the co-sign
    region: bytes  # the metadata region after it
    archive_signature: bytes  # the new <bundle>.tar.sig

    def encode(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "mode": self.mode,
                "bundle_size": self.bundle_size,
                "manifest_sha256": self.manifest_sha256,
                "base_region_sha256": hashlib.sha256(self.base_region).hexdigest(),
                "base_region": base64.b64encode(self.base_region).decode("ascii"),
                "region_sha256": hashlib.sha256(self.region).hexdigest(),
                "region": base64.b64encode(self.region).decode("ascii"),
                "archive_signature": self.archive_signature.decode("ascii"),
            },
            sort_keys=True,
        ).encode()


def _hint(bundle: Path) -> str:
    name = journal_path(bundle).name
    return (
        f"do not use {bundle.name}: restore it and its .sig from their source, delete {name}, "
        "and co-sign again"
    )


def read_journal(bundle: Path) -> CosignJournal:
    """The journal beside ``bundle``; raises ArchiveFormatError when it is unreadable."""
    path = journal_path(bundle)
    try:
        record: Any = json.loads(read_small(path, MAX_JOURNAL_BYTES))
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError("not an airlock co-sign journal")
        if record.get("version") != VERSION:
            raise ValueError(
                f"journal version {record.get('version')!r}; this airlock replays only "
                f"version {VERSION}, which proves which bundle and manifest it belongs to"
            )
        journal = CosignJournal(
            mode=record["mode"],
            bundle_size=record["bundle_size"],
            manifest_sha256=record["manifest_sha256"],
            base_region=base64.b64decode(record["base_region"], validate=True),
            region=base64.b64decode(record["region"], validate=True),
            archive_signature=str(record["archive_signature"]).encode("ascii"),
        )
        ok = (
            journal.mode in MODES
            and isinstance(journal.bundle_size, int)
            and isinstance(journal.manifest_sha256, str)
            and hashlib.sha256(journal.base_region).hexdigest() == record["base_region_sha256"]
            and hashlib.sha256(journal.region).hexdigest() == record["region_sha256"]
        )
    except (OSError, ValueError, KeyError, TypeError, UnicodeError) as e:
        raise ArchiveFormatError(
            f"cannot read the co-sign journal {path}: {e}", hint=_hint(bundle)
        ) from e
    if not ok:
        raise ArchiveFormatError(f"the co-sign journal {path} is damaged", hint=_hint(bundle))
    return journal


def _region(data: bytes, what: str, bundle: Path) -> BundleMetadata:
    try:
        meta = read_metadata_stream(io.BytesIO(data))
    except ArchiveFormatError as e:
        raise IntegrityError(
            f"the co-sign journal of {bundle} holds a damaged {what}: {e.message}",
            hint=_hint(bundle),
        ) from e
    if meta.payload_offset != len(data):
        raise IntegrityError(
            f"the co-sign journal of {bundle} holds a {what} of the wrong size", hint=_hint(bundle)
        )
    return meta


def _torn(head: bytes, old: bytes, new: bytes) -> bool:
    """Whether ``head`` is what a crash while overwriting ``old`` with ``new`` can leave."""
    return len(head) == len(old) == len(new) and all(h in (o, n) for h, o, n in zip(head, old, new))


def prove(bundle: Path, journal: CosignJournal, *, expect_manifest: Optional[str] = None) -> bool:
    """Check that ``journal`` belongs to ``bundle`` (module docstring); raises IntegrityError.

    Returns True when the journal is to be applied, False when it is to be dropped: a
    rewrite that crashed before its rename left the old bundle, whole and unchanged.
    ``expect_manifest`` is the manifest digest the co-signer was shown, if they pinned one.
    """
    where = f"the co-sign journal {journal_path(bundle)}"
    base = _region(journal.base_region, "starting region", bundle)
    new = _region(journal.region, "new region", bundle)
    if new.manifest_bytes != base.manifest_bytes or new.manifest_sha256 != journal.manifest_sha256:
        raise IntegrityError(
            f"{where} would replace the manifest of {bundle} (sha256 {base.manifest_sha256}) "
            f"with another (sha256 {new.manifest_sha256}); a co-sign never changes the manifest",
            hint=_hint(bundle) + "; someone may have planted the journal",
        )
    if expect_manifest is not None and journal.manifest_sha256 != expect_manifest:
        raise IntegrityError(
            f"{where} co-signs manifest sha256 {journal.manifest_sha256}, not the "
            f"{expect_manifest} given with --manifest-sha256",
            hint="check that this is the bundle you reviewed",
        )
    added = [s for s in new.signatures if s not in base.signatures]
    if len(added) != 1 or len(new.signatures) != len(base.signatures) + 1:
        raise IntegrityError(f"{where} does not add exactly one signature", hint=_hint(bundle))
    name, armored = added[0]
    try:
        key = sshsig.verify(new.manifest_bytes, armored, namespace=sshsig.MANIFEST_NAMESPACE)
    except SignatureError as e:
        raise IntegrityError(
            f"{where} adds a bad signature: {e.message}", hint=_hint(bundle)
        ) from e
    if name != f"{SIGNATURE_DIR}{sshsig.signature_id(key)}.sig":
        raise IntegrityError(f"{where} files the signature under another key's name")
    with open(bundle, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(max(len(journal.base_region), len(journal.region)))
    region, old = journal.region, journal.base_region
    if journal.mode == "in-place":
        if size != journal.bundle_size or not _torn(head[: len(region)], old, region):
            raise IntegrityError(
                f"{where} was not started from {bundle} as it is now", hint=_hint(bundle)
            )
    elif not (size == journal.bundle_size and head.startswith(region)):
        if head.startswith(old):
            return False  # the rename never happened: the old bundle is intact
        raise IntegrityError(f"{where} was not started from {bundle} as it is now")
    try:
        archive = sshsig.parse(journal.archive_signature)
        signer = sshsig.verify_digest(
            archive_digest(bundle, region=region), archive, namespace=sshsig.ARCHIVE_NAMESPACE
        )
    except SignatureError as e:
        raise IntegrityError(
            f"{where} holds a .tar.sig that does not verify over the co-signed bundle: {e.message}",
            hint=_hint(bundle),
        ) from e
    if signer.blob != key.blob:
        raise IntegrityError(f"{where} holds a .tar.sig by another key than the co-signer's")
    return True
