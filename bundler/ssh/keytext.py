"""OpenSSH public keys as text, read as ``sshkey_read`` does: type, base64, blob, certificate.

The allowed signers and revoked keys files decide trust, so a key line means here what it
means to stock ``ssh-keygen`` (OpenSSH 9.2, sshkey.c ``sshkey_read``, ``peek_type_nid``,
``sshkey_from_blob_internal``, ``cert_parse``; base64 by ``b64_pton``) or it is refused:
never a key OpenSSH does not see, never another key. Where airlock cannot check what
OpenSSH checks (DSA keys, security-key CAs) it refuses the line, which fails closed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bundler.ssh.wire import Reader, WireFormatError, string

_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
C_SPACE = b" \t\n\v\f\r"  # isspace() in the C locale
_BLANK = b" \t"  # what sshkey_read splits fields on
_RSA_MIN_BITS = 1024  # SSH_RSA_MINIMUM_MODULUS_SIZE
_MAX_BIGNUM = 16384 // 8  # SSHBUF_MAX_BIGNUM
_MAX_CERT_PRINCIPALS = 256  # SSHKEY_CERT_MAX_PRINCIPALS
_CURVES = {
    b"nistp256": (ec.SECP256R1(), hashes.SHA256()),
    b"nistp384": (ec.SECP384R1(), hashes.SHA384()),
    b"nistp521": (ec.SECP521R1(), hashes.SHA512()),
}
_CURVE_ORDERS = {
    b"nistp256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    b"nistp384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
        "581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    b"nistp521": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA"
        "51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}


def _plain_names() -> dict[bytes, tuple[str, Optional[bytes]]]:
    names: dict[bytes, tuple[str, Optional[bytes]]] = {
        b"ssh-ed25519": ("ed25519", None),
        b"sk-ssh-ed25519@openssh.com": ("sk-ed25519", None),
        b"ssh-rsa": ("rsa", None),
        b"rsa-sha2-256": ("rsa", None),  # signature names that 9.2 also reads as RSA keys
        b"rsa-sha2-512": ("rsa", None),
        b"sk-ecdsa-sha2-nistp256@openssh.com": ("sk-ecdsa", b"nistp256"),
    }
    for curve in _CURVES:
        names[b"ecdsa-sha2-" + curve] = ("ecdsa", curve)
    return names


# Key type name -> (kind, curve). Certificates add "-cert-v01@openssh.com" to the base name.
_PLAIN = _plain_names()
_CERTS = {
    (n[: -len(b"@openssh.com")] if n.endswith(b"@openssh.com") else n) + b"-cert-v01@openssh.com": v
    for n, v in _PLAIN.items()
}
# The canonical name of each kind, as ssh-keygen writes it (the public part of a key).
_CANONICAL = {"ed25519": b"ssh-ed25519", "sk-ed25519": b"sk-ssh-ed25519@openssh.com"}
# sshkey_type_from_name also takes a plain type's short name, in any case, inside a blob.
_SHORT = {
    b"ed25519": ("ed25519", None),
    b"ed25519-sk": ("sk-ed25519", None),
    b"rsa": ("rsa", None),
    b"ecdsa": ("ecdsa", None),
    b"ecdsa-sk": ("sk-ecdsa", None),
}


class KeyTextError(ValueError):
    """The text is not a key ``sshkey_read`` accepts; the message says why."""


class KeyTooShort(KeyTextError):
    """An RSA key below 1024 bits (SSH_ERR_KEY_LENGTH: a revoked keys file skips the line)."""


@dataclass(frozen=True)
class Certificate:
    """The fields of an OpenSSH certificate that a trust decision can depend on."""

    cert_type: int
    key_id: bytes
    principals: tuple[bytes, ...]
    valid_after: int
    valid_before: int
    ca_public: bytes


@dataclass(frozen=True)
class KeyText:
    """A key read from a line: its type name, its blob, and its public part as a plain key."""

    key_type: str
    blob: bytes
    public: bytes  # the plain key's canonical blob (a certificate's subject key)
    certificate: Optional[Certificate] = None


def is_key_type(name: bytes) -> bool:
    """Whether ``name`` starts a key in a line (``peek_type_nid``): exact names only."""
    return name in _PLAIN or name in _CERTS


def b64_pton(src: bytes) -> bytes:
    """Base64 as OpenSSH's (ISC) ``b64_pton`` decodes it; raises KeyTextError.

    Whitespace is skipped anywhere; padding must be complete, nothing but whitespace may
    follow it, and the unused bits of the last character must be zero.
    """
    src = src.split(b"\0", 1)[0]
    out = bytearray()
    state = 0
    i = 0
    pad = False
    while i < len(src):
        ch = src[i]
        i += 1
        if ch in C_SPACE:
            continue
        if ch == 0x3D:  # '='
            pad = True
            break
        pos = _BASE64.find(bytes([ch]))
        if pos < 0:
            raise KeyTextError(f"{chr(ch)!r} is not a base64 character")
        if state == 0:
            out.append((pos << 2) & 0xFF)
        elif state == 1:
            out[-1] |= pos >> 4
            out.append((pos & 0x0F) << 4)
        elif state == 2:
            out[-1] |= pos >> 2
            out.append((pos & 0x03) << 6)
        else:
            out[-1] |= pos
        state = (state + 1) % 4
    if not pad:
        if state != 0:
            raise KeyTextError("the base64 ends in the middle of a group (missing '=' padding)")
        return bytes(out)
    if state in (0, 1):
        raise KeyTextError("'=' padding in the wrong place")
    rest = src[i:]
    if state == 2:
        rest = rest.lstrip(C_SPACE)
        if not rest.startswith(b"="):
            raise KeyTextError("one '=' where the base64 needs two")
        rest = rest[1:]
    if rest.strip(C_SPACE):
        raise KeyTextError("text after the base64 padding")
    if out[-1] != 0:
        raise KeyTextError("the base64's unused bits are not zero (non-canonical encoding)")
    return bytes(out[:-1])


def _cstring(reader: Reader, what: str) -> bytes:
    value = reader.string()
    if b"\0" in value:
        raise WireFormatError(f"a NUL byte inside the {what}")
    return value


def _bignum(reader: Reader) -> int:
    """``sshbuf_get_bignum2``: a non-negative mpint of at most 16384 bits."""
    raw = reader.string()
    if raw and raw[0] & 0x80:
        raise WireFormatError("a negative number")
    if len(raw) > _MAX_BIGNUM + 1 or (len(raw) == _MAX_BIGNUM + 1 and raw[0] != 0):
        raise WireFormatError("a number above 16384 bits")
    return int.from_bytes(raw, "big")


def _mpint(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b""
    return string(raw)


def _type_from_blob_name(name: bytes) -> tuple[str, Optional[bytes], bool]:
    if name in _PLAIN:
        return (*_PLAIN[name], False)
    if name in _CERTS:
        return (*_CERTS[name], True)
    short = _SHORT.get(name.lower())
    if short is not None:
        return (*short, False)
    raise WireFormatError(f"unknown key type {name!r}")


def _ec_point(reader: Reader, curve: bytes) -> tuple[bytes, ec.EllipticCurvePublicKey]:
    """``sshbuf_get_eckey`` and ``sshkey_ec_validate_public``: an uncompressed point in range."""
    point = reader.string()
    if not point or len(point) > 133 or point[0] != 4:
        raise WireFormatError("not an uncompressed EC point")
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[curve][0], point)
    except ValueError as e:
        raise WireFormatError(f"not a point on {curve.decode()}: {e}") from e
    numbers = key.public_numbers()
    order = _CURVE_ORDERS[curve]
    half = order.bit_length() // 2
    if (
        numbers.x.bit_length() <= half
        or numbers.y.bit_length() <= half
        or numbers.x >= order - 1
        or numbers.y >= order - 1
    ):
        raise WireFormatError("an EC point OpenSSH refuses (coordinate out of range)")
    return point, key


def _public(reader: Reader, kind: str, curve: Optional[bytes], name: bytes) -> tuple[bytes, object]:
    """The type-specific public fields: the canonical plain blob and a verifier object."""
    if kind in ("ed25519", "sk-ed25519"):
        pk = reader.string()
        if len(pk) != 32:
            raise WireFormatError("an Ed25519 key is 32 bytes")
        blob = string(_CANONICAL[kind]) + string(pk)
        if kind == "sk-ed25519":
            blob += string(_cstring(reader, "security key application"))
            return blob, None
        return blob, Ed25519PublicKey.from_public_bytes(pk)
    if kind == "rsa":
        e, n = _bignum(reader), _bignum(reader)
        if n.bit_length() < _RSA_MIN_BITS:
            raise KeyTooShort(f"a {n.bit_length()}-bit RSA key (OpenSSH needs 1024 or more)")
        try:
            verifier = rsa.RSAPublicNumbers(e, n).public_key()
        except (ValueError, UnsupportedAlgorithm):
            verifier = None  # still a key OpenSSH reads; it can sign nothing we check
        return string(b"ssh-rsa") + _mpint(e) + _mpint(n), verifier
    if curve is None or _cstring(reader, "curve name") != curve:
        raise WireFormatError(f"the curve does not match {name.decode(errors='replace')}")
    point, key = _ec_point(reader, curve)
    if kind == "sk-ecdsa":
        app = _cstring(reader, "security key application")
        return string(b"sk-ecdsa-sha2-nistp256@openssh.com") + string(curve) + string(
            point
        ) + string(app), None
    return string(b"ecdsa-sha2-" + curve) + string(curve) + string(point), key


def _check_ca_signature(
    ca_kind: str, verifier: object, curve: Optional[bytes], sig: bytes, signed: bytes
) -> None:
    """``sshkey_verify`` of the CA's signature over the certificate body."""
    reader = Reader(sig)
    alg = _cstring(reader, "signature algorithm")
    raw = reader.string()
    reader.expect_end("the certificate signature")
    try:
        if (
            ca_kind == "ed25519"
            and alg == b"ssh-ed25519"
            and isinstance(verifier, Ed25519PublicKey)
        ):
            if len(raw) != 64:
                raise WireFormatError("an Ed25519 signature is 64 bytes")
            verifier.verify(raw, signed)
            return
        if ca_kind == "rsa" and isinstance(verifier, rsa.RSAPublicKey):
            digest = {
                b"ssh-rsa": hashes.SHA1(),  # noqa: S303 - only to read what OpenSSH reads
                b"rsa-sha2-256": hashes.SHA256(),
                b"rsa-sha2-512": hashes.SHA512(),
            }.get(alg)
            size = (verifier.key_size + 7) // 8
            if digest is None or len(raw) > size:
                raise WireFormatError("not an RSA signature OpenSSH accepts")
            verifier.verify(raw.rjust(size, b"\0"), signed, padding.PKCS1v15(), digest)
            return
        if (
            ca_kind == "ecdsa"
            and curve is not None
            and isinstance(verifier, ec.EllipticCurvePublicKey)
        ):
            if alg != b"ecdsa-sha2-" + curve:
                raise WireFormatError("the ECDSA signature names another curve")
            inner = Reader(raw)
            r, s = _bignum(inner), _bignum(inner)
            inner.expect_end("the ECDSA signature")
            verifier.verify(encode_dss_signature(r, s), signed, ec.ECDSA(_CURVES[curve][1]))
            return
    except InvalidSignature:
        raise WireFormatError("the certificate's CA signature does not verify") from None
    raise WireFormatError(
        f"a certificate signed by a {ca_kind} CA with {alg.decode(errors='replace')}, "
        "which airlock does not check"
    )


