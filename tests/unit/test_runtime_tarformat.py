"""The canonical tar subset: the reader accepts exactly the headers the writer writes."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import ArchiveFormatError
from runtime.tarformat import (
    BLOCK,
    FIELDS,
    MAX_OCTAL_SIZE,
    RECORD,
    StreamReader,
    end_of_archive,
    member_header,
    read_header,
    trailer_problem,
)

EPOCH = 1_767_225_600
SEGMENT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\\x85"),
    min_size=1,
    max_size=40,
)
PATHS = st.lists(SEGMENT, min_size=1, max_size=6).map("/".join)
SIZES = st.one_of(st.integers(0, 4096), st.integers(MAX_OCTAL_SIZE - 2, MAX_OCTAL_SIZE + 2))
MODES = st.sampled_from([0o644, 0o755])


def parse(data: bytes, *, mtime: int | None = EPOCH):
    return read_header(StreamReader(io.BytesIO(data)), mtime=mtime)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(path=PATHS, size=SIZES, mode=MODES)
def test_every_header_the_writer_writes_reads_back(path: str, size: int, mode: int) -> None:
    data = member_header(path, size, mode, EPOCH)
    h = parse(data)
    assert h is not None
    assert (h.path, h.size, h.mode, h.mtime, h.offset) == (path, size, mode, EPOCH, len(data))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(path=PATHS, size=SIZES, mode=MODES, data=st.data())
def test_a_changed_header_is_refused_or_is_itself_canonical(
    path: str, size: int, mode: int, data: st.DataObject
) -> None:
    original = bytearray(member_header(path, size, mode, EPOCH))
    at = data.draw(st.integers(0, len(original) - 1))
    original[at] = data.draw(st.integers(0, 255).filter(lambda b: b != original[at]))
    block = at // BLOCK * BLOCK
    if data.draw(st.booleans()) and not 148 <= at - block < 156:  # fix the checksum up
        original[block + 148 : block + 156] = b" " * 8
        original[block + 148 : block + 156] = b"%06o\0 " % sum(original[block : block + BLOCK])
    changed = bytes(original)
    try:
        h = parse(changed, mtime=None)
    except ArchiveFormatError:
        return
    # Accepted: then it is exactly what the writer writes for what was read, nothing else.
    assert h is not None
    assert member_header(h.path, h.size, h.mode, h.mtime) == changed[: h.offset]


def test_refusals_name_every_differing_field() -> None:
    block = bytearray(member_header("README.md", 3, 0o644, EPOCH))
    block[108:116] = b"0001750\0"  # uid
    block[265:269] = b"root"  # uname
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    with pytest.raises(ArchiveFormatError) as exc:
        parse(bytes(block))
    assert "uid is b'0001750', not b'0000000'" in exc.value.message
    assert "uname is b'root', not b''" in exc.value.message
    assert {name for name, _, _ in FIELDS} >= {"uid", "uname", "prefix", "padding"}


def test_the_mtime_must_be_the_bundles() -> None:
    with pytest.raises(ArchiveFormatError, match="every member of this bundle has mtime"):
        parse(member_header("README.md", 3, 0o644, EPOCH + 1))


@pytest.mark.parametrize("offset", [0, 512, 9216, 9728, 10240 * 3 + 512])
def test_the_end_of_archive_is_exactly_the_writers(offset: int) -> None:
    end = end_of_archive(offset)
    assert (offset + len(end)) % RECORD == 0 and len(end) >= 2 * BLOCK

    def trailer(data: bytes) -> str | None:
        reader = StreamReader(io.BytesIO(data), offset + BLOCK)
        return trailer_problem(reader)

    assert trailer(end[BLOCK:]) is None
    assert trailer(end[BLOCK:] + bytes(RECORD)) == "data follows the end-of-archive marker"
    assert trailer(end[BLOCK:-1] + b"\1") == "data follows the end-of-archive marker"
    if len(end) > 2 * BLOCK:  # the record padding cut short
        assert "truncated inside its final record" in str(trailer(end[BLOCK:-BLOCK]))
    assert "marker is incomplete" in str(trailer(end[BLOCK : BLOCK + 10]))
