"""The OpenSSH private key file (``openssh-key-v1``, PROTOCOL.key) for Ed25519: decode, encode."""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from typing import Callable, Optional, Union

import bcrypt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

from bundler.errors import KeyFileError
from bundler.ssh.wire import Reader, WireFormatError, string, uint32

PASSPHRASE_ENV = "AIRLOCK_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
END = "-----END OPENSSH PRIVATE KEY-----"
MAGIC = b"openssh-key-v1\x00"
ED25519 = "ssh-ed25519"
KDF_ROUNDS = 16  # ssh-keygen's default
WRITE_CIPHER = "aes256-ctr"  # ssh-keygen's default


@dataclass(frozen=True)
class _CipherSpec:
    key_len: int
    iv_len: int
    tag_len: int
    block: int
    mode: str


CIPHERS = {
    "aes128-ctr": _CipherSpec(16, 16, 0, 16, "ctr"),
    "aes192-ctr": _CipherSpec(24, 16, 0, 16, "ctr"),
    "aes256-ctr": _CipherSpec(32, 16, 0, 16, "ctr"),
    "aes128-cbc": _CipherSpec(16, 16, 0, 16, "cbc"),
    "aes192-cbc": _CipherSpec(24, 16, 0, 16, "cbc"),
    "aes256-cbc": _CipherSpec(32, 16, 0, 16, "cbc"),
    "aes128-gcm@openssh.com": _CipherSpec(16, 12, 16, 16, "gcm"),
    "aes256-gcm@openssh.com": _CipherSpec(32, 12, 16, 16, "gcm"),
    "chacha20-poly1305@openssh.com": _CipherSpec(64, 0, 16, 8, "chachapoly"),
}


@dataclass(frozen=True)
class Ed25519KeyFile:
    """What an Ed25519 private key file holds: the 32-byte seed, public key and comment."""

    seed: bytes
    public: bytes
    comment: str


def is_openssh_private_key(text: str) -> bool:
    stripped = text.strip()
    return stripped.startswith(BEGIN) and stripped.endswith(END)


def wrong_passphrase(where: str) -> KeyFileError:
    return KeyFileError(
        f"wrong passphrase for {where}",
        hint=f"check {PASSPHRASE_ENV} or the passphrase you typed "
        f"(`ssh-keygen -y -f {where}` tests it)",
    )


def _crypt(spec: _CipherSpec, key: bytes, iv: bytes, data: bytes, *, encrypt: bool) -> bytes:
    mode: Union[modes.CTR, modes.CBC] = modes.CTR(iv) if spec.mode == "ctr" else modes.CBC(iv)
    cipher = Cipher(algorithms.AES(key), mode)
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def _chacha20(key: bytes, counter: int, data: bytes) -> bytes:
    # OpenSSH's original-ChaCha20 layout: 64-bit block counter, 64-bit nonce (sequence
    # number 0 for key files); cryptography takes both as one 16-byte initial state.
    nonce = counter.to_bytes(8, "little") + bytes(8)
    return Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(data)


def _chachapoly_open(where: str, key: bytes, sealed: bytes, tag_len: int) -> bytes:
    """chacha20-poly1305@openssh.com (PROTOCOL.chacha20poly1305) without additional data."""
    main_key = key[:32]  # the second half keys the packet length, absent in key files
    body, tag = sealed[:-tag_len], sealed[-tag_len:]
    try:
        Poly1305.verify_tag(_chacha20(main_key, 0, bytes(32)), body, tag)
    except InvalidSignature:
        raise wrong_passphrase(where) from None
    return _chacha20(main_key, 1, body)


def _decrypt(where: str, name: str, kdf: bytes, sealed: bytes, passphrase: bytes) -> bytes:
    spec = CIPHERS[name]
    try:
        opts = Reader(kdf)
        salt, rounds = opts.string(), opts.uint32()
    except WireFormatError as e:
        raise KeyFileError(f"the key {where} has malformed bcrypt options: {e}") from e
    material = bcrypt.kdf(
        passphrase, salt, spec.key_len + spec.iv_len, rounds, ignore_few_rounds=True
    )
    key, iv = material[: spec.key_len], material[spec.key_len :]
    if spec.mode == "chachapoly":
        return _chachapoly_open(where, key, sealed, spec.tag_len)
    if spec.mode != "gcm":
        return _crypt(spec, key, iv, sealed, encrypt=False)
    body, tag = sealed[: -spec.tag_len], sealed[-spec.tag_len :]
    aead = Cipher(algorithms.AES(key), modes.GCM(iv, tag)).decryptor()
    try:
        return aead.update(body) + aead.finalize()
    except InvalidTag:
        raise wrong_passphrase(where) from None