def _certificate(reader: Reader, blob: bytes) -> Certificate:
    """``cert_parse``: the fields after the subject key, then the CA's signature over them."""
    _serial, cert_type = struct.unpack(">QI", reader.raw(12))
    key_id = _cstring(reader, "key id")
    principals_blob = reader.string()
    valid_after, valid_before = struct.unpack(">QQ", reader.raw(16))
    critical, extensions = reader.string(), reader.string()
    reader.string()  # reserved
    ca_blob = reader.string()
    signed = blob[: len(blob) - reader.remaining]
    sig = reader.string()
    if cert_type not in (1, 2):
        raise WireFormatError(f"unknown certificate type {cert_type}")
    names = Reader(principals_blob)
    principals: list[bytes] = []
    while names.remaining:
        if len(principals) >= _MAX_CERT_PRINCIPALS:
            raise WireFormatError("more than 256 certificate principals")
        principals.append(_cstring(names, "certificate principal"))
    for section in (critical, extensions):
        pairs = Reader(section)
        while pairs.remaining:
            pairs.string()
            pairs.string()
    ca_reader = Reader(ca_blob)
    ca_kind, ca_curve, ca_is_cert = _type_from_blob_name(_cstring(ca_reader, "CA key type"))
    if ca_is_cert:
        raise WireFormatError("a certificate as a CA key")
    try:
        ca_public, verifier = _public(ca_reader, ca_kind, ca_curve, b"CA key")
    except KeyTooShort as e:  # SSH_ERR_KEY_CERT_INVALID_SIGN_KEY, not a short key to skip
        raise WireFormatError(f"the CA key is {e}") from e
    ca_reader.expect_end("the CA key")
    _check_ca_signature(ca_kind, verifier, ca_curve, sig, signed)
    return Certificate(cert_type, key_id, tuple(principals), valid_after, valid_before, ca_public)


