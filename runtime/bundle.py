"""Standard-library reader of the airlock bundle format: metadata region and member checks.

Runs on target hosts (Python 3.8+, no third-party imports) and inside the bundler. Tar
headers are parsed here by hand, never by ``tarfile``, so that every field is checked
against the strict subset of POSIX tar that airlock writes (docs/FORMAT.md, "Archive").
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import unicodedata
from typing import IO, Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

from runtime.errors import ArchiveFormatError, IntegrityError

BLOCK = 512
RECORD = 10240
MANIFEST_NAME = "airlock/manifest.json"
SIGNATURE_DIR = "airlock/signatures/"
RESERVE_NAME = "airlock/reserve"
PAX_NAME = "././@PaxHeader"
FORMAT_NAME = "airlock-bundle"
SCHEMA_VERSION = 1

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_SIGNATURE_BYTES = 16 * 1024
MAX_SIGNATURES = 256
MAX_RESERVE_BYTES = 64 * 1024 * 1024
MAX_PAX_BYTES = 8 * 1024
MAX_PATH_BYTES = 4096
MAX_MEMBER_READ = 64 * 1024 * 1024
MAX_TRAILER_BYTES = 1024 * 1024
CHUNK = 1024 * 1024

MODES = {"0644": 0o644, "0755": 0o755}
TOP_LEVEL_FILES = ("SHA256SUMS", "README.md")
BUNDLE_COMPONENT = "bundle"
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_TIMESTAMP = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
_SIGNATURE_FILE = re.compile(r"\Aairlock/signatures/[A-Za-z0-9_.-]{1,128}\.sig\Z")


class Header(NamedTuple):
    """One tar member; ``offset`` is where its data starts, ``typeflag`` its tar type."""

    path: str
    size: int
    mode: int
    offset: int
    typeflag: bytes


class BundleMetadata(NamedTuple):
    """The metadata region of a bundle, read and bounds-checked but NOT signature-checked."""

    manifest_bytes: bytes
    manifest: Dict[str, Any]
    manifest_sha256: str
    signatures: List[Tuple[str, bytes]]
    payload_offset: int
    reserve_size: int


# --------------------------------------------------------------------------- paths


def path_problem(path: object) -> Optional[str]:
    """Why ``path`` is not an acceptable bundle path, or None when it is."""
    if not isinstance(path, str):
        return "path is not a string"
    if path == "":
        return "empty path"
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        return "path is not valid UTF-8"
    if len(raw) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes"
    if path.startswith("/"):
        return "absolute path"
    if "\\" in path:
        return "backslash in path"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "control character (NUL, newline, ...) in path"
    if unicodedata.normalize("NFC", path) != path:
        return "path is not in Unicode NFC form"
    for segment in path.split("/"):
        if segment == "":
            return "empty path segment"
        if segment == ".":
            return "'.' path segment"
        if segment == "..":
            return "'..' path segment (traversal)"
    return None


def component_of(path: str) -> str:
    """The component a payload path belongs to: its first segment, or ``bundle``."""
    return path.split("/", 1)[0] if "/" in path else BUNDLE_COMPONENT


# --------------------------------------------------------------------------- manifest


def _reject_float(value: str) -> Any:
    raise ValueError(f"floating-point number {value} (the manifest allows integers only)")


def _reject_constant(value: str) -> Any:
    raise ValueError(f"non-JSON constant {value}")


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def manifest_problems(manifest: object) -> List[str]:
    """Every way a decoded manifest breaks schema version 1 (empty list when valid)."""
    if not isinstance(manifest, dict):
        return ["manifest is not a JSON object"]
    problems: List[str] = []
    required = {
        "format",
        "schema_version",
        "name",
        "version",
        "sequence",
        "created",
        "expires",
        "builder",
        "components",
        "files",
    }
    for key in sorted(required - set(manifest)):
        problems.append(f"manifest: missing field {key!r}")
    for key in sorted(set(manifest) - required):
        problems.append(f"manifest: unknown field {key!r}")
    if manifest.get("format", FORMAT_NAME) != FORMAT_NAME:
        problems.append(f"manifest: format is not {FORMAT_NAME!r}")
    if manifest.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        problems.append(
            f"manifest: schema_version {manifest.get('schema_version')!r} is not supported"
            f" (this reader knows {SCHEMA_VERSION})"
        )
    for key in ("name", "version"):
        if key in manifest and (not isinstance(manifest[key], str) or not manifest[key]):
            problems.append(f"manifest: {key} must be a non-empty string")
    if "sequence" in manifest and not (_is_int(manifest["sequence"]) and manifest["sequence"] >= 0):
        problems.append("manifest: sequence must be a non-negative integer")
    for key in ("created", "expires"):
        value = manifest.get(key, "2000-01-01T00:00:00Z")
        if not isinstance(value, str) or not _TIMESTAMP.match(value):
            problems.append(
                f"manifest: {key} must be an RFC 3339 UTC time like 2026-01-31T00:00:00Z"
            )
    builder = manifest.get("builder", {})
    if not isinstance(builder, dict) or not all(isinstance(v, str) for v in builder.values()):
        problems.append("manifest: builder must be an object of strings")
    components = manifest.get("components", {})
    if not isinstance(components, dict):
        problems.append("manifest: components must be an object")
        components = {}
    for cname, comp in sorted(components.items()):
        if (
            not isinstance(comp, dict)
            or set(comp) != {"type", "properties"}
            or not isinstance(comp.get("type"), str)
            or not isinstance(comp.get("properties"), dict)
        ):
            problems.append(
                f"manifest: component {cname!r} must be {{type: string, properties: object}}"
            )
    files = manifest.get("files", [])
    if not isinstance(files, list):
        return [*problems, "manifest: files must be a list"]
    previous: Optional[bytes] = None
    paths: Set[str] = set()
    parents: Set[str] = set()
    for index, entry in enumerate(files):
        where = f"manifest: files[{index}]"
        if not isinstance(entry, dict) or set(entry) != {
            "path",
            "size",
            "sha256",
            "mode",
            "component",
        }:
            problems.append(f"{where} must have exactly path, size, sha256, mode, component")
            continue
        path = entry["path"]
        why = path_problem(path)
        if why is not None:
            problems.append(f"{where}: {path!r}: {why}")
            continue
        where = f"manifest: {path}"
        key = path.encode("utf-8")
        if path.startswith("airlock/"):
            problems.append(f"{where}: the airlock/ prefix is reserved for metadata")
        if previous is not None and key <= previous:
            problems.append(f"{where}: files are not sorted by path or the path repeats")
        previous = key
        paths.add(path)
        parts = path.split("/")
        parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if not (_is_int(entry["size"]) and entry["size"] >= 0):
            problems.append(f"{where}: size must be a non-negative integer")
        if not isinstance(entry["sha256"], str) or not _HEX64.match(entry["sha256"]):
            problems.append(f"{where}: sha256 must be 64 lowercase hex digits")
        if entry["mode"] not in MODES:
            problems.append(f'{where}: mode must be "0644" or "0755"')
        if entry["component"] != component_of(path):
            problems.append(f"{where}: component must be {component_of(path)!r}")
        elif entry["component"] != BUNDLE_COMPONENT and entry["component"] not in components:
            problems.append(
                "{}: component {!r} is not described in components".format(
                    where, entry["component"]
                )
            )
    for clash in sorted(paths & parents):
        problems.append(f"manifest: {clash} is both a file and a directory of other files")
    return problems


def parse_manifest(data: bytes) -> Dict[str, Any]:
    """Decode and check manifest bytes; never re-serialize them (they are what was signed).

    Raises ArchiveFormatError listing every problem.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ArchiveFormatError(
            f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit",
            hint="this is not a bundle airlock wrote; obtain the bundle again from its builder",
        )
    try:
        text = data.decode("utf-8")
        manifest = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_reject_float,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise ArchiveFormatError(
            f"manifest is not valid JSON: {e}",
            hint="the manifest bytes were damaged; obtain the bundle again from its builder",
        ) from e
    problems = manifest_problems(manifest)
    if problems:
        raise ArchiveFormatError(
            f"manifest breaks the bundle format ({len(problems)} problems)",
            problems=problems,
            hint="this bundle was not written by a compatible airlock; rebuild it",
        )
    result: Dict[str, Any] = manifest
    return result


