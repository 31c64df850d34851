"""Standard-library reader of the airlock bundle format: the metadata region and the payload.

Runs on target hosts (Python 3.8+, no third-party imports) and inside the bundler. Tar
headers are parsed by hand (:mod:`runtime.tarformat`), never by ``tarfile``, and must be
exactly what airlock's writer emits; manifests are held to :mod:`runtime.manifest`,
signature members to :mod:`runtime.sigformat`, the payload pass is :mod:`runtime.payload`
(docs/FORMAT.md, "Archive"). This module is the one the bundler imports: it re-exports the
names both sides share.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from typing import IO, Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from runtime.errors import ArchiveFormatError, IntegrityError
from runtime.manifest import (
    BUNDLE_COMPONENT,
    FORMAT_NAME,
    MAX_MANIFEST_BYTES,
    MAX_PATH_BYTES,
    SCHEMA_VERSION,
    TOP_LEVEL_FILES,
    component_of,
    created_epoch,
    manifest_problems,
    parse_manifest,
    parse_time,
    path_problem,
)
from runtime.payload import check_payload, walk_headers
from runtime.sigformat import SIGNATURE_DIR, signature_problem
from runtime.tarformat import (
    BLOCK,
    MODES,
    PAX_NAME,
    RECORD,
    Header,
    StreamReader,
    member_header,
    padded,
    read_header,
)
from runtime.text import printable, text_problem

__all__ = [
    "BLOCK",
    "BUNDLE_COMPONENT",
    "FORMAT_NAME",
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "MAX_PATH_BYTES",
    "MODES",
    "PAX_NAME",
    "RECORD",
    "REGION_ALIGN",
    "RESERVE_NAME",
    "SCHEMA_VERSION",
    "SIGNATURE_DIR",
    "TOP_LEVEL_FILES",
    "BundleMetadata",
    "Header",
    "check_payload",
    "component_of",
    "created_epoch",
    "manifest_problems",
    "member_header",
    "open_bytes",
    "parse_manifest",
    "parse_time",
    "path_problem",
    "printable",
    "read_member",
    "read_metadata",
    "read_metadata_stream",
    "text_problem",
    "verify_stream",
    "walk_headers",
]

MANIFEST_NAME = "airlock/manifest.json"
RESERVE_NAME = "airlock/reserve"
REGION_ALIGN = 4096  # the metadata region ends on a 4 KiB boundary
MAX_SIGNATURE_BYTES = 16 * 1024
MAX_SIGNATURES = 256
MAX_RESERVE_BYTES = 64 * 1024 * 1024
MAX_MEMBER_READ = 64 * 1024 * 1024
_SIGNATURE_FILE = re.compile(r"\Aairlock/signatures/[A-Za-z0-9_-]{43}\.sig\Z")
_CRAFTED = "someone crafted or altered this archive; do not use it"
_NOT_A_BUNDLE = "check that you passed the bundle .tar (or the .parts index of a split bundle)"


class BundleMetadata(NamedTuple):
    """The metadata region of a bundle, read and format-checked but NOT signature-checked.

    ``signature_problems`` lists (member, why) for signature members that are not shaped
    as airlock writes them; it is empty unless the reader was asked to collect them.
    """

    manifest_bytes: bytes
    manifest: Dict[str, Any]
    manifest_sha256: str
    signatures: List[Tuple[str, bytes]]
    payload_offset: int
    reserve_size: int
    signature_problems: Tuple[Tuple[str, str], ...] = ()


# --------------------------------------------------------------------------- metadata region


def read_metadata_stream(
    stream: IO[bytes],
    *,
    manifest_sha256: Optional[str] = None,
    collect_signature_problems: bool = False,
) -> BundleMetadata:
    """Read the metadata region (manifest, signatures, reserve) from the stream's start.

    With ``manifest_sha256`` (the digest a controller verified) the manifest bytes are
    compared with it before they are parsed. A signature member that is not an SSHSIG as
    airlock writes it is refused, unless ``collect_signature_problems``: it is then listed
    in ``signature_problems`` (for verify to report beside the trust decision).
    Raises ArchiveFormatError (malformed or over its limits) or IntegrityError (digest).
    """
    reader = StreamReader(stream)
    try:
        header = read_header(reader)
    except ArchiveFormatError as e:
        raise ArchiveFormatError(
            f"this is not an airlock bundle: {e.message}",
            hint=_NOT_A_BUNDLE,
        ) from None
    if header is None or header.path != MANIFEST_NAME:
        raise ArchiveFormatError(
            f"the first member is not {MANIFEST_NAME}; this is not an airlock bundle",
            hint=_NOT_A_BUNDLE,
        )
    mtime = header.mtime
    if header.size > MAX_MANIFEST_BYTES:
        raise ArchiveFormatError(
            f"manifest member is {header.size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit"
        )
    _metadata_mode(header)
    manifest_bytes = _read_data(reader, header, "the manifest")
    signatures: List[Tuple[str, bytes]] = []
    problems: List[Tuple[str, str]] = []
    while True:
        header = read_header(reader, mtime=mtime)
        if header is None:
            raise ArchiveFormatError(f"archive ends before {RESERVE_NAME}", hint=_CRAFTED)
        _metadata_mode(header)
        if header.path == RESERVE_NAME:
            reserve_size = _check_reserve(reader, header)
            break
        _check_signature_header(header, signatures)
        data = _read_data(reader, header, header.path)
        why = signature_problem(header.path, data)
        if why is not None:
            problems.append((header.path, why))
        signatures.append((header.path, data))
    if reader.offset % REGION_ALIGN:
        raise ArchiveFormatError(
            f"the metadata region ends at byte {reader.offset}, not on a"
            f" {REGION_ALIGN}-byte boundary as airlock writes it",
            hint=_CRAFTED,
        )
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    if manifest_sha256 is not None and digest != manifest_sha256.lower():
        raise IntegrityError(
            f"manifest sha256 is {digest}, expected {manifest_sha256}",
            hint="this is not the bundle the controller verified; copy the verified bundle again",
        )
    manifest = parse_manifest(manifest_bytes)
    if created_epoch(manifest) != mtime:
        raise ArchiveFormatError(
            f"the tar headers' mtime {mtime} is not the manifest's created time"
            f" {manifest['created']}",
            hint=_CRAFTED,
        )
    if problems and not collect_signature_problems:
        raise ArchiveFormatError(
            f"{len(problems)} signature members are not SSH signatures as airlock writes them",
            problems=[f"{name}: {why}" for name, why in problems],
            hint="a bundle carries nothing but the manifest, its signatures and zero padding in"
            " its metadata region; obtain the bundle again from its builder",
        )
    return BundleMetadata(
        manifest_bytes=manifest_bytes,
        manifest=manifest,
        manifest_sha256=digest,
        signatures=signatures,
        payload_offset=reader.offset,
        reserve_size=reserve_size,
        signature_problems=tuple(problems),
    )


def _metadata_mode(header: Header) -> None:
    if header.mode != 0o644:
        raise ArchiveFormatError(
            f"metadata member {header.path!r} has mode {header.mode:o}; airlock writes 0644",
            hint=_CRAFTED,
        )


def _check_reserve(reader: StreamReader, header: Header) -> int:
    if header.size > MAX_RESERVE_BYTES:
        raise ArchiveFormatError(f"reserve member of {header.size} bytes is over the limit")
    if _read_data(reader, header, "the reserve").count(0) != header.size:
        raise ArchiveFormatError(
            f"{RESERVE_NAME} holds non-zero bytes; it must be zero padding",
            hint="someone modified this archive; obtain it again from its builder",
        )
    return header.size


def _check_signature_header(header: Header, signatures: List[Tuple[str, bytes]]) -> None:
    if not _SIGNATURE_FILE.match(header.path):
        raise ArchiveFormatError(
            f"unexpected member {header.path!r} in the metadata region (only"
            f" {SIGNATURE_DIR}<key id>.sig and {RESERVE_NAME} may follow the manifest)",
            hint=_CRAFTED,
        )
    if header.size > MAX_SIGNATURE_BYTES:
        raise ArchiveFormatError(
            f"signature {header.path!r} is over the {MAX_SIGNATURE_BYTES}-byte limit"
        )
    if len(signatures) >= MAX_SIGNATURES:
        raise ArchiveFormatError(f"more than {MAX_SIGNATURES} signatures")
    if signatures and header.path.encode() <= signatures[-1][0].encode():
        raise ArchiveFormatError(f"signature {header.path!r} is duplicated or out of order")


def read_metadata(
    bundle: os.PathLike[str] | str, *, collect_signature_problems: bool = False
) -> BundleMetadata:
    """The metadata region of the bundle file at ``bundle`` (reads only that region)."""
    with open(bundle, "rb") as f:
        return read_metadata_stream(f, collect_signature_problems=collect_signature_problems)


def _read_data(reader: StreamReader, header: Header, what: str) -> bytes:
    data = reader.exact(header.size, what)
    if reader.exact(padded(header.size) - header.size, what + " padding").count(0) != (
        padded(header.size) - header.size
    ):
        raise ArchiveFormatError(f"non-zero padding after {what}", hint=_CRAFTED)
    return data


# --------------------------------------------------------------------------- payload


def verify_stream(
    stream: IO[bytes],
    manifest_sha256: str,
    *,
    progress: Optional[Callable[[int], None]] = None,
) -> Tuple[BundleMetadata, int, int]:
    """Check a bundle stream against a manifest digest verified elsewhere (by the controller).

    Returns (metadata, files, bytes). Raises IntegrityError or ArchiveFormatError.
    """
    meta = read_metadata_stream(stream, manifest_sha256=manifest_sha256)
    files, total = check_payload(
        stream, meta.manifest, offset=meta.payload_offset, progress=progress
    )
    return meta, files, total


def read_member(
    bundle: os.PathLike[str] | str,
    path: str,
    *,
    manifest: Dict[str, Any],
    payload_offset: Optional[int] = None,
    limit: int = MAX_MEMBER_READ,
) -> bytes:
    """Seek to one small payload member and return its bytes, checked against ``manifest``.

    Reads only headers (512 bytes each) and the member's data. Raises IntegrityError when
    the bytes do not match, ArchiveFormatError when the member is absent or too large.
    """
    entry = next((e for e in manifest["files"] if e["path"] == path), None)
    if entry is None:
        raise ArchiveFormatError(f"{path} is not listed in the bundle's manifest")
    if entry["size"] > limit:
        raise ArchiveFormatError(
            f"{path} is {entry['size']} bytes, over the {limit}-byte read limit"
        )
    mtime = created_epoch(manifest)
    with open(bundle, "rb") as f:
        if payload_offset is None:
            payload_offset = read_metadata_stream(f, collect_signature_problems=True).payload_offset
        f.seek(payload_offset)
        reader = StreamReader(f, payload_offset)
        while True:
            header = read_header(reader, mtime=mtime)
            if header is None:
                raise ArchiveFormatError(f"{path} is listed in the manifest but not in the archive")
            if header.path == path:
                if header.size != entry["size"]:
                    raise IntegrityError(
                        f"{path}: archive says {header.size} bytes, manifest says {entry['size']}"
                    )
                data = reader.exact(header.size, path)
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise IntegrityError(
                        f"{path}: sha256 does not match the signed manifest",
                        hint="the bundle was altered or damaged; copy it again and re-verify",
                    )
                return data
            reader.skip(padded(header.size), header.path)


def open_bytes(data: bytes) -> IO[bytes]:
    """A seekable stream over bytes (tests and small in-memory bundles)."""
    return io.BytesIO(data)
