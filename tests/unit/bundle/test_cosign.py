"""Co-signing: in place through the redo journal, by rewrite when the reserve is full, and
every crash point of both leaving a bundle that is refused or finished, never half-signed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bundler.bundle.cosign import cosign
from bundler.bundle.region import COSIGN_SLOTS
from bundler.errors import AirlockError, IntegrityError, UsageError
from bundler.ssh import sig as sshsig
from runtime.bundle import read_metadata
from tests.bundlekit import DURING, EPOCH, make_bundle, make_key, make_stage, policy_for


@pytest.fixture
def alice(tmp_path: Path):
    return make_key(tmp_path / "keys", "alice")


def test_cosign_rewrites_only_the_metadata_region(tmp_path: Path, alice) -> None:
    bob = make_key(tmp_path / "keys", "bob")
    result = make_bundle(tmp_path, [alice])
    before = result.path.read_bytes()
    offset = read_metadata(result.path).payload_offset
    done = cosign(result.path, bob.signer)
    after = result.path.read_bytes()
    assert done.in_place and len(after) == len(before)
    assert after[offset:] == before[offset:], "payload bytes must not change"
    meta = read_metadata(result.path)
    assert len(meta.signatures) == 2
    for _, sig in meta.signatures:
        sshsig.verify(meta.manifest_bytes, sig, namespace=sshsig.MANIFEST_NAMESPACE)
    # The whole-archive signature now carries the latest signer.
    key = sshsig.verify(after, result.signature_path.read_bytes(), namespace="airlock-archive-v1")
    assert key.fingerprint == bob.signer.public_key.fingerprint
    from bundler.bundle.verify import verify_bundle

    report = verify_bundle(result.path, policy_for(tmp_path, [alice, bob], threshold=2), now=DURING)
    assert len(report.signers) == 2


def test_cosign_falls_back_to_a_rewrite_when_the_reserve_is_full(tmp_path: Path, alice) -> None:
    result = make_bundle(tmp_path, [alice])
    keys = [make_key(tmp_path / "many", f"k{i}") for i in range(COSIGN_SLOTS + 8)]
    results = [cosign(result.path, k.signer) for k in keys]
    assert results[0].in_place and not all(r.in_place for r in results)
    meta = read_metadata(result.path)
    assert len(meta.signatures) == COSIGN_SLOTS + 9
    from bundler.bundle.verify import verify_bundle

    verify_bundle(result.path, policy_for(tmp_path, [alice, *keys], threshold=5), now=DURING)
    whole = result.path.read_bytes()
    key = sshsig.verify(whole, result.signature_path.read_bytes(), namespace="airlock-archive-v1")
    assert key.fingerprint == keys[-1].signer.public_key.fingerprint


def test_cosign_refuses_a_tampered_bundle_and_changes_nothing(tmp_path: Path, alice) -> None:
    bob = make_key(tmp_path / "keys", "bob")
    result = make_bundle(tmp_path, [alice])
    data = bytearray(result.path.read_bytes())
    data[data.index(bytes(range(256))) + 5] ^= 1
    result.path.write_bytes(bytes(data))
    sig_before = result.signature_path.read_bytes()
    with pytest.raises(IntegrityError):
        cosign(result.path, bob.signer)
    assert result.path.read_bytes() == bytes(data)
    assert result.signature_path.read_bytes() == sig_before


def test_cosign_twice_with_the_same_key_is_refused(tmp_path: Path, alice) -> None:
    result = make_bundle(tmp_path, [alice])
    with pytest.raises(UsageError, match="already signed"):
        cosign(result.path, alice.signer)


def _crash_cosign(monkeypatch, point: str) -> None:
    """Make the next in-place co-sign die at ``point``, as a power cut or kill -9 would."""
    import bundler.bundle.cosign as cosign_module

    if point == "region":  # the new region reached the disk up to its last signature

        def torn_pwrite(fd: int, data: bytes, offset: int) -> int:
            os.pwrite(fd, data[: len(data.rstrip(b"\0")) - 700], offset)
            raise OSError(5, "simulated crash while rewriting the region")

        monkeypatch.setattr(cosign_module, "pwrite_all", torn_pwrite)
    elif point == "signature":  # region rewritten, .tar.sig not yet replaced
        real_write_atomic = cosign_module.write_atomic

        def failing(path: Path, data, **kw) -> None:
            if path.name.endswith(".tar.sig"):
                raise OSError(28, "simulated crash before the .tar.sig")
            real_write_atomic(path, data, **kw)

        monkeypatch.setattr(cosign_module, "write_atomic", failing)
    else:  # everything written, the journal not yet removed
        real_unlink = Path.unlink

        def failing_unlink(self: Path, missing_ok: bool = False) -> None:
            if self.name.endswith(".cosign-journal"):
                raise OSError(5, "simulated crash before the journal was removed")
            real_unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", failing_unlink)


@pytest.mark.parametrize("point", ["region", "signature", "journal"])
def test_interrupted_cosign_is_refused_by_verify_and_finished_by_signing_again(
    tmp_path: Path, alice, monkeypatch, point: str
) -> None:
    from bundler.bundle.region import journal_path
    from bundler.bundle.verify import verify_bundle

    bob = make_key(tmp_path / "keys", "bob")
    result = make_bundle(tmp_path, [alice])
    before = result.path.read_bytes()
    offset = read_metadata(result.path).payload_offset
    with monkeypatch.context() as m:
        _crash_cosign(m, point)
        with pytest.raises(OSError, match="simulated crash"):
            cosign(result.path, bob.signer)
    journal = journal_path(result.path)
    assert journal.exists()
    after = result.path.read_bytes()
    assert after[offset:] == before[offset:]
    if point == "region":  # the hazard: without the journal the region is half-written
        assert after[:offset] != before[:offset]
        aside = journal.rename(tmp_path / "aside")
        with pytest.raises(AirlockError):
            verify_bundle(result.path, policy_for(tmp_path, [alice]), now=DURING)
        aside.rename(journal)
    with pytest.raises(IntegrityError, match="interrupted") as refused:
        verify_bundle(result.path, policy_for(tmp_path, [alice]), now=DURING)
    assert "airlock sign" in (refused.value.hint or "")

    done = cosign(result.path, bob.signer)  # the same command again finishes it
    assert done.in_place and not journal.exists()
    report = verify_bundle(result.path, policy_for(tmp_path, [alice, bob], threshold=2), now=DURING)
    assert len(report.signers) == 2
    whole = result.path.read_bytes()
    assert whole[offset:] == before[offset:]
    key = sshsig.verify(whole, result.signature_path.read_bytes(), namespace="airlock-archive-v1")
    assert key.fingerprint == bob.signer.public_key.fingerprint


def test_a_different_cosigner_finishes_an_interrupted_cosign_first(
    tmp_path: Path, alice, monkeypatch
) -> None:
    from bundler.bundle.verify import verify_bundle

    bob = make_key(tmp_path / "keys", "bob")
    carol = make_key(tmp_path / "keys", "carol")
    result = make_bundle(tmp_path, [alice])
    with monkeypatch.context() as m:
        _crash_cosign(m, "region")
        with pytest.raises(OSError):
            cosign(result.path, bob.signer)
    done = cosign(result.path, carol.signer)
    assert len(done.signatures) == 3
    policy = policy_for(tmp_path, [alice, bob, carol], threshold=3)
    assert len(verify_bundle(result.path, policy, now=DURING).signers) == 3


def test_a_damaged_cosign_journal_is_refused_and_nothing_is_changed(tmp_path: Path, alice) -> None:
    from bundler.bundle.region import journal_path
    from bundler.errors import ArchiveFormatError

    bob = make_key(tmp_path / "keys", "bob")
    result = make_bundle(tmp_path, [alice])
    before = result.path.read_bytes()
    journal_path(result.path).write_text('{"format": "airlock-cosign-journal", "version": 1}')
    with pytest.raises(ArchiveFormatError, match="journal"):
        cosign(result.path, bob.signer)
    assert result.path.read_bytes() == before


@pytest.mark.parametrize("point", ["before-rename", "after-rename"])
def test_interrupted_rewriting_cosign_leaves_a_consistent_bundle_and_sig(
    tmp_path: Path, alice, monkeypatch, point: str
) -> None:
    """Reserve full: the co-sign writes a new archive; a crash around its rename is safe."""
    import bundler.fsio as fsio
    from bundler.bundle.region import build_region, journal_path
    from bundler.bundle.verify import verify_bundle

    def reserve_full() -> bool:
        meta = read_metadata(result.path)
        one_more = ("airlock/signatures/" + "x" * 43 + ".sig", meta.signatures[0][1])
        region = build_region(
            meta.manifest_bytes, [*meta.signatures, one_more], meta.payload_offset, EPOCH
        )
        return region is None

    result = make_bundle(tmp_path, [alice])
    keys: list = []
    while not reserve_full():
        keys.append(make_key(tmp_path / "many", f"k{len(keys)}"))
        assert cosign(result.path, keys[-1].signer).in_place
    assert len(keys) >= COSIGN_SLOTS
    keys.append(make_key(tmp_path / "many", "last"))
    last = keys[-1]
    before, sig_before = result.path.read_bytes(), result.signature_path.read_bytes()
    with monkeypatch.context() as m:
        if point == "before-rename":
            real_replace = os.replace

            def no_rename(src, dst) -> None:
                if Path(dst) == result.path:
                    raise OSError(5, "simulated crash before the rename")
                real_replace(src, dst)

            m.setattr(fsio.os, "replace", no_rename)
        else:
            _crash_cosign(m, "signature")
        with pytest.raises(OSError, match="simulated crash"):
            cosign(result.path, last.signer)
    assert journal_path(result.path).exists()
    if point == "before-rename":  # the old bundle and its .sig are untouched and consistent
        assert result.path.read_bytes() == before
        assert result.signature_path.read_bytes() == sig_before
    policy = policy_for(tmp_path, [alice, *keys], threshold=len(keys) + 1)
    with pytest.raises(IntegrityError, match="interrupted"):
        verify_bundle(result.path, policy, now=DURING)
    done = cosign(result.path, last.signer)  # finishes it (or, before the rename, redoes it)
    assert not done.in_place or point == "after-rename"
    assert not journal_path(result.path).exists()
    assert len(verify_bundle(result.path, policy, now=DURING).signers) == len(keys) + 1
    whole = result.path.read_bytes()
    key = sshsig.verify(whole, result.signature_path.read_bytes(), namespace="airlock-archive-v1")
    assert key.fingerprint == last.signer.public_key.fingerprint


# --- a journal is replayed only when it belongs to this bundle and this manifest -----------


def _plant(bundle: Path, record: dict) -> None:
    import json

    from bundler.bundle.region import journal_path

    journal_path(bundle).write_text(json.dumps(record))


def _swapped_manifest_region(bundle: Path, mallory) -> tuple[bytes, bytes, bytes]:
    """The old region, and one with a manifest whose sequence would lock out every release,
    plus a .tar.sig for it by mallory (whose key the site does not trust)."""
    import hashlib

    from bundler.bundle.manifest import canonical_json
    from bundler.bundle.region import archive_digest, archive_signature, build_region

    meta = read_metadata(bundle)
    evil = canonical_json({**meta.manifest, "sequence": 2**53})
    region = build_region(evil, meta.signatures, meta.payload_offset, EPOCH)
    assert region is not None
    base = bundle.read_bytes()[: meta.payload_offset]
    sig = archive_signature(mallory.signer, archive_digest(bundle, region=region))
    assert hashlib.sha256(evil).hexdigest() != meta.manifest_sha256
    return base, region, sig


@pytest.mark.parametrize("version", [1, 2])
def test_rejects_planted_journal_that_swaps_in_another_manifest(
    tmp_path: Path, alice, version: int
) -> None:
    """A journal dropped beside the bundle must not make bob sign a manifest he never saw."""
    import base64
    import hashlib

    from bundler.bundle.region import journal_path
    from bundler.bundle.verify import verify_bundle
    from bundler.errors import ArchiveFormatError

    bob, mallory = make_key(tmp_path / "keys", "bob"), make_key(tmp_path / "keys", "mallory")
    result = make_bundle(tmp_path, [alice])
    base, region, archive_sig = _swapped_manifest_region(result.path, mallory)
    record = {
        "format": "airlock-cosign-journal",
        "version": version,
        "mode": "in-place",
        "bundle_size": result.path.stat().st_size,
        "region_sha256": hashlib.sha256(region).hexdigest(),
        "region": base64.b64encode(region).decode(),
        "archive_signature": archive_sig.decode(),
    }
    if version == 2:  # the journal even claims the swapped manifest as the one co-signed
        record.update(
            manifest_sha256=read_metadata_stream_of(region).manifest_sha256,
            base_region=base64.b64encode(base).decode(),
            base_region_sha256=hashlib.sha256(base).hexdigest(),
        )
    _plant(result.path, record)
    before, sig_before = result.path.read_bytes(), result.signature_path.read_bytes()
    shown = []
    expected = ArchiveFormatError if version == 1 else IntegrityError
    with pytest.raises(expected) as refused:
        cosign(result.path, bob.signer, show=shown.append)
    assert type(refused.value) is expected
    if version == 2:
        assert "would replace the manifest" in refused.value.message
    assert shown == [], "the co-signer must not be shown, let alone sign, anything"
    assert result.path.read_bytes() == before
    assert result.signature_path.read_bytes() == sig_before
    assert journal_path(result.path).exists()  # left for the operator to look at
    with pytest.raises(IntegrityError, match="interrupted"):
        verify_bundle(result.path, policy_for(tmp_path, [alice, bob]), now=DURING)
    journal_path(result.path).unlink()  # once the operator removed it, all is as before
    done = cosign(result.path, bob.signer, show=shown.append)
    assert shown[0].sequence == 1 and done.target == shown[0]
    report = verify_bundle(result.path, policy_for(tmp_path, [alice, bob], threshold=2), now=DURING)
    assert report.sequence == 1


def read_metadata_stream_of(region: bytes):
    import io

    from runtime.bundle import read_metadata_stream

    return read_metadata_stream(io.BytesIO(region))


def _journal_after_crash(tmp_path: Path, alice, monkeypatch) -> tuple[Path, dict]:
    import hashlib
    import json

    from bundler.bundle.region import journal_path

    bob = make_key(tmp_path / "keys", "bob")
    # same size as any other such bundle, other bytes: only the contents tell them apart
    unique = {"evidence/id.txt": hashlib.sha256(str(tmp_path).encode()).hexdigest().encode()}
    result = make_bundle(tmp_path, [alice], stage=make_stage(tmp_path, unique))
    with monkeypatch.context() as m:
        _crash_cosign(m, "signature")
        with pytest.raises(OSError):
            cosign(result.path, bob.signer)
    return result.path, json.loads(journal_path(result.path).read_text())


@pytest.mark.parametrize(
    "forgery, needle",
    [
        ("journal of another bundle", "was not started from"),
        ("tar.sig over other bytes", "does not verify over the co-signed bundle"),
        ("signature removed", "exactly one signature"),
        ("size changed", "was not started from"),
    ],
)
def test_rejects_journal_that_does_not_belong_to_the_bundle(
    tmp_path: Path, alice, monkeypatch, forgery: str, needle: str
) -> None:
    import base64
    import hashlib

    bundle, record = _journal_after_crash(tmp_path, alice, monkeypatch)
    if forgery == "journal of another bundle":  # a real journal, from a twin bundle's crash
        (tmp_path / "other").mkdir()
        _, record = _journal_after_crash(tmp_path / "other", alice, monkeypatch)
    elif forgery == "tar.sig over other bytes":
        record["archive_signature"] = result_sig(bundle).decode()
    elif forgery == "signature removed":
        meta = read_metadata(bundle)
        from bundler.bundle.region import build_region

        region = build_region(meta.manifest_bytes, [], meta.payload_offset, EPOCH)
        assert region is not None
        record["region"] = base64.b64encode(region).decode()
        record["region_sha256"] = hashlib.sha256(region).hexdigest()
    else:
        record["bundle_size"] += 512
    if forgery == "journal of another bundle":
        assert record["bundle_size"] == bundle.stat().st_size  # the torn-write check decides
    _plant(bundle, record)
    before = bundle.read_bytes()
    with pytest.raises(IntegrityError, match=needle):
        cosign(bundle, make_key(tmp_path / "keys", "carol").signer)
    assert bundle.read_bytes() == before


def result_sig(bundle: Path) -> bytes:
    return Path(str(bundle) + ".sig").read_bytes()


def test_cosign_shows_what_it_signs_and_refuses_another_manifest(tmp_path: Path, alice) -> None:
    import hashlib

    bob = make_key(tmp_path / "keys", "bob")
    result = make_bundle(tmp_path, [alice])
    meta = read_metadata(result.path)
    before = result.path.read_bytes()
    with pytest.raises(IntegrityError, match="nothing was signed"):
        cosign(result.path, bob.signer, expect_manifest=hashlib.sha256(b"other").hexdigest())
    assert result.path.read_bytes() == before
    shown = []
    done = cosign(result.path, bob.signer, expect_manifest=meta.manifest_sha256, show=shown.append)
    assert [(t.name, t.version, t.sequence, t.manifest_sha256) for t in shown] == [
        ("demo", "1.0.0", 1, meta.manifest_sha256)
    ]
    assert done.target == shown[0]
    assert read_metadata(result.path).manifest_bytes == meta.manifest_bytes