# --------------------------------------------------------------------------- tar headers


def _octal(field: bytes, what: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    if not re.match(rb"\A[0-7]+\Z", text):
        raise ValueError(f"{what} field is not octal: {field!r}")
    return int(text, 8)


def _parse_pax(data: bytes) -> Dict[str, str]:
    records: Dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise ValueError("malformed PAX record")
        length = int(data[pos:space].decode("ascii"))
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise ValueError("malformed PAX record length")
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if not sep:
            raise ValueError("PAX record without '='")
        name = key.decode("utf-8")
        if name in records:
            raise ValueError(f"PAX record {name!r} repeats")
        records[name] = value.decode("utf-8")
        pos = end
    return records


_TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"5": "directory",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"g": "PAX global header",
    b"L": "GNU long name",
    b"K": "GNU long link name",
    b"S": "GNU sparse file",
}


class _Reader:
    """Exact reads from a binary stream, tracking the offset; ``observe`` sees every byte."""

    def __init__(self, stream: IO[bytes], offset: int = 0) -> None:
        self.stream = stream
        self.offset = offset
        self.observe: Optional[Callable[[Any], None]] = None

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes, fewer only at the end of the stream (short reads are retried)."""
        data = self.stream.read(n) or b""
        while 0 < len(data) < n:
            more = self.stream.read(n - len(data))
            if not more:
                break
            data += more
        self.offset += len(data)
        if self.observe is not None and data:
            self.observe(data)
        return data

    def exact(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise ArchiveFormatError(
                f"archive is truncated inside {what} at byte {self.offset}",
                hint="the transfer was cut short; copy the bundle again and compare its size",
            )
        return data


def _read_header(reader: _Reader) -> Optional[Header]:
    """The next member (optionally with a PAX path/size), or None at the end-of-archive marker.

    Raises ArchiveFormatError for malformed or truncated headers.
    """
    start = reader.offset
    block = reader.exact(BLOCK, "a tar header")
    if block == b"\0" * BLOCK:
        return None
    pax: Dict[str, str] = {}
    try:
        typeflag = block[156:157]
        if typeflag == b"x":
            pax_size = _check_block(block, start)
            if pax_size > MAX_PAX_BYTES:
                raise ValueError(f"PAX header of {pax_size} bytes is over the limit")
            data = reader.exact(_padded(pax_size), "a PAX header")[:pax_size]
            pax = _parse_pax(data)
            unknown = sorted(set(pax) - {"path", "size"})
            if unknown:
                raise ValueError("PAX keys {} are not accepted".format(", ".join(unknown)))
            start = reader.offset
            block = reader.exact(BLOCK, "a tar header")
            typeflag = block[156:157]
            if typeflag == b"x" or block == b"\0" * BLOCK:
                raise ValueError("PAX header not followed by a file header")
        size = _check_block(block, start)
    except ValueError as e:
        raise ArchiveFormatError(
            f"malformed tar header at byte {start}: {e}",
            hint="this is not a bundle airlock wrote, or it was damaged; obtain it again",
        ) from e
    if "path" in pax:
        path = pax["path"]
    else:
        name = block[0:100].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0]
        raw = prefix + b"/" + name if prefix else name
        try:
            path = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ArchiveFormatError(f"member name at byte {start} is not UTF-8") from e
    if "size" in pax:
        if not re.match(r"\A[0-9]{1,20}\Z", pax["size"]):
            raise ArchiveFormatError(f"malformed PAX size for {path!r} at byte {start}")
        size = int(pax["size"])
    try:
        mode = _octal(block[100:108], "mode")
    except ValueError as e:
        raise ArchiveFormatError(f"malformed tar header at byte {start}: {e}") from e
    return Header(path=path, size=size, mode=mode, offset=reader.offset, typeflag=typeflag)


def _type_problem(header: Header) -> Optional[str]:
    """Why a member's tar type is refused, or None for a regular file."""
    if header.typeflag == b"0":
        return None
    kind = _TYPE_NAMES.get(
        header.typeflag, "member of tar type {!r}".format(header.typeflag.decode("latin-1"))
    )
    return f"{header.path!r} is a {kind}; bundles contain regular files only"


