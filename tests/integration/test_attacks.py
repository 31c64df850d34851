"""The attack suite: every tampering a bundle can suffer on its way across the gap.

Each test crafts the attack with real keys and real tar bytes, then asserts the exact
error class from both the connected-side verifier and the host-side unpack, and that
nothing was written at (or beside) the destination.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest

from bundler.bundle.cosign import cosign
from bundler.bundle.region import build_region, signature_name
from bundler.bundle.summary import inspect_bundle
from bundler.bundle.verify import unpack_bundle, verify_bundle
from bundler.errors import (
    ArchiveFormatError,
    ExpiredError,
    InstallError,
    IntegrityError,
    SignatureError,
    TrustError,
)
from bundler.ssh import sig as sshsig
from bundler.ssh.trust import TrustPolicy, load_policy
from runtime.bundle import BLOCK, MANIFEST_NAME, PAX_NAME, read_metadata
from runtime.tarformat import end_of_archive, member_header, pad, pax_record, ustar_block
from runtime.unpack import unpack
from tests.bundlekit import (
    CREATED,
    DURING,
    EPOCH,
    canonical,
    craft_bundle,
    file_info,
    header_of,
    make_bundle,
    make_key,
    make_stage,
    manifest_of,
    members,
    policy_for,
    region_for,
    set_field,
    signatures_by,
    splice,
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


# --------------------------------------------------------------------------- parser differentials
#
# Headers GNU tar or Python's tarfile would read (some of them differently from airlock):
# refused, so a transfer station's `tar -xf` + `sha256sum -c` can never see another tree
# than the one airlock verified.


def _ustar(bundle: Path, path: str) -> bytes:
    h = header_of(bundle, path)
    return bundle.read_bytes()[h.offset - BLOCK : h.offset]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("magic", b"ustar "),  # old GNU tar's magic
        ("version", b" \0"),
        ("version", b"01"),
        ("prefix", b"evil"),  # GNU tar and tarfile read evil/README.md
        ("uid", b"0001750\0"),
        ("gid", b"0001750\0"),
        ("uname", b"root"),
        ("gname", b"wheel"),
        ("mtime", b"%011o\0" % (EPOCH + 1)),
        ("mode", b"0004755\0"),  # setuid
        ("mode", b"644\0"),  # same value, another spelling
        ("size", b"16 "),  # same value, another spelling
        ("linkname", b"/etc/passwd"),
        ("devmajor", b"0000001\0"),
        ("padding", b"smuggled"),
        ("name", b"README.md\0evil"),  # bytes after the name's NUL
    ],
)
def test_rejects_header_fields_the_writer_never_writes(
    tmp_path, bundle, policy, field, value
) -> None:
    block = set_field(_ustar(bundle, "README.md"), field, value)
    bad = splice(bundle, tmp_path / "bad.tar", "README.md", block)
    err = assert_refused(
        tmp_path, bad, policy, ArchiveFormatError, host_sha256=manifest_sha(bundle)
    )
    assert "'README.md'" in err.problems[0] and "not one airlock writes" in err.problems[0]


def test_rejects_a_checksum_written_another_way(tmp_path, bundle, policy) -> None:
    block = bytearray(_ustar(bundle, "README.md"))
    block[148:156] = b"%07o\0" % int(block[148:154], 8)  # right value, GNU's other layout
    bad = splice(bundle, tmp_path / "bad.tar", "README.md", bytes(block))
    err = assert_refused(tmp_path, bad, policy, ArchiveFormatError)
    assert "chksum" in err.problems[0]


def test_a_prefix_field_makes_gnu_tar_see_another_path(tmp_path, bundle, policy) -> None:
    # The differential the check closes: stock tools read a path airlock never verified.
    block = set_field(_ustar(bundle, "README.md"), "prefix", b"evil")
    bad = splice(bundle, tmp_path / "bad.tar", "README.md", block)
    with tarfile.open(bad, "r:") as tf:
        assert "evil/README.md" in tf.getnames()
    assert_refused(tmp_path, bad, policy, ArchiveFormatError)


def _pax(records: bytes, *, typeflag: bytes = b"x") -> bytes:
    return ustar_block(PAX_NAME.encode(), len(records), 0o644, EPOCH, typeflag) + pad(records)


def test_rejects_a_pax_path_the_ustar_header_could_hold(tmp_path, bundle, policy) -> None:
    headers = _pax(pax_record("path", "README.md")) + _ustar(bundle, "README.md")
    bad = splice(bundle, tmp_path / "bad.tar", "README.md", headers)
    err = assert_refused(tmp_path, bad, policy, ArchiveFormatError)
    assert "a PAX header where the ustar header holds the path and size" in err.problems[0]


def test_rejects_a_pax_size_below_8_gib(tmp_path, bundle, policy) -> None:
    headers = _pax(pax_record("size", "14")) + _ustar(bundle, "README.md")
    bad = splice(bundle, tmp_path / "bad.tar", "README.md", headers)
    assert_refused(tmp_path, bad, policy, ArchiveFormatError)


def test_rejects_a_pax_path_disagreeing_with_its_ustar_name(tmp_path, bundle, policy) -> None:
    long = "runtime/" + "deep/" * 30 + "long-name.py"
    h = header_of(bundle, long)
    data = bundle.read_bytes()
    pax, block = data[h.start : h.offset - BLOCK], data[h.offset - BLOCK : h.offset]
    bad = splice(bundle, tmp_path / "bad.tar", long, pax + set_field(block, "name", b"evil.py"))
    err = assert_refused(tmp_path, bad, policy, ArchiveFormatError)
    assert "name is b'evil.py'" in err.problems[0]


@pytest.mark.parametrize(
    "record",
    [
        pax_record("mtime", "1767225600"),
        pax_record("uid", "0"),
        pax_record("uname", "root"),
        pax_record("linkpath", "/etc/passwd"),
        pax_record("hdrcharset", "BINARY"),
        pax_record("GNU.sparse.size", "14"),
        pax_record("path", "README.md") + pax_record("path", "README.md"),
        b"99 path=README.md\n",
    ],
    ids=["mtime", "uid", "uname", "linkpath", "hdrcharset", "gnu-sparse", "repeated", "length"],
)
def test_rejects_pax_records_the_writer_never_writes(tmp_path, bundle, policy, record) -> None:
    headers = _pax(record) + _ustar(bundle, "README.md")
    bad = splice(bundle, tmp_path / "bad.tar", "README.md", headers)
    assert_refused(tmp_path, bad, policy, ArchiveFormatError, host_sha256=manifest_sha(bundle))


@pytest.mark.parametrize("typeflag", [b"g", b"L", b"K", b"S", b"7", b"A"])
def test_rejects_other_extension_headers(tmp_path, bundle, policy, typeflag) -> None:
    headers = _pax(b"README.md\0", typeflag=typeflag) + _ustar(bundle, "README.md")
    bad = splice(bundle, tmp_path / "bad.tar", "README.md", headers)
    err = assert_refused(tmp_path, bad, policy, ArchiveFormatError)
    assert "regular files only" in err.problems[0]


def test_rejects_bytes_smuggled_in_member_padding(tmp_path, bundle, policy) -> None:
    h = header_of(bundle, "README.md")
    data = bytearray(bundle.read_bytes())
    data[h.offset + h.size : h.offset + h.size + 8] = b"smuggled"
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    err = assert_refused(tmp_path, bad, policy, ArchiveFormatError)
    assert "non-zero padding after 'README.md'" in err.problems


@pytest.mark.parametrize("change", ["extra record", "short record"])
def test_rejects_an_end_of_archive_other_than_the_writers(tmp_path, bundle, policy, change) -> None:
    data = bundle.read_bytes()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data + bytes(10240) if change == "extra record" else data[:-512])
    assert_refused(tmp_path, bad, policy, ArchiveFormatError, host_sha256=manifest_sha(bundle))


def test_rejects_a_metadata_region_off_its_4k_boundary(tmp_path, bundle, policy) -> None:
    meta = read_metadata(bundle)
    region = build_region(meta.manifest_bytes, meta.signatures, meta.payload_offset - 512, EPOCH)
    assert region is not None
    bad = tmp_path / "bad.tar"
    bad.write_bytes(region + bundle.read_bytes()[meta.payload_offset :])
    err = assert_refused(tmp_path, bad, policy, ArchiveFormatError)
    assert "not on a 4096-byte boundary" in err.message


# --------------------------------------------------------------------------- unsigned metadata


def test_rejects_a_signature_member_that_is_not_a_signature(
    tmp_path, alice, bob, bundle, policy
) -> None:
    # The threshold (alice) is met; the other member carries arbitrary bytes.
    sigs = read_metadata(bundle).signatures
    junk = ("airlock/signatures/" + "A" * 43 + ".sig", b"arbitrary bytes across the gap\n")
    bad = with_region(bundle, tmp_path / "bad.tar", [junk, *sigs])
    err = assert_refused(tmp_path, bad, policy, SignatureError)
    assert "1 of the required 1 trusted signature(s) are present" in err.message
    assert err.problems[0].startswith(junk[0] + ": ")
    with pytest.raises(ArchiveFormatError, match="not SSH signatures as airlock writes them"):
        unpack(bad, tmp_path / "target" / "r", manifest_sha256=manifest_sha(bundle))
    with pytest.raises(ArchiveFormatError):  # airlock sign will not carry it further
        cosign(bad, bob.signer)


def test_rejects_bytes_hidden_in_a_valid_signatures_reserved_field(tmp_path, alice, bob) -> None:
    from tests.fuzzkit import _with_reserved

    bundle = make_bundle(tmp_path, [alice, bob]).path
    policy = policy_for(tmp_path, [alice, bob])
    meta = read_metadata(bundle)
    name, sig = meta.signatures[1]
    hidden = _with_reserved(sig, b"smuggled across the gap")
    if shutil.which("ssh-keygen"):  # still a valid signature for OpenSSH: it ignores the field
        allowed = tmp_path / "allowed_signers"
        signer = next(k for k in (alice, bob) if name == signature_name(k.signer))
        (tmp_path / "s.sig").write_bytes(hidden)
        ok = subprocess.run(
            [
                *("ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", signer.principal),
                *("-n", "airlock-manifest-v1", "-s", str(tmp_path / "s.sig")),
            ],
            input=meta.manifest_bytes,
            capture_output=True,
        )
        assert ok.returncode == 0, ok.stderr
    bad = with_region(bundle, tmp_path / "bad.tar", [meta.signatures[0], (name, hidden)])
    err = assert_refused(tmp_path, bad, policy, SignatureError)
    assert f"{name}: the SSHSIG reserved field is not empty" in err.problems


def test_rejects_a_valid_signature_that_does_not_verify_when_the_threshold_is_met(
    tmp_path, alice, bob
) -> None:
    bundle = make_bundle(tmp_path, [alice, bob]).path
    meta = read_metadata(bundle)
    other = sshsig.sign(b"another manifest", bob.signer, namespace=sshsig.MANIFEST_NAMESPACE)
    name = signature_name(bob.signer)
    sigs = sorted([*(s for s in meta.signatures if s[0] != name), (name, other)])
    bad = with_region(bundle, tmp_path / "bad.tar", sigs)
    err = assert_refused(tmp_path, bad, policy_for(tmp_path, [alice, bob]), SignatureError)
    assert any(p.startswith(name) and "does not match" in p for p in err.problems)


def test_rejects_a_signature_by_a_key_the_policy_does_not_know(tmp_path, alice, policy) -> None:
    mallory = make_key(tmp_path / "keys", "mallory")
    bundle = make_bundle(tmp_path, [alice, mallory]).path
    err = assert_refused(tmp_path, bundle, policy, TrustError)
    assert "1 of the required 1 trusted signature(s) are present" in err.message
    assert "is in neither the allowed signers nor the revoked keys" in err.problems[0]
    # A bundle co-signed for other sites too: accepted when asked, with a warning.
    report = verify_bundle(bundle, policy, now=DURING, allow_unknown_signers=True)
    assert [s["principals"] for s in report.signers] == [["alice"]]
    assert any(mallory.signer.public_key.fingerprint in w for w in report.problems)


def test_a_signature_by_a_revoked_key_is_reported_but_the_threshold_decides(
    tmp_path, alice, bob
) -> None:
    bundle = make_bundle(tmp_path, [alice, bob]).path
    policy = policy_for(tmp_path, [alice, bob], revoked=[bob])
    report = verify_bundle(bundle, policy, now=DURING)
    assert [s["principals"] for s in report.signers] == [["alice"]]
    assert any("revoked" in w for w in report.problems)


# --------------------------------------------------------------------------- untrusted strings


def _signed(tmp_path: Path, alice, **fields) -> tuple[Path, str]:
    """A bundle whose manifest (signed by the trusted alice) carries ``fields``."""
    files = {"README.md": b"hi\n", "models/m.bin": b"weights"}
    manifest = manifest_of(files, **fields)
    payload = [(p, files[p], 0o644) for p in sorted(files)]
    bad = tmp_path / "crafted.tar"
    raw = craft_bundle(bad, manifest, payload, [alice])
    return bad, hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "demo\x1b[2J"},
        {"version": "1.0\x9b31m"},  # C1 CSI
        {"builder": {"airlock": "0.1", "python": "3.11", "platform": "\x1b]0;owned\x07"}},
        {"components": {"models": {"type": "model", "properties": {"license": "mit\r"}}}},
        {"components": {"models": {"type": "model", "properties": {"k\ney": 1}}}},
        {"components": {"models": {"type": "model", "properties": {"x": "a" * 70000}}}},
    ],
    ids=["name-esc", "version-c1", "builder-osc", "property-cr", "key-newline", "long"],
)
def test_rejects_control_characters_anywhere_in_a_signed_manifest(tmp_path, alice, fields) -> None:
    bad, sha = _signed(tmp_path, alice, **fields)
    policy = policy_for(tmp_path, [alice])
    err = assert_refused(tmp_path, bad, policy, ArchiveFormatError, host_sha256=sha)
    with pytest.raises(ArchiveFormatError):
        inspect_bundle(bad)
    assert "\x1b" not in err.render() and "\x9b" not in err.render()


def test_rejects_a_lone_surrogate_escaped_in_the_manifest_json(tmp_path, alice) -> None:
    files = {"README.md": b"hi\n"}
    raw = canonical(manifest_of(files)).replace(b'"name":"demo"', b'"name":"demo\\ud800"')
    sig = signatures_by(raw, [alice])
    data = region_for(raw, sig)
    data += member_header("README.md", 3, 0o644, EPOCH) + b"hi\n" + bytes(509)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data + end_of_archive(len(data)))
    err = assert_refused(tmp_path, bad, policy_for(tmp_path, [alice]), ArchiveFormatError)
    assert "not valid UTF-8" in "\n".join(err.problems)


def test_inspect_says_nothing_is_verified_and_escapes_what_it_prints(
    tmp_path, alice, capsys
) -> None:
    from bundler.cli.main import main

    props = {"models": [{"name": "tiny", "license": "mit\u202e\u2066gpl"}]}
    bad, _ = _signed(tmp_path, alice, components={"models": {"type": "model", "properties": props}})
    assert main(["inspect", str(bad)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("UNVERIFIED: no trust policy was given, so nothing below")
    assert "license mit\\u202e\\u2066gpl" in out
    assert "\u202e" not in out and "\u2066" not in out


def test_error_messages_escape_member_names_from_the_archive(tmp_path, bundle, policy, capsys):
    from bundler.cli.main import main

    evil = "zzz/\x1b[2J\x1b]0;owned\x07"
    bad = rewrite(bundle, tmp_path / "bad.tar", lambda m: [*m, (file_info(evil, b"x"), b"x")])
    allowed = tmp_path / "allowed_signers"
    assert main(["verify", str(bad), "--allowed-signers", str(allowed)]) == 21
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "\\x1b[2J" in err


# --------------------------------------------------------------------------- usable values


@pytest.mark.parametrize(
    "fields",
    [
        {"created": "2026-02-30T00:00:00Z"},
        {"expires": "2026-13-01T00:00:00Z"},
        {"expires": "2026-06-30T23:59:60Z"},
        {"created": "1969-12-31T23:59:59Z"},
        {"expires": "2025-12-31T00:00:00Z"},  # before created
        {"sequence": 2**63},
        {"name": "../../etc"},
        {"version": "1.0/../../x"},
        {"builder": {"airlock": "0.1"}},
    ],
)
def test_rejects_manifest_values_the_code_could_not_use(tmp_path, alice, fields) -> None:
    bad, sha = _signed(tmp_path, alice, **fields)
    assert_refused(
        tmp_path, bad, policy_for(tmp_path, [alice]), ArchiveFormatError, host_sha256=sha
    )


@pytest.mark.parametrize(
    "path",
    [
        "models/" + "x" * 256,  # a segment over NAME_MAX
        "models/" + "/".join(["x" * 200] * 16),  # over 3072 bytes
        "models/" + "d/" * 128 + "f",  # deeper than 128
    ],
    ids=["segment", "length", "depth"],
)
def test_rejects_paths_no_host_could_install(tmp_path, alice, path) -> None:
    files = {path: b"data"}
    manifest = manifest_of(files)
    bad = tmp_path / "crafted.tar"
    raw = craft_bundle(bad, manifest, [(path, b"data", 0o644)], [alice])
    sha = hashlib.sha256(raw).hexdigest()
    assert_refused(
        tmp_path, bad, policy_for(tmp_path, [alice]), ArchiveFormatError, host_sha256=sha
    )


def test_rejects_sizes_beyond_int64(tmp_path, alice) -> None:
    manifest = manifest_of({"models/m.bin": b""})
    manifest["files"][0]["size"] = 2**63
    bad = tmp_path / "crafted.tar"
    raw = craft_bundle(bad, manifest, [("models/m.bin", b"", 0o644)], [alice])
    sha = hashlib.sha256(raw).hexdigest()
    assert_refused(
        tmp_path, bad, policy_for(tmp_path, [alice]), ArchiveFormatError, host_sha256=sha
    )


def test_rejects_json_nested_past_any_use(tmp_path, alice) -> None:
    raw = canonical(manifest_of({"README.md": b"hi\n"}))
    deep = b'{"x":' * 100_000 + b"1" + b"}" * 100_000
    raw = raw.replace(b'"components":{}', b'"components":' + deep)
    data = region_for(raw, signatures_by(raw, [alice]))
    data += member_header("README.md", 3, 0o644, EPOCH) + b"hi\n" + bytes(509)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data + end_of_archive(len(data)))
    err = assert_refused(tmp_path, bad, policy_for(tmp_path, [alice]), ArchiveFormatError)
    assert "nested too deeply" in err.message


def _deep_and_long(tmp_path: Path, alice) -> tuple[Path, dict[str, bytes], str]:
    deep = "models/" + "/".join(f"d{i}" for i in range(126)) + "/deep.bin"  # 128 segments
    long = "models/" + "/".join(["\u00e9" * 127] * 12) + "/fffff"  # 3072 bytes, 254-byte segments
    files = {deep: b"deep", long: b"long", "models/z.bin": b"last"}
    bad = tmp_path / "paths.tar"
    raw = craft_bundle(
        bad,
        manifest_of(files),
        [(p, files[p], 0o644) for p in sorted(files, key=str.encode)],
        [alice],
    )
    return bad, files, hashlib.sha256(raw).hexdigest()


def test_the_deepest_and_longest_signed_paths_install_and_every_failure_cleans_up(
    tmp_path, alice
) -> None:
    bundle, files, sha = _deep_and_long(tmp_path, alice)
    policy = policy_for(tmp_path, [alice])
    verify_bundle(bundle, policy, now=DURING)
    target = tmp_path / "target"
    target.mkdir()
    result = unpack(bundle, target / "r", manifest_sha256=sha)
    assert result.files == 3
    for path, data in files.items():
        assert (target / "r" / path).read_bytes() == data
    # A destination too long for the longest path: refused before anything is written.
    long_parent = target / ("p" * 200) / ("q" * 200) / ("s" * 200) / ("t" * 200) / ("u" * 200)
    long_parent.mkdir(parents=True)
    with pytest.raises(InstallError, match="does not fit under"):
        unpack(bundle, long_parent / "r", manifest_sha256=sha)
    assert list(long_parent.iterdir()) == []
    # The last member damaged: every deep directory made so far is removed again.
    data = bytearray(bundle.read_bytes())
    at = bytes(data).rindex(b"last")
    data[at] ^= 1
    broken = tmp_path / "broken.tar"
    broken.write_bytes(bytes(data))
    (tmp_path / "t2").mkdir()
    with pytest.raises(IntegrityError):
        unpack(broken, tmp_path / "t2" / "r", manifest_sha256=sha)
    with pytest.raises(IntegrityError):
        unpack_bundle(broken, tmp_path / "t2" / "r", policy, now=DURING)
    assert list((tmp_path / "t2").iterdir()) == []


def test_a_destination_name_too_long_for_its_staging_directory_is_an_install_error(
    tmp_path, bundle, policy
) -> None:
    from runtime.unpack import main as unpack_main

    dest = tmp_path / ("r" * 250)
    with pytest.raises(InstallError, match="cannot create a staging directory"):
        unpack_bundle(bundle, dest, policy, now=DURING)
    assert unpack_main([str(bundle), str(dest), "--manifest-sha256", manifest_sha(bundle)]) == 60
    assert not dest.exists()


def test_the_host_compares_the_manifest_digest_before_parsing(tmp_path, alice) -> None:
    # A manifest that does not parse, but is not the one the controller verified: the
    # digest mismatch is what the host reports (IntegrityError), never a parse error.
    bad, sha = _signed(tmp_path, alice, created="2026-02-30T00:00:00Z")
    (tmp_path / "t").mkdir()
    with pytest.raises(IntegrityError, match="expected 0000"):
        unpack(bad, tmp_path / "t" / "r", manifest_sha256="0" * 64)
    with pytest.raises(ArchiveFormatError):
        unpack(bad, tmp_path / "t" / "r", manifest_sha256=sha)
    assert list((tmp_path / "t").iterdir()) == []


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