def key_from_blob(blob: bytes, line_type: bytes) -> KeyText:
    """``sshkey_fromb`` plus ``sshkey_read``'s check that the blob is of the line's type."""
    reader = Reader(blob)
    try:
        kind, curve, is_cert = _type_from_blob_name(_cstring(reader, "key type"))
        if is_cert:
            reader.string()  # nonce
        public, _verifier = _public(reader, kind, curve, line_type)
        certificate = _certificate(reader, blob) if is_cert else None
        reader.expect_end("the key")
    except KeyTooShort:
        raise
    except WireFormatError as e:
        raise KeyTextError(f"malformed key: {e}") from e
    expected = _CERTS.get(line_type) if line_type in _CERTS else _PLAIN.get(line_type)
    if expected is None or (kind, is_cert) != (expected[0], line_type in _CERTS):
        raise KeyTextError(f"the line says {line_type.decode()} but the key inside is another type")
    if expected[1] != curve:
        raise KeyTextError("the key's curve does not match the line")
    return KeyText(line_type.decode("ascii"), blob, public, certificate)


def read_key(text: bytes) -> tuple[KeyText, bytes]:
    """``sshkey_read``: a key at the start of ``text`` and the text after it (its comment).

    ``text`` is one line with NUL already cut off. Raises KeyTextError (KeyTooShort for an
    RSA key under 1024 bits).
    """
    space = next((i for i, c in enumerate(text) if c in _BLANK), -1)
    if space < 0:
        raise KeyTextError("no key type followed by a space")
    line_type = text[:space]
    if not is_key_type(line_type):
        raise KeyTextError(f"unknown key type {line_type.decode(errors='replace')!r}")
    rest = text[space:].lstrip(_BLANK)
    if not rest:
        raise KeyTextError("no key after the key type")
    end = next((i for i, c in enumerate(rest) if c in _BLANK), len(rest))
    blob = b64_pton(rest[:end])
    return key_from_blob(blob, line_type), rest[end:].lstrip(_BLANK)