def _check_block(block: bytes, start: int) -> int:
    """Validate magic and checksum of one header block; return its size field."""
    if block[257:263] not in (b"ustar\0", b"ustar "):
        raise ValueError("not a POSIX tar header (bad magic)")
    stored = _octal(block[148:156], "checksum")
    computed = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if stored != computed:
        raise ValueError(f"header checksum {stored} does not match {computed}")
    if block[124:125] == b"\x80" or block[124:125] == b"\xff":
        raise ValueError("base-256 size fields are not accepted (use PAX size)")
    return _octal(block[124:136], "size")


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


# --------------------------------------------------------------------------- metadata region


def read_metadata_stream(stream: IO[bytes]) -> BundleMetadata:
    """Read the metadata region (manifest, signatures, reserve) from the stream's start.

    Raises ArchiveFormatError when the region is malformed or over its limits.
    """
    reader = _Reader(stream)
    header = _read_header(reader)
    if header is None or header.path != MANIFEST_NAME or header.typeflag != b"0":
        raise ArchiveFormatError(
            f"the first member is not {MANIFEST_NAME}; this is not an airlock bundle",
            hint="check that you passed the bundle .tar (or the .parts index of a split bundle)",
        )
    if header.size > MAX_MANIFEST_BYTES:
        raise ArchiveFormatError(
            f"manifest member is {header.size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit"
        )
    manifest_bytes = _read_data(reader, header, "the manifest")
    signatures: List[Tuple[str, bytes]] = []
    reserve_size = -1
    while True:
        header = _read_header(reader)
        if header is None:
            raise ArchiveFormatError(f"archive ends before {RESERVE_NAME}")
        kind = _type_problem(header)
        if kind is not None:
            raise ArchiveFormatError(kind, hint="someone crafted this archive; do not use it")
        if header.path == RESERVE_NAME:
            if header.size > MAX_RESERVE_BYTES:
                raise ArchiveFormatError(f"reserve member of {header.size} bytes is over the limit")
            if _read_data(reader, header, "the reserve").count(0) != header.size:
                raise ArchiveFormatError(
                    f"{RESERVE_NAME} holds non-zero bytes; it must be zero padding",
                    hint="someone modified this archive; obtain it again from its builder",
                )
            reserve_size = header.size
            break
        if not _SIGNATURE_FILE.match(header.path):
            raise ArchiveFormatError(
                f"unexpected member {header.path!r} in the metadata region"
                f" (only {SIGNATURE_DIR}*.sig and {RESERVE_NAME} may follow the manifest)"
            )
        if header.size > MAX_SIGNATURE_BYTES:
            raise ArchiveFormatError(
                f"signature {header.path!r} is over the {MAX_SIGNATURE_BYTES}-byte limit"
            )
        if len(signatures) >= MAX_SIGNATURES:
            raise ArchiveFormatError(f"more than {MAX_SIGNATURES} signatures")
        if signatures and header.path.encode() <= signatures[-1][0].encode():
            raise ArchiveFormatError(f"signature {header.path!r} is duplicated or out of order")
        signatures.append((header.path, _read_data(reader, header, header.path)))
    manifest = parse_manifest(manifest_bytes)
    return BundleMetadata(
        manifest_bytes=manifest_bytes,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        signatures=signatures,
        payload_offset=reader.offset,
        reserve_size=reserve_size,
    )


