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
