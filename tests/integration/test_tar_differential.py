"""Differential: for archives airlock accepts, GNU tar and Python's tarfile list exactly the
members (names, sizes, types) airlock read, and tarfile reads exactly the signed bytes.
(tests/integration/test_fuzz_bundle.py checks the same for every accepted fuzzed case.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bundler.bundle.verify import verify_bundle
from runtime.bundle import read_metadata
from runtime.tarformat import end_of_archive, member_header
from tests.bundlekit import (
    DURING,
    EPOCH,
    canonical,
    make_bundle,
    make_key,
    make_stage,
    manifest_of,
    policy_for,
    region_for,
    signatures_by,
)
from tests.fuzzkit import airlock_listing, check_payload_bytes, gnu_listing, tarfile_listing

pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")

TRICKY = {
    "models/" + "a" * 93: b"exactly 100 bytes: the ustar name field without a NUL\n",
    "models/" + "b" * 94: b"101 bytes: a PAX path\n",
    "models/" + "x" * 91 + "\u6a21\u578b": b"a 3-byte character across byte 100\n",
    "models/caf\u00e9 au lait.txt": b"non-ASCII and spaces\n",
    "evidence/'quoted' \"name\".txt": b"quotes\n",
    "runtime/" + "/".join(["s" * 50] * 20) + "/end.py": b"a long deep path\n",
}


def test_stock_tools_list_exactly_what_airlock_reads(tmp_path: Path) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    bundle = make_bundle(tmp_path, [alice], stage=make_stage(tmp_path, TRICKY)).path
    verify_bundle(bundle, policy_for(tmp_path, [alice]), now=DURING)
    names = [n for n, _, _ in airlock_listing(bundle)]
    assert set(TRICKY) <= set(names)
    check_payload_bytes(bundle, read_metadata(bundle).manifest)


def test_a_member_of_9_gib_is_listed_alike(tmp_path: Path) -> None:
    # A PAX size record (the ustar field holds at most 8 GiB - 1), in a sparse file: the
    # headers are real, the data a hole that every lister seeks over.
    alice = make_key(tmp_path / "keys", "alice")
    size = 9 * 1024**3 + 5
    files = {"models/huge.bin": b""}
    manifest = manifest_of(files)
    manifest["files"][0]["size"] = size
    raw = canonical(manifest)
    region = region_for(raw, signatures_by(raw, [alice]))
    header = member_header("models/huge.bin", size, 0o644, EPOCH)
    assert b" size=9663676421\n" in header
    tar = tmp_path / "huge.tar"
    data_end = len(region) + len(header) + size + (-size % 512)
    with open(tar, "wb") as f:
        f.write(region + header)
        f.seek(data_end)
        f.write(end_of_archive(data_end))
    assert tar.stat().st_blocks * 512 < 1 << 20, "the test file must stay sparse"
    ours = airlock_listing(tar)
    assert ours[-1] == ("models/huge.bin", size, "file")
    assert tarfile_listing(tar) == ours
    assert gnu_listing(tar) == ours
