"""runtime.fsio: atomic writes (no temp file left, mode, old bytes kept on failure), hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from runtime import fsio


def test_atomic_write_creates_parents_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "state.json"
    fsio.atomic_write(str(target), b"one")
    assert target.read_bytes() == b"one"
    fsio.atomic_write(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["state.json"]


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o755])
def test_atomic_write_sets_the_mode_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    old = os.umask(0o077)
    try:
        fsio.atomic_write(str(tmp_path / "f"), b"x", mode)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "f").st_mode & 0o777 == mode


def test_failed_atomic_write_keeps_the_old_bytes_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        fsio.atomic_write(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_file_sha256_reads_files_larger_than_one_block(tmp_path: Path) -> None:
    data = os.urandom(fsio.CHUNK + 17)
    (tmp_path / "f").write_bytes(data)
    assert fsio.file_sha256(str(tmp_path / "f")) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert fsio.file_sha256(str(tmp_path / "empty")) == hashlib.sha256(b"").hexdigest()
