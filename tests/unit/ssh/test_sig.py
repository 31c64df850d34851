"""SSHSIG: signing, armor, parsing, and the ways a signature must fail to verify."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.errors import SignatureError
from bundler.ssh import sig as sshsig
from bundler.ssh.keys import Ed25519Signer, PublicKey
from bundler.ssh.sig import (
    ARCHIVE_NAMESPACE,
    MANIFEST_NAMESPACE,
    message_digest,
    parse,
    sign,
    sign_digest,
    signature_id,
    verify,
    verify_digest,
)
from bundler.ssh.wire import string, uint32

MESSAGE = b'{"format":"airlock-bundle"}'


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer(Ed25519PrivateKey.generate(), comment="test")


def _blob(armored: bytes) -> bytes:
    return base64.b64decode("".join(armored.decode().splitlines()[1:-1]))


def _rearmor(blob: bytes) -> bytes:
    return sshsig._armor(blob)


def test_sign_then_verify_returns_the_signing_key(signer) -> None:
    armored = sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)
    key = verify(MESSAGE, armored, namespace=MANIFEST_NAMESPACE)
    assert key.blob == signer.public_key.blob
    parsed = parse(armored)
    assert parsed.namespace == MANIFEST_NAMESPACE
    assert parsed.hash_algorithm == "sha512"


def test_armor_is_what_ssh_keygen_writes(signer) -> None:
    armored = sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)
    lines = armored.decode().split("\n")
    assert lines[0] == "-----BEGIN SSH SIGNATURE-----"
    assert lines[-2:] == ["-----END SSH SIGNATURE-----", ""]
    assert all(len(line) == 70 for line in lines[1:-3])
    assert _blob(armored).startswith(b"SSHSIG" + uint32(1))


def test_signing_is_deterministic(signer) -> None:
    assert sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE) == sign(
        MESSAGE, signer, namespace=MANIFEST_NAMESPACE
    )


def test_stream_and_digest_paths_give_the_same_signature(signer) -> None:
    whole = sign(MESSAGE, signer, namespace=ARCHIVE_NAMESPACE)
    streamed = sign(io.BytesIO(MESSAGE), signer, namespace=ARCHIVE_NAMESPACE)
    digested = sign_digest(hashlib.sha512(MESSAGE).digest(), signer, namespace=ARCHIVE_NAMESPACE)
    assert whole == streamed == digested
    assert verify(io.BytesIO(MESSAGE), whole, namespace=ARCHIVE_NAMESPACE)
    assert verify_digest(message_digest(MESSAGE), whole, namespace=ARCHIVE_NAMESPACE)


def test_stream_is_hashed_from_many_chunks(signer) -> None:
    big = bytes(range(256)) * 20000  # > 1 MiB: several read() chunks
    armored = sign(io.BytesIO(big), signer, namespace=ARCHIVE_NAMESPACE)
    assert verify(big, armored, namespace=ARCHIVE_NAMESPACE)


def test_verifies_sha256_signatures(signer) -> None:
    armored = sign_digest(
        hashlib.sha256(MESSAGE).digest(),
        signer,
        namespace=MANIFEST_NAMESPACE,
        hash_algorithm="sha256",
    )
    assert parse(armored).hash_algorithm == "sha256"
    assert verify(MESSAGE, armored, namespace=MANIFEST_NAMESPACE).blob == signer.public_key.blob


def test_rejects_tampered_message(signer) -> None:
    armored = sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)
    with pytest.raises(SignatureError, match="does not match the signed bytes"):
        verify(MESSAGE + b" ", armored, namespace=MANIFEST_NAMESPACE)


def test_rejects_wrong_namespace(signer) -> None:
    armored = sign(MESSAGE, signer, namespace=ARCHIVE_NAMESPACE)
    with pytest.raises(SignatureError, match="namespace 'airlock-archive-v1'"):
        verify(MESSAGE, armored, namespace=MANIFEST_NAMESPACE)


def test_rejects_namespace_swapped_inside_the_blob(signer) -> None:
    """Rewriting the outer namespace field does not help: it is inside the signed data."""
    armored = sign(MESSAGE, signer, namespace=ARCHIVE_NAMESPACE)
    blob = _blob(armored).replace(
        string(ARCHIVE_NAMESPACE.encode()), string(MANIFEST_NAMESPACE.encode())
    )
    with pytest.raises(SignatureError, match="does not match"):
        verify(MESSAGE, _rearmor(blob), namespace=MANIFEST_NAMESPACE)


def test_rejects_signature_by_substituted_key(signer) -> None:
    armored = sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)
    other = Ed25519Signer(Ed25519PrivateKey.generate())
    blob = _blob(armored).replace(signer.public_key.blob, other.public_key.blob)
    with pytest.raises(SignatureError, match="does not match"):
        verify(MESSAGE, _rearmor(blob), namespace=MANIFEST_NAMESPACE)


@pytest.mark.parametrize(
    "armored, needle",
    [
        (b"", "does not start with"),
        (b"hello world\n", "does not start with"),
        (b"-----BEGIN SSH SIGNATURE-----\nAAAA\n", "has no -----END SSH SIGNATURE----- line"),
        (b"-----BEGIN SSH SIGNATURE-----\n!!!!\n-----END SSH SIGNATURE-----\n", "base64"),
        (b"\xff\xfe", "does not start with"),
        (
            b"-----BEGIN SSH SIGNATURE-----\n"
            + base64.b64encode(b"NOTSIG" + uint32(1))
            + b"\n-----END SSH SIGNATURE-----\n",
            "preamble",
        ),
        (
            b"-----BEGIN SSH SIGNATURE-----\n"
            + base64.b64encode(b"SSHSIG" + uint32(2))
            + b"\n-----END SSH SIGNATURE-----\n",
            "version 2",
        ),
        (
            b"-----BEGIN SSH SIGNATURE-----\n"
            + base64.b64encode(b"SSHSIG" + uint32(1) + uint32(99))
            + b"\n-----END SSH SIGNATURE-----\n",
            "truncated",
        ),
    ],
)
def test_rejects_malformed_armor(armored: bytes, needle: str) -> None:
    with pytest.raises(SignatureError) as exc:
        parse(armored)
    assert needle in exc.value.message


def _lines(armored: bytes) -> list[bytes]:
    return armored.split(b"\n")


def test_armor_is_read_as_openssh_9_2_reads_it(signer) -> None:
    """sshsig_dearmor: exact BEGIN line, b64_pton body, anything after the END line ignored."""
    good = sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)
    lines = _lines(good)
    with_vt = b"\n".join([lines[0], lines[1][:9] + b"\x0b" + lines[1][9:], *lines[2:]])
    for accepted in (
        good + b"trailing junk \xff",
        with_vt,
        good.replace(b"\n-----END", b" \n-----END"),
    ):
        assert (
            verify(MESSAGE, accepted, namespace=MANIFEST_NAMESPACE).blob == signer.public_key.blob
        )
    file_separator = b"\n".join([lines[0], lines[1][:9] + b"\x1c" + lines[1][9:], *lines[2:]])
    for refused, needle in (
        (b" " + good, "does not start with"),
        (b"\n" + good, "does not start with"),
        (good.replace(b"\n", b"\r\n"), "does not start with"),
        (file_separator, "is not a base64 character"),
        (good.replace(lines[1], lines[1][:5] + b"\0" + lines[1][5:]), "NUL"),
    ):
        with pytest.raises(SignatureError, match=needle):
            parse(refused)


def test_rejects_non_canonical_base64(signer) -> None:
    """b64_pton refuses a last character whose unused bits are set (same blob otherwise)."""
    # a namespace that leaves the blob's length off a multiple of 3, so the base64 is padded
    namespace = next(
        n for n in ("n", "ns", "nsx") if len(_blob(sign(MESSAGE, signer, namespace=n))) % 3
    )
    blob = _blob(sign(MESSAGE, signer, namespace=namespace))
    text = base64.b64encode(blob)
    pad = len(text) - len(text.rstrip(b"="))
    last = text[-pad - 1 : -pad]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    bumped = alphabet[alphabet.index(last) + 1 : alphabet.index(last) + 2]
    forged = text[: -pad - 1] + bumped + text[-pad:]
    assert base64.b64decode(forged) == blob  # Python's decoder would take it
    armored = b"-----BEGIN SSH SIGNATURE-----\n" + forged + b"\n-----END SSH SIGNATURE-----\n"
    with pytest.raises(SignatureError, match="unused bits"):
        parse(armored)


def test_rejects_trailing_bytes_in_the_blob(signer) -> None:
    blob = _blob(sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)) + b"\x00"
    with pytest.raises(SignatureError, match="trailing"):
        parse(_rearmor(blob))


def test_rejects_unsupported_hash_algorithm(signer) -> None:
    blob = _blob(sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)).replace(
        string(b"sha512"), string(b"sha1xx")
    )
    with pytest.raises(SignatureError, match="unsupported SSHSIG hash"):
        verify(MESSAGE, _rearmor(blob), namespace=MANIFEST_NAMESPACE)


def test_rejects_non_ed25519_signature_key() -> None:
    from cryptography.hazmat.primitives import serialization

    rsa_line = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    key = PublicKey.parse(rsa_line.decode())
    blob = (
        b"SSHSIG"
        + uint32(1)
        + string(key.blob)
        + string(MANIFEST_NAMESPACE.encode())
        + string(b"")
        + string(b"sha512")
        + string(string(b"rsa-sha2-512") + string(b"\x00" * 256))
    )
    with pytest.raises(SignatureError, match="Ed25519 signatures only"):
        verify(MESSAGE, _rearmor(blob), namespace=MANIFEST_NAMESPACE)


def test_rejects_digest_of_the_wrong_algorithm(signer) -> None:
    armored = sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)
    with pytest.raises(SignatureError, match="hash algorithm"):
        verify_digest(hashlib.sha256(MESSAGE).digest(), armored, namespace=MANIFEST_NAMESPACE)
    with pytest.raises(SignatureError, match="64 bytes, got 128"):
        sign_digest(hashlib.sha512(MESSAGE).hexdigest().encode(), signer, namespace="x")


def test_rejects_empty_namespace(signer) -> None:
    with pytest.raises(SignatureError, match="namespace must not be empty"):
        sign(MESSAGE, signer, namespace="")


def test_signature_id_is_file_name_safe() -> None:
    # A key whose fingerprint has both '+' and '/', found by construction below.
    for i in range(1000):
        key = PublicKey.from_ed25519(hashlib.sha256(str(i).encode()).digest())
        fp = key.fingerprint
        if "+" in fp and "/" in fp:
            break
    sid = signature_id(key)
    assert sid == fp[len("SHA256:") :].replace("/", "_").replace("+", "-")
    assert "/" not in sid and "+" not in sid and ":" not in sid and "=" not in sid
