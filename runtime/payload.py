"""One streaming pass over a bundle's payload: every member checked against the manifest.

docs/FORMAT.md, "Verification order": after the metadata region, the payload members must
be exactly the manifest's files, in its order, each once, with its size, mode and sha256,
then the writer's end of archive. Every problem is collected and raised once. Also the
seeking readers that skip data (one member's bytes, the headers alone). Standard library
only, Python 3.8+.
"""

from __future__ import annotations

import hashlib
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from runtime.errors import ArchiveFormatError, IntegrityError
from runtime.manifest import created_epoch, path_problem
from runtime.tarformat import (
    MODES,
    Header,
    StreamReader,
    padded,
    read_header,
    trailer_problem,
)

CHUNK = 1024 * 1024
_CRAFTED = "someone crafted or altered this archive; do not use it"


class _Walk:
    """Problems found by one pass over the payload, sorted into format and integrity."""

    def __init__(self, expected: List[Dict[str, Any]]) -> None:
        self.expected = expected
        self.index_of = {e["path"]: i for i, e in enumerate(expected)}
        self.seen: Set[str] = set()
        self.position = 0
        self.format: List[str] = []
        self.integrity: List[str] = []

    def entry_for(self, header: Header) -> Optional[Dict[str, Any]]:
        """The manifest entry this member must match, or None (reporting why not)."""
        why = path_problem(header.path)
        if why is not None:
            self.format.append(f"member {header.path!r}: {why}")
            return None
        if header.path in self.seen:
            self.format.append(f"member {header.path!r} appears more than once")
            return None
        if header.path not in self.index_of:
            self.integrity.append(f"member {header.path!r} is not listed in the signed manifest")
            return None
        index = self.index_of[header.path]
        entry = self.expected[index]
        self.seen.add(header.path)
        if index >= self.position:
            self.position = index + 1
        else:
            self.format.append(f"member {header.path!r} is out of manifest order")
        if header.size != entry["size"]:
            self.integrity.append(
                f"{header.path}: archive says {header.size} bytes, manifest says {entry['size']}"
            )
        if header.mode != MODES[entry["mode"]]:
            self.integrity.append(
                f"{header.path}: archive mode {header.mode:o} differs from manifest mode"
                f" {entry['mode']}"
            )
        return entry

    def finish(self, stopped_at: Optional[int]) -> None:
        """Name the files never seen; raise once with every problem, or return."""
        missing = [e["path"] for e in self.expected if e["path"] not in self.seen]
        if stopped_at is None:
            self.integrity.extend(
                f"{path}: listed in the manifest but missing from the archive" for path in missing
            )
        elif missing:
            self.format.append(
                f"the archive could not be read past byte {stopped_at}: {len(missing)} listed"
                f" files from {missing[0]!r} on were not checked"
            )
        if self.format:
            raise ArchiveFormatError(
                "the archive is malformed or holds forbidden members"
                f" ({len(self.format) + len(self.integrity)} problems)",
                problems=self.format + self.integrity,
                hint="do not use this bundle; obtain it again from its builder and verify it",
            )
        if self.integrity:
            raise IntegrityError(
                f"{len(self.integrity)} files do not match the signed manifest",
                problems=self.integrity,
                hint="the bundle was altered or damaged in transfer; copy it again and re-verify",
            )


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
    walk = _Walk(manifest["files"])
    mtime = created_epoch(manifest)
    reader = StreamReader(stream, offset)
    reader.observe = observe
    total = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    stopped_at: Optional[int] = None
    while True:
        try:
            header = read_header(reader, mtime=mtime)
        except ArchiveFormatError as e:
            walk.format.append(e.message)
            stopped_at = reader.offset
            break
        if header is None:
            why = trailer_problem(reader)
            if why is not None:
                walk.format.append(why)
            break
        entry = walk.entry_for(header)
        out = sink(entry) if (sink is not None and entry is not None) else None
        try:
            digest = _copy_member(reader, header, view, out, progress)
        except ArchiveFormatError as e:
            walk.format.append(e.message)
            stopped_at = reader.offset
            break
        finally:
            if out is not None:
                out.close()
        total += header.size
        if entry is not None and header.size == entry["size"] and digest != entry["sha256"]:
            walk.integrity.append(f"{header.path}: sha256 does not match the signed manifest")
    walk.finish(stopped_at)
    return len(walk.seen), total


def _copy_member(
    reader: StreamReader,
    header: Header,
    view: memoryview,
    out: Optional[IO[bytes]],
    progress: Optional[Callable[[int], None]],
) -> str:
    """Hash one member's data (writing it to ``out``), then check its zero padding."""
    digest = hashlib.sha256()
    remaining = header.size
    while remaining:
        n = reader.readinto(view[: min(remaining, CHUNK)])
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
    gap = padded(header.size) - header.size
    if reader.exact(gap, "member padding").count(0) != gap:
        raise ArchiveFormatError(f"non-zero padding after {header.path!r}", hint=_CRAFTED)
    return digest.hexdigest()


def walk_headers(stream: IO[bytes], *, offset: int, mtime: int) -> Iterator[Header]:
    """Every payload header from ``offset`` on, seeking over the data (no byte is hashed).

    Stops at the end-of-archive marker, whose trailer is checked. Raises ArchiveFormatError.
    """
    reader = StreamReader(stream, offset)
    while True:
        header = read_header(reader, mtime=mtime)
        if header is None:
            why = trailer_problem(reader)
            if why is not None:
                raise ArchiveFormatError(why)
            return
        yield header
        reader.skip(padded(header.size), header.path)
