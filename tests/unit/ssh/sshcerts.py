"""OpenSSH certificates made in-process for tests (the wire format of PROTOCOL.certkeys)."""

from __future__ import annotations

import base64
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.ssh.wire import string

CERT_TYPE = b"ssh-ed25519-cert-v01@openssh.com"
FOREVER = 2**64 - 1


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_public_of(signer: object) -> bytes:
    """The raw 32 bytes of an airlock signer's Ed25519 public key."""
    return signer.public_key.ed25519_bytes  # type: ignore[attr-defined]


def ed25519_blob(raw: bytes, type_name: bytes = b"ssh-ed25519") -> bytes:
    return string(type_name) + string(raw)


def certificate(
    subject: bytes,
    ca: Ed25519PrivateKey,
    *,
    principals: tuple[bytes, ...] = (b"alice",),
    cert_type: int = 1,
    valid_after: int = 0,
    valid_before: int = FOREVER,
    bad_signature: bool = False,
) -> bytes:
    """The blob of an Ed25519 certificate of the raw key ``subject``, signed by ``ca``."""
    body = (
        string(CERT_TYPE)
        + string(b"\x01" * 32)  # nonce
        + string(subject)
        + struct.pack(">QI", 7, cert_type)
        + string(b"test-id")
        + string(b"".join(string(p) for p in principals))
        + struct.pack(">QQ", valid_after, valid_before)
        + string(b"")  # critical options
        + string(b"")  # extensions
        + string(b"")  # reserved
        + string(ed25519_blob(raw_public(ca)))
    )
    signed = body + (b"x" if bad_signature else b"")
    return body + string(string(b"ssh-ed25519") + string(ca.sign(signed)))


def line(blob: bytes, type_name: bytes = CERT_TYPE) -> str:
    return f"{type_name.decode()} {base64.b64encode(blob).decode()}"
