"""Split transfers: part sizes, the signed index, join naming every bad part, verify in place."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bundler.bundle.partsindex import read_index
from bundler.bundle.split import join, parse_size
from bundler.bundle.verify import verify_bundle
from bundler.errors import IntegrityError, TrustError, UsageError
from bundler.ssh import sig as sshsig
from tests.bundlekit import DURING, make_bundle, make_key, make_stage, policy_for

MIB = 1 << 20


@pytest.fixture
def split_bundle(tmp_path: Path):
    key = make_key(tmp_path / "keys", "alice")
    stage = make_stage(tmp_path, {"models/tiny/big.bin": bytes(range(256)) * (12 * 1024)})
    whole = make_bundle(tmp_path, [key], stage=stage, out=tmp_path / "whole")
    parts = make_bundle(tmp_path, [key], stage=stage, out=tmp_path / "parts", split=MIB)
    return key, whole, parts


def test_parse_size_uses_binary_units() -> None:
    assert parse_size("4G") == 4 << 30
    assert parse_size("700M") == 700 << 20
    assert parse_size("650MiB") == 650 << 20
    for bad in ("lots", "1.5G", "-1M", "10K"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_parts_concatenate_to_the_unsplit_bundle(tmp_path: Path, split_bundle) -> None:
    _, whole, parts = split_bundle
    assert parts.index is not None and len(parts.parts) == 4
    assert [p.stat().st_size for p in parts.parts[:-1]] == [MIB] * 3
    joined = b"".join(p.read_bytes() for p in parts.parts)
    assert joined == whole.path.read_bytes()
    assert parts.manifest_sha256 == whole.manifest_sha256
    pairs = read_index(parts.index)
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for _, p in pairs] == [d for d, _ in pairs]
    # The whole-archive signature beside the parts signs the joined bytes.
    sig = Path(str(parts.parts[0]).rsplit(".part-", 1)[0] + ".sig").read_bytes()
    sshsig.verify(joined, sig, namespace=sshsig.ARCHIVE_NAMESPACE)


def test_join_names_every_bad_part_and_leaves_nothing(tmp_path: Path, split_bundle) -> None:
    key, _, parts = split_bundle
    bad = parts.parts[1]
    data = bytearray(bad.read_bytes())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    parts.parts[3].unlink()
    out = tmp_path / "joined"
    with pytest.raises(IntegrityError) as exc:
        join(parts.index, out, policy=policy_for(tmp_path, [key]))
    assert exc.value.problems == (
        f"{bad.name}: sha256 does not match the index; re-send it",
        f"{parts.parts[3].name}: cannot read (No such file or directory); re-send it",
    )
    assert not out.exists()


def test_join_then_verify(tmp_path: Path, split_bundle) -> None:
    key, whole, parts = split_bundle
    path = join(parts.index, tmp_path / "joined", policy=policy_for(tmp_path, [key]))
    assert path.read_bytes() == whole.path.read_bytes()
    assert Path(str(path) + ".sig").exists()
    verify_bundle(path, policy_for(tmp_path, [key]), now=DURING)


def test_verify_reads_a_split_bundle_through_its_index(tmp_path: Path, split_bundle) -> None:
    key, whole, parts = split_bundle
    report = verify_bundle(parts.index, policy_for(tmp_path, [key]), now=DURING)
    assert report.manifest_sha256 == whole.manifest_sha256


def test_index_signed_by_an_untrusted_key_is_refused(tmp_path: Path, split_bundle) -> None:
    key, _, parts = split_bundle
    mallory = make_key(tmp_path / "keys", "mallory")
    assert parts.index is not None
    sig = sshsig.sign(parts.index.read_bytes(), mallory.signer, namespace="airlock-archive-v1")
    Path(str(parts.index) + ".sig").write_bytes(sig)
    with pytest.raises(TrustError):
        join(parts.index, tmp_path / "j", policy=policy_for(tmp_path, [key]))
    assert not (tmp_path / "j").exists() or list((tmp_path / "j").iterdir()) == []


def test_edited_index_fails_its_signature(tmp_path: Path, split_bundle) -> None:
    key, _, parts = split_bundle
    assert parts.index is not None
    text = parts.index.read_text()
    parts.index.write_text(text.replace(text[:64], "0" * 64, 1))
    with pytest.raises(TrustError):
        join(parts.index, tmp_path / "j", policy=policy_for(tmp_path, [key]))
    with pytest.raises(TrustError):
        verify_bundle(parts.index, policy_for(tmp_path, [key]), now=DURING)


def test_parts_reader_handles_boundaries_anywhere(tmp_path: Path, split_bundle) -> None:
    from bundler.bundle.split import PartsReader
    from runtime.bundle import verify_stream

    _, whole, _ = split_bundle
    import tarfile

    data = whole.path.read_bytes()
    with tarfile.open(whole.path) as tf:  # cut inside every header and the trailer
        cuts = sorted({m.offset + 100 for m in tf.getmembers()} | {len(data) - 700})
    paths = []
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        p = tmp_path / f"p{start:09d}"
        p.write_bytes(data[start:end])
        paths.append(p)
    with PartsReader(paths) as reader:
        _, files, total = verify_stream(reader, whole.manifest_sha256)  # type: ignore[arg-type]
    assert files == 8 and total > 3 << 20


# --- unsigned inputs are bounded before use -------------------------------------------------


def test_index_lists_each_part_size_and_sha256sum_still_reads_it(split_bundle) -> None:
    import subprocess

    _, _, parts = split_bundle
    text = parts.index.read_text()
    assert text.startswith("# airlock parts index")
    assert f"# size {MIB} {parts.parts[0].name}\n" in text
    done = subprocess.run(["sha256sum", "-c", "--strict", parts.index.name],
                          cwd=parts.index.parent, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and done.stdout.count(": OK") == 4, done.stdout + done.stderr


def test_join_refuses_a_sparse_oversized_part_before_copying_a_byte(
    tmp_path: Path, split_bundle, monkeypatch
) -> None:
    """A part swapped for a 64 GiB sparse file must not fill the disk: sizes come first."""
    import bundler.bundle.split as split

    key, _, parts = split_bundle
    with open(parts.parts[1], "r+b") as f:
        f.truncate(64 << 30)
    copied = []
    real_copy = split._copy
    monkeypatch.setattr(
        split, "_copy", lambda f, part, out: copied.append(out) or real_copy(f, part, out)
    )
    out = tmp_path / "joined"
    with pytest.raises(IntegrityError) as exc:
        join(parts.index, out, policy=policy_for(tmp_path, [key]))
    assert exc.value.problems == (
        f"{parts.parts[1].name}: {64 << 30} bytes where the index lists {MIB}; re-send it",
    )
    assert all(o is None for o in copied), "nothing may be copied once a size is wrong"
    assert not out.exists()


def test_verify_refuses_a_sparse_oversized_part_without_reading_it(
    tmp_path: Path, split_bundle
) -> None:
    key, _, parts = split_bundle
    with open(parts.parts[2], "r+b") as f:
        f.truncate(64 << 30)
    with pytest.raises(IntegrityError, match="damaged or missing") as exc:
        verify_bundle(parts.index, policy_for(tmp_path, [key]), now=DURING)
    assert "where the index lists" in exc.value.problems[0]


def test_join_uses_the_index_bytes_it_verified(tmp_path: Path, split_bundle, monkeypatch) -> None:
    """The index is read once: swapping it after its signature was checked changes nothing."""
    import bundler.bundle.partsindex as partsindex

    key, whole, parts = split_bundle
    real_evaluate = partsindex.trust.evaluate

    def evaluate_then_swap(*args, **kw):
        decision = real_evaluate(*args, **kw)
        edited = parts.index.read_text().replace(f"# size {MIB} ", f"# size {MIB + 1} ", 1)
        parts.index.write_text(edited)  # the attacker's edit lands right after the check
        return decision

    monkeypatch.setattr(partsindex.trust, "evaluate", evaluate_then_swap)
    path = join(parts.index, tmp_path / "joined", policy=policy_for(tmp_path, [key]))
    assert path.read_bytes() == whole.path.read_bytes()


def test_join_refuses_an_index_without_part_sizes(tmp_path: Path, split_bundle) -> None:
    _, _, parts = split_bundle
    lines = parts.index.read_text().splitlines()
    old = "".join(line + "\n" for line in lines if not line.startswith("#"))
    parts.index.write_text(old)
    with pytest.raises(UsageError, match="without part sizes"):
        join(parts.index, tmp_path / "j")
    assert not (tmp_path / "j").exists()


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_join_refuses_a_part_that_is_not_a_regular_file(
    tmp_path: Path, split_bundle, kind: str
) -> None:
    import os

    key, _, parts = split_bundle
    target = parts.parts[0]
    real = target.with_name("real")
    target.rename(real)
    if kind == "fifo":
        os.mkfifo(target)  # opening it must not block
    elif kind == "symlink":
        target.symlink_to(real)
    else:
        target.mkdir()
    with pytest.raises(IntegrityError) as exc:
        join(parts.index, tmp_path / "j", policy=policy_for(tmp_path, [key]))
    assert exc.value.problems[0].startswith(target.name)
    assert not (tmp_path / "j").exists()


def test_join_refuses_when_the_destination_lacks_room(
    tmp_path: Path, split_bundle, monkeypatch
) -> None:
    import collections

    import bundler.bundle.split as split

    key, _, parts = split_bundle
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(split.shutil, "disk_usage", lambda p: usage(10 * MIB, 10 * MIB - 5, 5))
    with pytest.raises(UsageError, match="bytes free"):
        join(parts.index, tmp_path / "j", policy=policy_for(tmp_path, [key]))
    assert list((tmp_path / "j").iterdir()) == []


def test_join_refuses_an_oversized_archive_signature(tmp_path: Path, split_bundle) -> None:
    key, _, parts = split_bundle
    sig = Path(str(parts.index)[: -len(".parts")] + ".sig")
    with open(sig, "r+b") as f:
        f.truncate(1 << 30)
    with pytest.raises(UsageError, match="archive signature"):
        join(parts.index, tmp_path / "j", policy=policy_for(tmp_path, [key]))
    assert not (tmp_path / "j").exists()