def read_metadata(bundle: os.PathLike[str] | str) -> BundleMetadata:
    """The metadata region of the bundle file at ``bundle`` (reads only that region)."""
    with open(bundle, "rb") as f:
        return read_metadata_stream(f)


def _read_data(reader: _Reader, header: Header, what: str) -> bytes:
    data = reader.exact(header.size, what)
    reader.exact(_padded(header.size) - header.size, what + " padding")
    return data


# --------------------------------------------------------------------------- payload


def check_payload(
    stream: IO[bytes],
    manifest: Dict[str, Any],
    *,
    offset: int,
    sink: Optional[Callable[[Dict[str, Any]], Optional[IO[bytes]]]] = None,
    progress: Optional[Callable[[int], None]] = None,
    observe: Optional[Callable[[Any], None]] = None,
) -> Tuple[int, int]:
    """One streaming pass over the payload at ``offset``, checking every member.

    ``sink(entry)`` may return a writable file for an expected member; its bytes are
    written there while being hashed. ``observe`` sees every byte read (for a whole-archive
    digest). Returns (files, bytes). Raises ArchiveFormatError (malformed or forbidden
    members, truncation) or IntegrityError (extra, missing, resized or changed files),
    each listing every problem found.
    """
    expected: List[Dict[str, Any]] = manifest["files"]
    index_of = {e["path"]: i for i, e in enumerate(expected)}
    seen: Set[str] = set()
    format_problems: List[str] = []
    integrity_problems: List[str] = []
    reader = _Reader(stream, offset)
    reader.observe = observe
    position = 0
    total = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        try:
            header = _read_header(reader)
        except ArchiveFormatError as e:
            format_problems.append(e.message)
            break
        if header is None:
            break
        entry: Optional[Dict[str, Any]] = None
        why = path_problem(header.path)
        kind = _type_problem(header)
        if kind is not None:
            format_problems.append(kind)
        elif why is not None:
            format_problems.append(f"member {header.path!r}: {why}")
        elif header.path in seen:
            format_problems.append(f"member {header.path!r} appears more than once")
        elif header.path not in index_of:
            integrity_problems.append(
                f"member {header.path!r} is not listed in the signed manifest"
            )
        else:
            index = index_of[header.path]
            entry = expected[index]
            seen.add(header.path)
            if index >= position:
                position = index + 1
            else:
                format_problems.append(f"member {header.path!r} is out of manifest order")
            if header.size != entry["size"]:
                integrity_problems.append(
                    f"{header.path}: archive says {header.size} bytes,"
                    f" manifest says {entry['size']}"
                )
            if header.mode & 0o7777 != MODES.get(entry["mode"], -1):
                integrity_problems.append(
                    "{}: archive mode {:o} differs from manifest mode {}".format(
                        header.path, header.mode & 0o7777, entry["mode"]
                    )
                )
        out = sink(entry) if (sink is not None and entry is not None) else None
        digest = hashlib.sha256()
        remaining = header.size
        try:
            while remaining:
                want = min(remaining, CHUNK)
                n = _readinto(reader, view[:want])
                if n == 0:
                    raise ArchiveFormatError(
                        f"archive is truncated inside {header.path!r}",
                        hint="the transfer was cut short; copy the bundle again, compare sizes",
                    )
                digest.update(view[:n])
                if out is not None:
                    out.write(view[:n])
                if progress is not None:
                    progress(n)
                remaining -= n
            reader.exact(_padded(header.size) - header.size, "member padding")
        except ArchiveFormatError as e:
            format_problems.append(e.message)
            break
        finally:
            if out is not None:
                out.close()
        total += header.size
        if (
            entry is not None
            and header.size == entry["size"]
            and digest.hexdigest() != entry["sha256"]
        ):
            integrity_problems.append(f"{header.path}: sha256 does not match the signed manifest")
    if not format_problems:
        trailer = reader.read(MAX_TRAILER_BYTES + 1)
        if len(trailer) > MAX_TRAILER_BYTES or trailer.count(0) != len(trailer):
            format_problems.append("data follows the end-of-archive marker")
        elif len(trailer) < BLOCK:
            format_problems.append("archive is truncated: the end-of-archive marker is incomplete")
    for missing in (e["path"] for e in expected if e["path"] not in seen):
        integrity_problems.append(f"{missing}: listed in the manifest but missing from the archive")
    if format_problems:
        raise ArchiveFormatError(
            "the archive is malformed or holds forbidden members"
            f" ({len(format_problems) + len(integrity_problems)} problems)",
            problems=format_problems + integrity_problems,
            hint="do not use this bundle; obtain it again from its builder and verify it",
        )
    if integrity_problems:
        raise IntegrityError(
            f"{len(integrity_problems)} files do not match the signed manifest",
            problems=integrity_problems,
            hint="the bundle was altered or damaged in transfer; copy it again and re-verify",
        )
    return len(seen), total


