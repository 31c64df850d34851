"""The attack suite: every tampering a bundle can suffer on its way across the gap.

Each test crafts the attack with real keys and real tar bytes, then asserts the exact
error class from both the connected-side verifier and the host-side unpack, and that
nothing was written at (or beside) the destination.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest

from bundler.bundle.verify import unpack_bundle, verify_bundle
from bundler.errors import (
    ArchiveFormatError,
    ExpiredError,
    IntegrityError,
    TrustError,
)
from bundler.ssh import sig as sshsig
from bundler.ssh.trust import TrustPolicy, load_policy
from runtime.bundle import MANIFEST_NAME, read_metadata
from runtime.unpack import unpack
from tests.bundlekit import (
    CREATED,
    DURING,
    EPOCH,
    file_info,
    make_bundle,
    make_key,
    make_stage,
    members,
    policy_for,
    with_region,
    write_tar,
)


@pytest.fixture
def alice(tmp_path: Path):
    return make_key(tmp_path / "keys", "alice")


@pytest.fixture
def bob(tmp_path: Path):
    return make_key(tmp_path / "keys", "bob")


@pytest.fixture
def bundle(tmp_path: Path, alice) -> Path:
    return make_bundle(tmp_path, [alice]).path


@pytest.fixture
def policy(tmp_path: Path, alice) -> TrustPolicy:
    return policy_for(tmp_path, [alice])


def assert_refused(
    tmp_path: Path,
    bundle: Path,
    policy: TrustPolicy,
    error: type[Exception],
    *,
    host_sha256: str | None = None,
) -> Exception:
    """The verifier, the policy-checked unpack and (given the controller-verified manifest
    digest) the host-side unpack all refuse with ``error``; nothing appears on disk."""
    with pytest.raises(error) as exc:
        verify_bundle(bundle, policy, now=DURING)
    target = tmp_path / "target"
    target.mkdir(exist_ok=True)
    dest = target / "release"
    with pytest.raises(error):
        unpack_bundle(bundle, dest, policy, now=DURING)
    if host_sha256 is not None:
        with pytest.raises(error):
            unpack(bundle, dest, manifest_sha256=host_sha256)
    assert list(target.iterdir()) == [], "nothing may be left at or beside the destination"
    assert not (tmp_path / "evil").exists()
    return exc.value


def rewrite(bundle: Path, out: Path, change) -> Path:
    """Rewrite ``bundle`` member by member through ``change(list) -> list``."""
    write_tar(out, change(members(bundle)))
    return out


def flip_at(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def data_offset(bundle: Path, name: str) -> int:
    with tarfile.open(bundle, "r:") as tf:
        return tf.getmember(name).offset_data


def manifest_sha(bundle: Path) -> str:
    return read_metadata(bundle).manifest_sha256


# --------------------------------------------------------------------------- flipped bytes


def test_rejects_flipped_byte_in_manifest(tmp_path, bundle, policy) -> None:
    original = manifest_sha(bundle)
    raw = read_metadata(bundle).manifest_bytes
    offset = data_offset(bundle, MANIFEST_NAME) + raw.index(b'"sha256":"') + 12
    flip_at(bundle, offset)
    err = assert_refused(tmp_path, bundle, policy, TrustError)
    assert "does not match" in "\n".join(err.problems)
    with pytest.raises(IntegrityError):
        unpack(bundle, tmp_path / "target" / "r", manifest_sha256=original)


def test_rejects_flipped_byte_in_signature(tmp_path, bundle, policy) -> None:
    sig = read_metadata(bundle).signatures[0][0]
    flip_at(bundle, data_offset(bundle, sig) + 120)
    assert_refused(tmp_path, bundle, policy, TrustError)


@pytest.mark.parametrize("member", ["models/tiny/tiny.gguf", "SHA256SUMS", "README.md"])
def test_rejects_flipped_byte_in_payload(tmp_path, bundle, policy, member) -> None:
    original = manifest_sha(bundle)
    flip_at(bundle, data_offset(bundle, member) + 5)
    err = assert_refused(tmp_path, bundle, policy, IntegrityError, host_sha256=original)
    assert err.problems == (f"{member}: sha256 does not match the signed manifest",)


def test_rejects_flipped_byte_in_header(tmp_path, bundle, policy) -> None:
    with tarfile.open(bundle, "r:") as tf:
        offset = tf.getmember("README.md").offset
    flip_at(bundle, offset + 2)  # inside the name: the header checksum no longer matches
    assert_refused(tmp_path, bundle, policy, ArchiveFormatError, host_sha256=manifest_sha(bundle))


# --------------------------------------------------------------------------- member set


def test_rejects_extra_member(tmp_path, bundle, policy) -> None:
    original = manifest_sha(bundle)
    bad = rewrite(
        bundle, tmp_path / "bad.tar", lambda m: [*m, (file_info("zzz/backdoor.sh", b"x"), b"x")]
    )
    err = assert_refused(tmp_path, bad, policy, IntegrityError, host_sha256=original)
    assert err.problems == ("member 'zzz/backdoor.sh' is not listed in the signed manifest",)


def test_rejects_missing_member(tmp_path, bundle, policy) -> None:
    original = manifest_sha(bundle)
    bad = rewrite(
        bundle, tmp_path / "bad.tar", lambda m: [x for x in m if x[0].name != "README.md"]
    )
    err = assert_refused(tmp_path, bad, policy, IntegrityError, host_sha256=original)
    assert "README.md: listed in the manifest but missing from the archive" in err.problems


def test_rejects_duplicate_member_names(tmp_path, bundle, policy) -> None:
    def dup(m):
        readme = next(x for x in m if x[0].name == "README.md")
        return [*m, readme]

    bad = rewrite(bundle, tmp_path / "bad.tar", dup)
    err = assert_refused(
        tmp_path, bad, policy, ArchiveFormatError, host_sha256=manifest_sha(bundle)
    )
    assert "member 'README.md' appears more than once" in err.problems


def test_rejects_out_of_order_members(tmp_path, bundle, policy) -> None:
    def swap(m):
        head = m[:3]
        return head + list(reversed(m[3:]))

    bad = rewrite(bundle, tmp_path / "bad.tar", swap)
    assert_refused(tmp_path, bad, policy, ArchiveFormatError, host_sha256=manifest_sha(bundle))


def test_rejects_manifest_swapped_in_from_another_bundle(tmp_path, alice, policy) -> None:
    a = make_bundle(tmp_path / "a", [alice]).path
    stage_b = make_stage(tmp_path / "b", {"README.md": b"# a different bundle\n"})
    b = make_bundle(tmp_path / "b", [alice], stage=stage_b).path
    # B's validly signed manifest and signatures in front of A's payload.
    meta_b = members(b)[:3]
    payload_a = members(a)[3:]
    bad = tmp_path / "mixed.tar"
    write_tar(bad, meta_b + payload_a)
    err = assert_refused(tmp_path, bad, policy, IntegrityError, host_sha256=manifest_sha(b))
    assert err.problems == (
        "README.md: archive says 14 bytes, manifest says 21",
        "SHA256SUMS: sha256 does not match the signed manifest",
    )


def test_rejects_declared_size_disagreeing_with_data(tmp_path, bundle, policy) -> None:
    def grow(m):
        out = []
        for info, data in m:
            if info.name == "README.md":
                data = data + b"appended\n"
                info.size = len(data)
            out.append((info, data))
        return out

    bad = rewrite(bundle, tmp_path / "bad.tar", grow)
    err = assert_refused(tmp_path, bad, policy, IntegrityError, host_sha256=manifest_sha(bundle))
    assert any("archive says 23 bytes, manifest says 14" in p for p in err.problems)


def test_rejects_header_size_larger_than_data(tmp_path, bundle, policy) -> None:
    # The last member claims more bytes than the archive holds: a truncation in disguise.
    data = bundle.read_bytes()
    cut = data_offset(bundle, "runtime/" + "deep/" * 30 + "long-name.py") + 5
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data[:cut])
    assert_refused(tmp_path, bad, policy, ArchiveFormatError, host_sha256=manifest_sha(bundle))


def test_rejects_truncated_archive(tmp_path, bundle, policy) -> None:
    data = bundle.read_bytes()
    for cut in (len(data) - 10240, data_offset(bundle, "models/tiny/tiny.gguf") + 1000, 700):
        bad = tmp_path / f"cut-{cut}.tar"
        bad.write_bytes(data[:cut])
        assert_refused(tmp_path, bad, policy, ArchiveFormatError)


def test_rejects_data_after_end_of_archive(tmp_path, bundle, policy) -> None:
    with open(bundle, "ab") as f:
        f.write(b"smuggled" * 100)
    assert_refused(tmp_path, bundle, policy, ArchiveFormatError, host_sha256=manifest_sha(bundle))


# --------------------------------------------------------------------------- member kinds


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mtime = EPOCH
    return info, b""


@pytest.mark.parametrize(
    "special",
    [
        _special("README.md", tarfile.SYMTYPE, "/etc/passwd"),
        _special("README.md", tarfile.LNKTYPE, "SHA256SUMS"),
        _special("dev/null0", tarfile.CHRTYPE),
        _special("dev/sda9", tarfile.BLKTYPE),
        _special("fifo", tarfile.FIFOTYPE),
        _special("models/", tarfile.DIRTYPE),
    ],
    ids=["symlink", "hardlink", "char-device", "block-device", "fifo", "directory"],
)
def test_rejects_non_regular_members(tmp_path, bundle, policy, special) -> None:
    def inject(m):
        return [*m[:3], special, *m[3:]]

    bad = rewrite(bundle, tmp_path / "bad.tar", inject)
    err = assert_refused(
        tmp_path, bad, policy, ArchiveFormatError, host_sha256=manifest_sha(bundle)
    )
    assert "regular files only" in err.problems[0]


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "models/../../evil", "./README.md"])
def test_rejects_traversal_and_absolute_member_paths(tmp_path, bundle, policy, name) -> None:
    bad = rewrite(bundle, tmp_path / "bad.tar", lambda m: [*m, (file_info(name, b"x"), b"x")])
    err = assert_refused(
        tmp_path, bad, policy, ArchiveFormatError, host_sha256=manifest_sha(bundle)
    )
    assert name in err.problems[0]


def test_rejects_traversal_path_in_a_signed_manifest(tmp_path, alice, policy) -> None:
    # A trusted signer was tricked into signing a manifest naming ../evil: still refused.
    from bundler.bundle import manifest as mf

    good = make_bundle(tmp_path, [alice]).path
    meta = read_metadata(good)
    forged = meta.manifest_bytes.replace(b'"path":"README.md"', b'"path":"../evil.md"')
    sig = sshsig.sign(forged, alice.signer, namespace=sshsig.MANIFEST_NAMESPACE)

    def swap(m):
        m[0] = (file_info(MANIFEST_NAME, forged), forged)
        m[1] = (file_info(m[1][0].name, sig), sig)
        return m

    bad = rewrite(good, tmp_path / "bad.tar", swap)
    with pytest.raises(ArchiveFormatError):
        mf.parse(forged)
    assert_refused(tmp_path, bad, policy, ArchiveFormatError)


# --------------------------------------------------------------------------- trust policy


def test_rejects_untrusted_key(tmp_path, alice, bob) -> None:
    bundle = make_bundle(tmp_path, [bob]).path
    err = assert_refused(tmp_path, bundle, policy_for(tmp_path, [alice]), TrustError)
    assert "0 of the required 1" in err.message


def test_rejects_revoked_key(tmp_path, alice, bundle) -> None:
    policy = policy_for(tmp_path, [alice, make_key(tmp_path / "k", "carol")], revoked=[alice])
    err = assert_refused(tmp_path, bundle, policy, TrustError)
    assert "revoked" in "\n".join(err.problems)


def test_rejects_expired_bundle(tmp_path, alice, policy) -> None:
    bundle = make_bundle(tmp_path, [alice], expires=CREATED + timedelta(hours=1)).path
    err = assert_refused(tmp_path, bundle, policy, ExpiredError)
    assert "expired at 2026-01-01T01:00:00Z" in err.message


def test_rejects_key_after_its_valid_before(tmp_path, alice, bundle) -> None:
    policy = policy_for(tmp_path, [alice], options='valid-before="20260101"')
    err = assert_refused(tmp_path, bundle, policy, TrustError)
    assert "valid-before" in "\n".join(err.problems)


def test_rejects_one_signature_duplicated_to_pad_the_threshold(
    tmp_path, alice, bob, bundle
) -> None:
    # The copy needs a second member name, and a member's name is its key's id: a copy under
    # any other name is not a signature member at all, so it cannot count (a key counting
    # once is tested in tests/unit/ssh/test_trust.py).
    sigs = read_metadata(bundle).signatures
    copy = ("airlock/signatures/" + "z" * 43 + ".sig", sigs[0][1])
    bad = with_region(bundle, tmp_path / "bad.tar", [*sigs, copy])
    err = assert_refused(tmp_path, bad, policy_for(tmp_path, [alice, bob], threshold=2), TrustError)
    assert "1 of the required 2" in err.message
    assert "member name does not match the signing key" in "\n".join(err.problems)


def test_rejects_signature_in_the_wrong_namespace(tmp_path, alice, bundle, policy) -> None:
    manifest = read_metadata(bundle).manifest_bytes
    wrong = sshsig.sign(manifest, alice.signer, namespace=sshsig.ARCHIVE_NAMESPACE)

    def swap(m):
        m[1] = (file_info(m[1][0].name, wrong), wrong)
        return m

    bad = rewrite(bundle, tmp_path / "bad.tar", swap)
    err = assert_refused(tmp_path, bad, policy, TrustError)
    assert "namespace" in "\n".join(err.problems)


def test_rejects_non_zero_reserve(tmp_path, bundle, policy) -> None:
    flip_at(bundle, data_offset(bundle, "airlock/reserve") + 10)
    assert_refused(tmp_path, bundle, policy, ArchiveFormatError)


def test_unpack_refuses_an_existing_destination_and_leaves_it_alone(
    tmp_path, bundle, policy
) -> None:
    from bundler.errors import InstallError

    dest = tmp_path / "release"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(InstallError):
        unpack_bundle(bundle, dest, policy, now=DURING)
    assert [p.name for p in dest.iterdir()] == ["keep"]


# --------------------------------------------------------------------------- large files


@pytest.mark.slow
def test_handles_a_file_larger_than_4_gib_in_constant_memory(tmp_path) -> None:
    stage = make_stage(tmp_path)
    big = stage / "models/tiny/big.bin"
    size = 4 * 1024**3 + 4097
    with open(big, "wb") as f:
        f.truncate(size)  # sparse input: no 4 GiB of RAM or disk to make it
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from tests.bundlekit import make_bundle, make_key, policy_for, DURING\n"
        "from bundler.bundle.verify import verify_bundle\n"
        "t = Path(sys.argv[1])\n"
        "k = make_key(t / 'k2', 'alice')\n"
        "b = make_bundle(t, [k], stage=t / 'stage').path\n"
        "r = verify_bundle(b, policy_for(t, [k]), now=DURING)\n"
        "print(r.bytes, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ).stdout.split()
    assert int(out[0]) > size
    assert int(out[1]) < 200 * 1024, f"peak RSS {out[1]} KiB"
    bundle = tmp_path / "out" / "demo-1.0.0.tar"
    with tarfile.open(bundle, "r:") as tf:  # GNU-compatible headers: stock readers agree
        assert tf.getmember("models/tiny/big.bin").size == size
    # A flipped byte deep past 4 GiB is caught.
    flip_at(bundle, data_offset(bundle, "models/tiny/big.bin") + size - 10)
    with pytest.raises(IntegrityError):
        verify_bundle(bundle, load_policy(tmp_path / "allowed_signers"), now=DURING)
    bundle.unlink()
