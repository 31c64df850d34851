"""runtime.drift: installed files re-hashed against the signed manifest, extras included."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from runtime import drift
from runtime.layout import Layout, load_state
from tests.unit.runtime.test_release import install_release


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(
        root=str(tmp_path / "opt"), config=str(tmp_path / "etc"), state=str(tmp_path / "var")
    )


def test_verify_reports_every_modified_missing_and_extra_file(layout: Layout) -> None:
    install_release(layout, "1.0", {"a.txt": b"a", "b/c.txt": b"c", "d.txt": b"d"}, 1)
    base = Path(layout.release_dir("1.0"))
    (base / "a.txt").write_bytes(b"tampered")
    (base / "d.txt").unlink()
    (base / "implant.so").write_bytes(b"x")
    found = drift.find_drift(layout, load_state(layout), "1.0")
    by_file = {Path(d["file"]).name: d for d in found}
    assert set(by_file) == {"a.txt", "d.txt", "implant.so"}
    assert by_file["a.txt"]["actual"] == hashlib.sha256(b"tampered").hexdigest()
    assert by_file["a.txt"]["expected"] == hashlib.sha256(b"a").hexdigest()
    assert by_file["d.txt"]["actual"] == "missing"


def test_verify_catches_a_swapped_manifest_copy(layout: Layout) -> None:
    digest = install_release(layout, "1.0", {"a.txt": b"a"}, 1)
    Path(layout.manifest_file(digest)).write_bytes(b'{"files": []}')
    found = drift.find_drift(layout, load_state(layout), "1.0")
    assert found and found[0]["expected"] == digest
