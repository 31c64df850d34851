"""Key lines read as sshkey_read reads them: base64, blob checks, types, certificates."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.ssh.keytext import KeyTextError, KeyTooShort, b64_pton, read_key
from bundler.ssh.wire import string
from tests.unit.ssh.sshcerts import certificate, ed25519_blob, line, raw_public


@pytest.mark.parametrize(
    "text, value",
    [
        (b"", b""),
        (b"QUJD", b"ABC"),
        (b"QUI=", b"AB"),
        (b"QQ==", b"A"),
        (b" Q\tU\nJ\rD\x0b\x0c", b"ABC"),  # C isspace() anywhere is skipped
        (b"QQ= =  ", b"A"),  # spaces between and after the padding
        (b"QUJD\0garbage", b"ABC"),  # a C string ends at NUL
    ],
)
def test_b64_pton_accepts_what_openssh_accepts(text: bytes, value: bytes) -> None:
    assert b64_pton(text) == value


@pytest.mark.parametrize(
    "text, needle",
    [
        (b"QUJ", "middle of a group"),
        (b"Q===", "wrong place"),
        (b"QQ=", "one '='"),
        (b"QQ==x", "after the base64 padding"),
        (b"QR==", "unused bits"),  # decodes to b"A" in lenient decoders
        (b"QU\x1cJD", "not a base64 character"),  # Python's str.split() would drop it
        (b"QU\xa0JD", "not a base64 character"),
    ],
)
def test_b64_pton_refuses_what_openssh_refuses(text: bytes, needle: str) -> None:
    with pytest.raises(KeyTextError, match=needle):
        b64_pton(text)


def _ed25519_line(blob: bytes, type_name: bytes = b"ssh-ed25519") -> bytes:
    return type_name + b" " + base64.b64encode(blob)


def test_reads_a_key_and_leaves_the_comment() -> None:
    raw = raw_public(Ed25519PrivateKey.generate())
    key, comment = read_key(_ed25519_line(ed25519_blob(raw)) + " \t alice@host \u2028 x".encode())
    assert key.public == ed25519_blob(raw) and key.key_type == "ssh-ed25519"
    assert comment.startswith(b"alice@host")


def test_a_short_type_name_inside_the_blob_is_the_same_key() -> None:
    """sshkey_type_from_name takes ED25519 (any case) inside a blob: the same key to OpenSSH."""
    raw = raw_public(Ed25519PrivateKey.generate())
    key, _ = read_key(_ed25519_line(ed25519_blob(raw, b"eD25519")) + b"\n")
    assert key.public == ed25519_blob(raw)


@pytest.mark.parametrize(
    "text, needle",
    [
        (b"ssh-ed25519", "no key type followed by a space"),
        (b"ssh-ed25519   ", "no key after"),
        (b"ssh-ed25519\r AAAA", "unknown key type"),
        (b"ssh-dss AAAA", "unknown key type"),
        (b"ssh-ed25519 " + base64.b64encode(ed25519_blob(b"\x01" * 31)), "32 bytes"),
        (b"ssh-ed25519 " + base64.b64encode(ed25519_blob(b"\x01" * 32) + b"x"), "trailing"),
        (b"ssh-rsa " + base64.b64encode(ed25519_blob(b"\x01" * 32)), "another type"),
    ],
)
def test_refuses_key_lines_openssh_refuses(text: bytes, needle: str) -> None:
    with pytest.raises(KeyTextError, match=needle):
        read_key(text)


def _openssh_public(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


def test_reads_rsa_and_ecdsa_keys_and_skips_short_rsa() -> None:
    big = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    key, _ = read_key(_openssh_public(big))
    assert key.key_type == "ssh-rsa"
    alias, _ = read_key(b"rsa-sha2-512" + _openssh_public(big)[len(b"ssh-rsa") :])
    assert alias.public == key.public  # OpenSSH 9.2 reads rsa-sha2-* lines as RSA keys
    point = ec.generate_private_key(ec.SECP384R1()).public_key()
    assert read_key(_openssh_public(point))[0].key_type == "ecdsa-sha2-nistp384"
    n = (1 << 767) | 1  # a 768-bit modulus: OpenSSH skips such a line in a revoked keys file
    small = string(b"ssh-rsa") + string(b"\x01\x00\x01") + string(n.to_bytes(97, "big"))
    with pytest.raises(KeyTooShort):
        read_key(b"ssh-rsa " + base64.b64encode(small))


def test_a_certificate_is_read_with_its_subject_key_and_ca_checked() -> None:
    subject, ca = raw_public(Ed25519PrivateKey.generate()), Ed25519PrivateKey.generate()
    key, _ = read_key(line(certificate(subject, ca, principals=(b"a", b"b"))).encode())
    assert key.public == ed25519_blob(subject)
    assert key.certificate is not None and key.certificate.principals == (b"a", b"b")
    assert key.certificate.ca_public == ed25519_blob(raw_public(ca))
    with pytest.raises(KeyTextError, match="CA signature does not verify"):
        read_key(line(certificate(subject, ca, bad_signature=True)).encode())
    with pytest.raises(KeyTextError, match="unknown certificate type"):
        read_key(line(certificate(subject, ca, cert_type=3)).encode())
    with pytest.raises(KeyTextError, match="another type"):  # a certificate under a plain name
        read_key(line(certificate(subject, ca), b"ssh-ed25519").encode())
