"""OpenSSH SSHSIG (PROTOCOL.sshsig): sign, parse, verify; byte-identical to ssh-keygen -Y."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import BinaryIO, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bundler.errors import KeyFileError, SignatureError
from bundler.ssh.keys import ED25519, PublicKey, Signer
from bundler.ssh.keytext import KeyTextError, b64_pton
from bundler.ssh.wire import Reader, WireFormatError, string, uint32

MANIFEST_NAMESPACE = "airlock-manifest-v1"
ARCHIVE_NAMESPACE = "airlock-archive-v1"

MAGIC = b"SSHSIG"
VERSION = 1
ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
_BEGIN = ARMOR_BEGIN.encode() + b"\n"
_END = b"\n" + ARMOR_END.encode()
HASH_ALGORITHMS = ("sha256", "sha512")
_WRAP = 70  # ssh-keygen wraps the base64 at 70 columns
_CHUNK = 1 << 20

Message = Union[bytes, BinaryIO]


@dataclass(frozen=True)
class SshSignature:
    """A parsed SSHSIG: who signed, for which namespace, with which hash, and the raw signature."""

    public_key: PublicKey
    namespace: str
    hash_algorithm: str
    signature: bytes


def signature_id(pub: PublicKey) -> str:
    """The file-name-safe key id: the fingerprint's base64, ``/``->``_``, ``+``->``-``.

    The bundle stores the signature made by ``pub`` as ``airlock/signatures/<id>.sig``.
    """
    return pub.fingerprint[len("SHA256:") :].replace("/", "_").replace("+", "-")


def message_digest(message: Message, hash_algorithm: str = "sha512") -> bytes:
    """H(message); a file object is read once, in chunks, from its current position."""
    _check_hash(hash_algorithm)
    h = hashlib.new(hash_algorithm)
    if isinstance(message, (bytes, bytearray, memoryview)):
        h.update(message)
    else:
        while chunk := message.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def _check_hash(hash_algorithm: str) -> None:
    if hash_algorithm not in HASH_ALGORITHMS:
        raise SignatureError(
            f"unsupported SSHSIG hash algorithm {hash_algorithm!r}",
            hint="SSHSIG allows sha256 and sha512 only",
        )


def _check_namespace(namespace: str) -> None:
    if not namespace:
        raise SignatureError(
            "an SSHSIG namespace must not be empty",
            hint=f"airlock signs manifests with {MANIFEST_NAMESPACE!r}",
        )


def _signed_data(namespace: str, hash_algorithm: str, digest: bytes) -> bytes:
    return (
        MAGIC
        + string(namespace.encode("utf-8"))
        + string(b"")
        + string(hash_algorithm.encode("ascii"))
        + string(digest)
    )


def _armor(blob: bytes) -> bytes:
    b64 = base64.b64encode(blob).decode("ascii")
    lines = [b64[i : i + _WRAP] for i in range(0, len(b64), _WRAP)]
    return "\n".join([ARMOR_BEGIN, *lines, ARMOR_END, ""]).encode("ascii")


def sign_digest(
    digest: bytes, signer: Signer, *, namespace: str, hash_algorithm: str = "sha512"
) -> bytes:
    """Sign an already computed H(message); returns the armored signature (bytes)."""
    _check_hash(hash_algorithm)
    _check_namespace(namespace)
    if len(digest) != hashlib.new(hash_algorithm).digest_size:
        raise SignatureError(
            f"a {hash_algorithm} digest is {hashlib.new(hash_algorithm).digest_size} bytes, "
            f"got {len(digest)}",
            hint="pass the raw digest (hashlib's .digest(), not .hexdigest())",
        )
    raw = signer.sign_data(_signed_data(namespace, hash_algorithm, digest))
    blob = (
        MAGIC
        + uint32(VERSION)
        + string(signer.public_key.blob)
        + string(namespace.encode("utf-8"))
        + string(b"")
        + string(hash_algorithm.encode("ascii"))
        + string(raw)
    )
    return _armor(blob)


def sign(message: Message, signer: Signer, *, namespace: str) -> bytes:
    """Sign ``message`` (sha512) as ``ssh-keygen -Y sign -n NAMESPACE`` does; returns the armor."""
    return sign_digest(message_digest(message), signer, namespace=namespace)


def dearmor(armored: bytes) -> bytes:
    """The SSHSIG blob inside the armor, as OpenSSH 9.2's ``sshsig_dearmor`` reads it.

    The file must start with the BEGIN line and ``\n``; the base64 runs to the first
    ``\n-----END SSH SIGNATURE-----`` (``b64_pton``: whitespace anywhere is skipped) and
    whatever follows that line is ignored. Raises SignatureError.
    """
    hint = "the signature file is damaged or not an SSH signature; copy it again or re-sign"
    if not armored.startswith(_BEGIN):
        raise SignatureError(f"the signature does not start with the line {ARMOR_BEGIN}", hint=hint)
    body = armored[len(_BEGIN) :]
    end = body.find(_END)
    if end < 0:
        raise SignatureError(f"the signature has no {ARMOR_END} line", hint=hint)
    b64 = body[:end]
    if b"\0" in b64[:-1]:
        raise SignatureError("the signature's base64 holds a NUL byte", hint=hint)
    try:
        return b64_pton(b64)
    except KeyTextError as e:
        raise SignatureError(f"the signature's base64 is invalid: {e}", hint=hint) from e


def parse(armored: bytes) -> SshSignature:
    """Parse an armored SSHSIG; raises SignatureError saying what is malformed."""
    hint = "the signature file is damaged or not an SSH signature; copy it again or re-sign"
    blob = dearmor(armored)
    try:
        reader = Reader(blob)
        if reader.raw(len(MAGIC)) != MAGIC:
            raise WireFormatError("missing the SSHSIG preamble")
        version = reader.uint32()
        if version != VERSION:
            raise WireFormatError(f"version {version}, airlock reads version {VERSION}")
        key_blob = reader.string()
        namespace = reader.text()
        reader.string()  # reserved: ignored, as ssh-keygen does
        hash_algorithm = reader.text()
        signature = reader.string()
        reader.expect_end("the signature")
    except WireFormatError as e:
        raise SignatureError(f"malformed SSHSIG: {e}", hint=hint) from e
    try:
        public_key = PublicKey.from_blob(key_blob)
    except KeyFileError as e:
        raise SignatureError(
            f"the signature's public key is unusable: {e.message}", hint=hint
        ) from e
    return SshSignature(public_key, namespace, hash_algorithm, signature)


def verify_digest(
    digest: bytes, signature: Union[bytes, SshSignature], *, namespace: str
) -> PublicKey:
    """Check ``signature`` over a precomputed H(message); returns the key that signed.

    The digest must use the signature's hash algorithm (see :func:`parse`). This proves only
    that the key signed; whether the key is trusted is :mod:`bundler.ssh.trust`'s question.
    Raises SignatureError.
    """
    sig = parse(signature) if isinstance(signature, bytes) else signature
    _check_namespace(namespace)
    if sig.namespace != namespace:
        raise SignatureError(
            f"the signature is for namespace {sig.namespace!r}, expected {namespace!r}",
            hint="a signature made for another purpose cannot vouch for this file; "
            f"sign it with `-n {namespace}`",
        )
    _check_hash(sig.hash_algorithm)
    if len(digest) != hashlib.new(sig.hash_algorithm).digest_size:
        raise SignatureError(
            f"the digest does not match the signature's hash algorithm {sig.hash_algorithm}",
            hint="hash the message with the algorithm the signature names",
        )
    if sig.public_key.key_type != ED25519:
        raise SignatureError(
            f"the signature was made with a {sig.public_key.key_type} key "
            f"({sig.public_key.fingerprint}); airlock accepts Ed25519 signatures only",
            hint="re-sign with an Ed25519 key (airlock keygen / ssh-keygen -t ed25519)",
        )
    try:
        reader = Reader(sig.signature)
        algorithm = reader.text()
        raw = reader.string()
        reader.expect_end("the Ed25519 signature")
        if algorithm != ED25519 or len(raw) != 64:
            raise WireFormatError(f"expected a 64-byte {ED25519} signature, got {algorithm}")
    except WireFormatError as e:
        raise SignatureError(f"malformed signature blob: {e}") from e
    verifier = Ed25519PublicKey.from_public_bytes(sig.public_key.ed25519_bytes)
    try:
        verifier.verify(raw, _signed_data(namespace, sig.hash_algorithm, digest))
    except InvalidSignature:
        raise SignatureError(
            f"the signature by {sig.public_key.fingerprint} does not match the signed bytes",
            hint="the file was changed after signing, or the signature belongs to another "
            "file; get both again from the publisher",
        ) from None
    return sig.public_key


def verify(message: Message, signature: Union[bytes, SshSignature], *, namespace: str) -> PublicKey:
    """Check ``signature`` over ``message``; returns the key that signed. Raises SignatureError."""
    sig = parse(signature) if isinstance(signature, bytes) else signature
    _check_hash(sig.hash_algorithm)
    return verify_digest(message_digest(message, sig.hash_algorithm), sig, namespace=namespace)
