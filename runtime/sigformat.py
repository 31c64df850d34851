"""The shape of a manifest signature member: exactly the SSHSIG armor airlock writes.

docs/FORMAT.md, "Signature format" and "Metadata region": an ``airlock/signatures/<id>.sig``
member is one armored SSHSIG (PROTOCOL.sshsig v1) by an Ed25519 key, namespace
``airlock-manifest-v1``, hash sha256 or sha512, reserved field empty, base64 wrapped at 70
columns, and ``<id>`` is that key's fingerprint id. Checking the shape needs no
cryptography, so hosts (standard library only) hold the metadata region to it too: no
member can carry bytes beyond a signature's few fixed fields. Whether the signature is
valid and its key trusted is the connected side's question (``bundler.ssh.trust``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from typing import Optional, Tuple

SIGNATURE_DIR = "airlock/signatures/"
NAMESPACE = "airlock-manifest-v1"
ARMOR_BEGIN = b"-----BEGIN SSH SIGNATURE-----"
ARMOR_END = b"-----END SSH SIGNATURE-----"
HASH_ALGORITHMS = (b"sha256", b"sha512")
ED25519 = b"ssh-ed25519"
_WRAP = 70


def key_id(key_blob: bytes) -> str:
    """The member-name id of an SSH public key blob: its SHA256 fingerprint's base64 without
    padding, ``/`` as ``_`` and ``+`` as ``-`` (``bundler.ssh.sig.signature_id``)."""
    b64 = base64.b64encode(hashlib.sha256(key_blob).digest()).decode("ascii").rstrip("=")
    return b64.replace("/", "_").replace("+", "-")


def _string(blob: bytes, pos: int) -> Tuple[bytes, int]:
    if pos + 4 > len(blob):
        raise ValueError("the SSHSIG blob ends inside a length")
    (length,) = struct.unpack(">I", blob[pos : pos + 4])
    end = pos + 4 + length
    if end > len(blob):
        raise ValueError("the SSHSIG blob ends inside a string")
    return blob[pos + 4 : end], end


def _fields(blob: bytes, count: int, what: str) -> Tuple[bytes, ...]:
    out = []
    pos = 0
    for _ in range(count):
        value, pos = _string(blob, pos)
        out.append(value)
    if pos != len(blob):
        raise ValueError(f"bytes after the end of {what}")
    return tuple(out)


def _blob(data: bytes) -> bytes:
    """The SSHSIG blob inside canonical armor; raises ValueError when the armor is not."""
    if not data.endswith(b"\n"):
        raise ValueError("the armor does not end with a newline")
    lines = data[:-1].split(b"\n")
    if len(lines) < 3 or lines[0] != ARMOR_BEGIN or lines[-1] != ARMOR_END:
        raise ValueError("not an SSH signature armor (BEGIN/END lines)")
    body = lines[1:-1]
    if any(len(line) != _WRAP for line in body[:-1]) or not 0 < len(body[-1]) <= _WRAP:
        raise ValueError(f"the armor's base64 is not wrapped at {_WRAP} columns")
    text = b"".join(body)
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"the armor's base64 is invalid: {e}") from None
    if base64.b64encode(blob) != text:
        raise ValueError("the armor's base64 is not canonical")
    return blob


def signature_problem(name: str, data: bytes) -> Optional[str]:
    """Why member ``name`` with bytes ``data`` is not a signature member airlock writes, or None."""
    try:
        blob = _blob(data)
        if blob[:6] != b"SSHSIG" or blob[6:10] != struct.pack(">I", 1):
            raise ValueError("not an SSHSIG version 1 blob")
        key, namespace, reserved, hash_algorithm, signature = _fields(
            blob[10:], 5, "the SSHSIG blob"
        )
        key_type, raw_key = _fields(key, 2, "the public key")
        if key_type != ED25519 or len(raw_key) != 32:
            raise ValueError("the key is not an Ed25519 key (airlock accepts Ed25519 only)")
        if namespace != NAMESPACE.encode():
            raise ValueError(
                f"the signature is for namespace {namespace[:64]!r}, expected {NAMESPACE!r}"
            )
        if reserved:
            raise ValueError("the SSHSIG reserved field is not empty")
        if hash_algorithm not in HASH_ALGORITHMS:
            raise ValueError(f"hash algorithm {hash_algorithm[:32]!r} is not sha256 or sha512")
        sig_type, raw_sig = _fields(signature, 2, "the signature")
        if sig_type != ED25519 or len(raw_sig) != 64:
            raise ValueError("the signature is not a 64-byte Ed25519 signature")
    except ValueError as e:
        return str(e)
    expected = f"{SIGNATURE_DIR}{key_id(key)}.sig"
    if name != expected:
        return f"the member name does not match the signing key (it would be {expected})"
    return None