def decode(text: str, *, where: str, passphrase: Callable[[], bytes]) -> Optional[Ed25519KeyFile]:
    """Decode an OpenSSH private key file; ``passphrase()`` is called only if it is encrypted.

    Returns None when the file uses a cipher this module does not implement (the caller may
    try another reader). Raises KeyFileError for a malformed file, a wrong passphrase or a
    key that is not Ed25519.
    """
    body = text.strip()[len(BEGIN) : -len(END)]
    try:
        reader = Reader(base64.b64decode("".join(body.split()), validate=True))
        if reader.raw(len(MAGIC)) != MAGIC:
            raise WireFormatError("missing the openssh-key-v1 header")
        cipher_name, kdf_name, kdf = reader.text(), reader.text(), reader.string()
        if reader.uint32() != 1:
            raise WireFormatError("airlock reads files holding exactly one key")
        reader.string()  # the public key, repeated inside the private section
        length = reader.uint32()
        spec = CIPHERS.get(cipher_name)
        sealed = reader.raw(length + (spec.tag_len if spec else 0))
    except (binascii.Error, ValueError) as e:
        raise KeyFileError(
            f"the key {where} is not a readable OpenSSH private key: {e}",
            hint="check the file is a private key made by ssh-keygen or airlock keygen",
        ) from e
    if cipher_name == "none":
        plain = sealed
    elif spec is not None and kdf_name == "bcrypt":
        plain = _decrypt(where, cipher_name, kdf, sealed, passphrase())
    else:
        return None
    try:
        inner = Reader(plain)
        if inner.uint32() != inner.uint32():
            raise wrong_passphrase(where)
        key_type = inner.text()
        if key_type != ED25519:
            raise KeyFileError(
                f"the key {where} is {key_type}; airlock signs with Ed25519 keys only",
                hint="make one with `airlock keygen` or `ssh-keygen -t ed25519`",
            )
        public, secret = inner.string(), inner.string()
        comment = inner.string().decode("utf-8", errors="replace")
    except WireFormatError as e:
        raise KeyFileError(f"the key {where} is corrupt: {e}") from e
    if len(public) != 32 or len(secret) != 64 or secret[32:] != public:
        raise KeyFileError(f"the key {where} is corrupt: its Ed25519 halves do not match")
    return Ed25519KeyFile(secret[:32], public, comment)


def encode(key: Ed25519KeyFile, *, passphrase: Optional[bytes]) -> bytes:
    """The file ssh-keygen would write: bcrypt-pbkdf (16 rounds) + aes256-ctr, or unencrypted."""
    public_blob = string(ED25519.encode()) + string(key.public)
    check = secrets.token_bytes(4)
    plain = (
        check
        + check
        + public_blob
        + string(key.seed + key.public)
        + string(key.comment.encode("utf-8"))
    )
    spec = CIPHERS[WRITE_CIPHER]
    block = 8 if passphrase is None else spec.block
    plain += bytes(range(1, 1 + (-len(plain)) % block))
    if passphrase is None:
        cipher_name, kdf_name, kdf, sealed = "none", "none", b"", plain
    else:
        salt = secrets.token_bytes(16)
        material = bcrypt.kdf(
            passphrase, salt, spec.key_len + spec.iv_len, KDF_ROUNDS, ignore_few_rounds=True
        )
        key_bytes, iv = material[: spec.key_len], material[spec.key_len :]
        cipher_name, kdf_name = WRITE_CIPHER, "bcrypt"
        kdf = string(salt) + uint32(KDF_ROUNDS)
        sealed = _crypt(spec, key_bytes, iv, plain, encrypt=True)
    blob = (
        MAGIC
        + string(cipher_name.encode())
        + string(kdf_name.encode())
        + string(kdf)
        + uint32(1)
        + string(public_blob)
        + string(sealed)
    )
    b64 = base64.b64encode(blob).decode("ascii")
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    return "\n".join([BEGIN, *lines, END, ""]).encode("ascii")
