"""The canonical tar subset of airlock bundles: the one header writer, and its strict reader.

docs/FORMAT.md, "Headers": every member header is exactly what :func:`member_header`
writes for its path, size, mode and mtime. The reader parses a header, rebuilds the
canonical bytes from what it parsed and refuses any difference, naming the field: so it
accepts nothing GNU tar or Python's ``tarfile`` could read differently (no other magic,
version, prefix, owner, link name or padding, no PAX record the ustar header could have
held, no PAX value disagreeing with its ustar field). Standard library only, Python 3.8+.
"""

from __future__ import annotations

import re
from typing import IO, Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from runtime.errors import ArchiveFormatError

BLOCK = 512
RECORD = 10240
ZERO_BLOCK = bytes(BLOCK)
PAX_NAME = "././@PaxHeader"
MAX_OCTAL_SIZE = 8**11 - 1  # the largest size an 11-digit ustar size field holds
MAX_MTIME = 8**11 - 1
MAX_PAX_BYTES = 8 * 1024
MODES = {"0644": 0o644, "0755": 0o755}
_PAX_KEYS = ("path", "size")
_DECIMAL = re.compile(rb"\A(0|[1-9][0-9]{0,19})\Z")
_OCTAL = re.compile(rb"\A[0-7]+\Z")

# (field, start, end) of a ustar header block, POSIX.1-1988 names.
FIELDS: Tuple[Tuple[str, int, int], ...] = (
    ("name", 0, 100),
    ("mode", 100, 108),
    ("uid", 108, 116),
    ("gid", 116, 124),
    ("size", 124, 136),
    ("mtime", 136, 148),
    ("chksum", 148, 156),
    ("typeflag", 156, 157),
    ("linkname", 157, 257),
    ("magic", 257, 263),
    ("version", 263, 265),
    ("uname", 265, 297),
    ("gname", 297, 329),
    ("devmajor", 329, 337),
    ("devminor", 337, 345),
    ("prefix", 345, 500),
    ("padding", 500, 512),
)

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


# --------------------------------------------------------------------------- writing


def pax_record(key: str, value: str) -> bytes:
    """One PAX record ``"<len> <key>=<value>\\n"``, ``len`` counting itself."""
    body = f" {key}={value}\n".encode()
    length = len(body) + len(str(len(body)))
    if len(str(length)) != len(str(length - len(body))):
        length = len(body) + len(str(length))
    return str(length).encode("ascii") + body


def ustar_block(name: bytes, size: int, mode: int, mtime: int, typeflag: bytes) -> bytes:
    """One header block as airlock writes it: uid/gid 0, no owner names, no prefix."""
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


def needs_pax_path(raw: bytes) -> bool:
    """Whether a path (UTF-8 bytes) needs a PAX ``path`` record: over 100 bytes or not ASCII."""
    return len(raw) > 100 or not all(b < 0x80 for b in raw)


def member_header(path: str, size: int, mode: int, mtime: int) -> bytes:
    """The header block(s) of one regular file; a PAX header only when ustar cannot hold it."""
    raw = path.encode("utf-8")
    records = b""
    if needs_pax_path(raw):
        records += pax_record("path", path)
    if size > MAX_OCTAL_SIZE:
        records += pax_record("size", str(size))
    out = b""
    if records:
        out = ustar_block(PAX_NAME.encode(), len(records), 0o644, mtime, b"x") + pad(records)
    name = raw[:100]
    return out + ustar_block(name, 0 if size > MAX_OCTAL_SIZE else size, mode, mtime, b"0")


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def end_of_archive(offset: int) -> bytes:
    """The two zero blocks and the zero padding that end an archive at ``offset``."""
    end = 2 * BLOCK
    return bytes(end + (-(offset + end) % RECORD))


# --------------------------------------------------------------------------- reading


class Header(NamedTuple):
    """One member: its path, size, mode and mtime; ``start`` is where its header(s) begin,
    ``offset`` where its data starts."""

    path: str
    size: int
    mode: int
    mtime: int
    start: int
    offset: int


class StreamReader:
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

    def readinto(self, view: memoryview) -> int:
        """Read into ``view`` (zero-copy where the stream allows); 0 only at the end."""
        readinto = getattr(self.stream, "readinto", None)
        if readinto is None:
            data = self.read(len(view))
            view[: len(data)] = data
            return len(data)
        n = int(readinto(view) or 0)
        self.offset += n
        if self.observe is not None and n:
            self.observe(view[:n])
        return n

    def skip(self, n: int, what: str) -> None:
        """Move ``n`` bytes on: a seek when the stream allows it and nothing observes."""
        seek = getattr(self.stream, "seek", None)
        if self.observe is None and seek is not None:
            seek(self.offset + n)
            self.offset += n
            return
        while n:
            n -= len(self.exact(min(n, 1 << 20), what))


def _octal(field: bytes, what: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not _OCTAL.match(text):
        raise ValueError(f"the {what} field {field!r} is not an octal number")
    return int(text, 8)


def _check_checksum(block: bytes) -> None:
    stored = _octal(block[148:156], "checksum")
    computed = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if stored != computed:
        raise ValueError(f"header checksum {stored} does not match {computed} (not a tar header)")


def parse_pax(data: bytes) -> Dict[str, str]:
    """The records of a PAX extended header: only ``path`` and ``size``, each at most once,
    in that order, values UTF-8. Raises ValueError."""
    records: Dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0 or not _DECIMAL.match(data[pos:space]):
            raise ValueError("malformed PAX record length")
        end = pos + int(data[pos:space])
        if end <= space or end > len(data) or data[end - 1 : end] != b"\n":
            raise ValueError("malformed PAX record length")
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if not sep:
            raise ValueError("PAX record without '='")
        name = key.decode("utf-8", "replace")
        if name not in _PAX_KEYS:
            raise ValueError(f"PAX key {name!r} is not accepted (only path and size)")
        if name in records or (name == "path" and "size" in records):
            raise ValueError(f"PAX record {name!r} repeats or is out of order")
        try:
            records[name] = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"PAX {name} is not UTF-8") from e
        pos = end
    return records


