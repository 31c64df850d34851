"""Atomic writes: whole or not at all, and a clear error for an unwritable place."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler.errors import UsageError
from bundler.fsio import atomic_file, write_atomic


def test_write_replaces_whole_file_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "lock"
    target.write_text("old")
    write_atomic(target, "new ✓", mode=0o600)
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["lock"]


def test_failure_inside_the_block_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "bundle.tar"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as (_, out):
        out.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle.tar"]


def test_missing_directory_is_a_usage_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot write .*nowhere/x"):
        write_atomic(tmp_path / "nowhere" / "x", b"data")


def _stamp_of(path: Path, *, age_s: float) -> object:
    import os
    import time

    from bundler.fsio import vouching_stamp

    started = time.time_ns()
    os.utime(path, ns=(started, started - int(age_s * 1e9)))
    before = os.stat(path)
    return vouching_stamp(before, os.stat(path), time.time_ns())


def test_a_stamp_vouches_for_a_file_last_modified_well_before_it_was_read(
    tmp_path: Path,
) -> None:
    import os

    from bundler.fsio import FileStamp

    f = tmp_path / "model.gguf"
    f.write_bytes(b"weights")
    stamp = _stamp_of(f, age_s=60)
    assert stamp == FileStamp.of(os.stat(f))
    os.link(f, tmp_path / "staged.gguf")  # a hard link (ctime only) keeps the content
    os.chmod(f, 0o600)
    assert FileStamp.of(os.stat(tmp_path / "staged.gguf")) == stamp
    with open(f, "r+b") as w:  # any write moves the mtime: the stamp no longer holds
        w.write(b"W")
    assert FileStamp.of(os.stat(f)) != stamp


def test_no_stamp_for_a_file_modified_just_before_it_was_read(tmp_path: Path) -> None:
    # It could be written again within the same timestamp tick, unseen (git's racy clean).
    f = tmp_path / "model.gguf"
    f.write_bytes(b"weights")
    assert _stamp_of(f, age_s=0.5) is None


def test_no_stamp_for_a_file_that_changed_while_it_was_read(tmp_path: Path) -> None:
    import os
    import time

    from bundler.fsio import vouching_stamp

    f = tmp_path / "model.gguf"
    f.write_bytes(b"weights")
    started = time.time_ns()
    os.utime(f, ns=(started, started - 60 * 10**9))
    before = os.stat(f)
    f.write_bytes(b"weights, then more")
    assert vouching_stamp(before, os.stat(f), started) is None