def _readinto(reader: _Reader, view: memoryview) -> int:
    readinto = getattr(reader.stream, "readinto", None)
    if readinto is None:
        data = reader.read(len(view))
        view[: len(data)] = data
        return len(data)
    n = int(readinto(view) or 0)
    reader.offset += n
    if reader.observe is not None and n:
        reader.observe(view[:n])
    return n


def verify_stream(
    stream: IO[bytes],
    manifest_sha256: str,
    *,
    progress: Optional[Callable[[int], None]] = None,
) -> Tuple[BundleMetadata, int, int]:
    """Check a bundle stream against a manifest digest verified elsewhere (by the controller).

    Returns (metadata, files, bytes). Raises IntegrityError or ArchiveFormatError.
    """
    meta = read_metadata_stream(stream)
    if meta.manifest_sha256 != manifest_sha256.lower():
        raise IntegrityError(
            f"manifest sha256 is {meta.manifest_sha256}, expected {manifest_sha256}",
            hint="this is not the bundle the controller verified; copy the verified bundle again",
        )
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
    with open(bundle, "rb") as f:
        if payload_offset is None:
            payload_offset = read_metadata_stream(f).payload_offset
        f.seek(payload_offset)
        reader = _Reader(f, payload_offset)
        while True:
            header = _read_header(reader)
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
            f.seek(header.offset + _padded(header.size))
            reader.offset = header.offset + _padded(header.size)


def open_bytes(data: bytes) -> IO[bytes]:
    """A seekable stream over bytes (tests and small in-memory bundles)."""
    return io.BytesIO(data)