def _field_differences(actual: bytes, expected: bytes, where: str) -> List[str]:
    out = []
    for name, start, end in FIELDS:
        got, want = actual[start:end], expected[start:end]
        if got != want:
            out.append(f"{where}{name} is {got.rstrip(bytes(1))!r}, not {want.rstrip(bytes(1))!r}")
    return out


def _differences(actual: bytes, expected: bytes) -> List[str]:
    """Which fields of the header block(s) ``actual`` differ from the canonical ``expected``."""
    if len(actual) != len(expected):
        if len(actual) > len(expected):
            return ["a PAX header where the ustar header holds the path and size"]
        return ["no PAX header where the ustar header cannot hold the path or size"]
    if len(actual) == BLOCK:
        return _field_differences(actual, expected, "")
    out = _field_differences(actual[:BLOCK], expected[:BLOCK], "PAX header ")
    got, want = actual[BLOCK:-BLOCK].rstrip(bytes(1)), expected[BLOCK:-BLOCK].rstrip(bytes(1))
    if got != want:
        out.append(f"PAX records {got!r} are not {want!r}")
    return out + _field_differences(actual[-BLOCK:], expected[-BLOCK:], "")


def _malformed(start: int, why: str) -> ArchiveFormatError:
    return ArchiveFormatError(
        f"malformed tar header at byte {start}: {why}",
        hint="this is not a bundle airlock wrote, or it was damaged; obtain it again",
    )


def read_header(reader: StreamReader, *, mtime: Optional[int] = None) -> Optional[Header]:
    """The next member header (with its PAX header, if any), or None at the first zero block.

    Every byte must be what :func:`member_header` writes for the parsed path, size, mode
    and mtime; ``mtime``, when given, is the only mtime accepted. Raises ArchiveFormatError
    naming the member, the byte offset and every field that differs.
    """
    start = reader.offset
    block = reader.exact(BLOCK, "a tar header")
    if block == ZERO_BLOCK:
        return None
    raw = block
    pax: Dict[str, str] = {}
    try:
        _check_checksum(block)
        typeflag = block[156:157]
        if typeflag == b"x":
            pax_size = _octal(block[124:136], "size")
            if pax_size > MAX_PAX_BYTES:
                raise ValueError(f"PAX header of {pax_size} bytes is over the limit")
            data = reader.exact(padded(pax_size), "a PAX header")
            pax = parse_pax(data[:pax_size])
            block = reader.exact(BLOCK, "a tar header")
            raw += data + block
            if block == ZERO_BLOCK:
                raise ValueError("PAX header not followed by a file header")
            _check_checksum(block)
            typeflag = block[156:157]
        name_field = block[0:100].split(b"\0", 1)[0]
        if typeflag != b"0":
            what = _TYPE_NAMES.get(typeflag, f"member of tar type {typeflag!r}")
            shown = pax.get("path", name_field.decode("utf-8", "replace"))
            raise ArchiveFormatError(
                f"{shown!r} at byte {start} is a {what}; bundles contain regular files only",
                hint="someone crafted this archive; do not use it",
            )
        if "path" in pax:
            path = pax["path"]
        elif needs_pax_path(name_field):
            raise ValueError(f"member name {name_field!r} is not ASCII and has no PAX path record")
        else:
            path = name_field.decode("ascii")
        if "size" in pax:
            if not _DECIMAL.match(pax["size"].encode()):
                raise ValueError(f"malformed PAX size {pax['size']!r}")
            size = int(pax["size"])
        else:
            size = _octal(block[124:136], "size")
        mode = _octal(block[100:108], "mode")
        when = _octal(block[136:148], "mtime")
    except ValueError as e:
        raise _malformed(start, str(e)) from e
    problems = []
    if mode not in MODES.values():
        problems.append(f"mode {mode:o} (bundles use 0644 or 0755)")
    if mtime is not None and when != mtime:
        problems.append(f"mtime {when} (every member of this bundle has mtime {mtime})")
    if when > MAX_MTIME:
        problems.append(f"mtime {when} is out of range")
    if not problems:
        problems = _differences(raw, member_header(path, size, mode, when))
    if problems:
        raise ArchiveFormatError(
            f"the tar header of {path!r} at byte {start} is not one airlock writes: "
            + "; ".join(problems),
            hint="this archive was not written by airlock or was altered; a reader that "
            "interprets such headers differently could see other files: do not use it",
        )
    return Header(path=path, size=size, mode=mode, mtime=when, start=start, offset=reader.offset)


def trailer_problem(reader: StreamReader) -> Optional[str]:
    """Why what follows the first zero block is not the writer's end of archive, or None.

    The writer ends with exactly a second zero block and zero padding to a multiple of
    RECORD bytes; nothing may follow.
    """
    first = reader.offset - BLOCK
    want = len(end_of_archive(first)) - BLOCK
    rest = reader.read(want + 1)
    if len(rest) < BLOCK:
        return "archive is truncated: the end-of-archive marker is incomplete"
    if rest.count(0) != len(rest) or len(rest) > want:
        return "data follows the end-of-archive marker"
    if len(rest) < want:
        return (
            f"archive is truncated inside its final record (ends at byte {reader.offset}, "
            f"not a multiple of {RECORD})"
        )
    return None
