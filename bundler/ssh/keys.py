"""OpenSSH Ed25519 keys: public key lines, private key files (encrypted or not), agent signers."""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.errors import KeyFileError
from bundler.ssh import keyfile as sshkeyfile
from bundler.ssh.agent import AgentClient
from bundler.ssh.keyfile import PASSPHRASE_ENV as PASSPHRASE_ENV
from bundler.ssh.wire import Reader, WireFormatError, string

ED25519 = "ssh-ed25519"

# Key types a public key line may carry (allowed_signers files list them all); airlock signs
# and verifies with Ed25519 only, the others are parsed so a mixed file still loads.
_KNOWN_TYPES = {
    ED25519: "ED25519",
    "ssh-rsa": "RSA",
    "ecdsa-sha2-nistp256": "ECDSA",
    "ecdsa-sha2-nistp384": "ECDSA",
    "ecdsa-sha2-nistp521": "ECDSA",
    "sk-ssh-ed25519@openssh.com": "ED25519-SK",
    "sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK",
}
_KNOWN_TYPES.update(
    {
        "ssh-ed25519-cert-v01@openssh.com": "ED25519-CERT",
        "ssh-rsa-cert-v01@openssh.com": "RSA-CERT",
        "ecdsa-sha2-nistp256-cert-v01@openssh.com": "ECDSA-CERT",
        "ecdsa-sha2-nistp384-cert-v01@openssh.com": "ECDSA-CERT",
        "ecdsa-sha2-nistp521-cert-v01@openssh.com": "ECDSA-CERT",
        "sk-ssh-ed25519-cert-v01@openssh.com": "ED25519-SK-CERT",
        "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": "ECDSA-SK-CERT",
    }
)


def _fingerprint(blob: bytes) -> str:
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def is_key_type(name: str) -> bool:
    """Whether ``name`` is an SSH public key type airlock can parse (e.g. ``ssh-ed25519``)."""
    return name in _KNOWN_TYPES


@dataclass(frozen=True)
class PublicKey:
    """An SSH public key: its type, wire-format blob and (cosmetic) comment."""

    key_type: str
    blob: bytes
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        """``SHA256:<base64, no padding>``, as ``ssh-keygen -l`` prints it."""
        return _fingerprint(self.blob)

    def openssh(self) -> str:
        """The one-line ``authorized_keys`` / ``.pub`` form."""
        line = f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"
        return f"{line} {self.comment}" if self.comment else line

    @property
    def ed25519_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key; raises KeyFileError for other key types."""
        if self.key_type != ED25519:
            raise KeyFileError(
                f"key {self.fingerprint} is {self.key_type}; airlock uses Ed25519 keys only",
                hint="make an Ed25519 key with `airlock keygen` or `ssh-keygen -t ed25519`",
            )
        reader = Reader(self.blob)
        reader.string()
        return reader.string()

    @classmethod
    def from_ed25519(cls, raw: bytes, comment: str = "") -> PublicKey:
        return cls(ED25519, string(ED25519.encode()) + string(raw), comment)

    @classmethod
    def from_blob(cls, blob: bytes, comment: str = "") -> PublicKey:
        """A key from its wire blob; raises KeyFileError when the blob is malformed."""
        try:
            reader = Reader(blob)
            key_type = reader.text()
            if key_type == ED25519:
                if len(reader.string()) != 32:
                    raise WireFormatError("an Ed25519 key is 32 bytes")
                reader.expect_end("the Ed25519 key")
        except WireFormatError as e:
            raise KeyFileError(
                f"malformed SSH public key: {e}",
                hint="copy the key again from its .pub file",
            ) from e
        if key_type not in _KNOWN_TYPES:
            raise KeyFileError(
                f"unknown SSH key type {key_type!r}",
                hint="use an Ed25519 key (ssh-ed25519)",
            )
        return cls(key_type, blob, comment)

    @classmethod
    def parse(cls, line: str) -> PublicKey:
        """Parse ``<type> <base64> [comment]``; raises KeyFileError naming what is wrong."""
        fields = line.strip().split(None, 2)
        hint = "a public key line looks like `ssh-ed25519 AAAAC3Nza... comment` (see the .pub file)"
        if len(fields) < 2:
            raise KeyFileError(f"not an SSH public key line: {line.strip()[:60]!r}", hint=hint)
        key_type, b64 = fields[0], fields[1]
        if key_type not in _KNOWN_TYPES:
            raise KeyFileError(f"unknown SSH key type {key_type!r}", hint=hint)
        try:
            blob = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise KeyFileError(f"the {key_type} key's base64 is invalid: {e}", hint=hint) from e
        key = cls.from_blob(blob, fields[2].strip() if len(fields) > 2 else "")
        if key.key_type != key_type:
            raise KeyFileError(
                f"the line says {key_type} but the key inside is {key.key_type}", hint=hint
            )
        return key


class Signer(Protocol):
    """Anything that signs SSH-style: returns the signature blob (string alg, string sig)."""

    public_key: PublicKey

    def sign_data(self, data: bytes) -> bytes: ...


class Ed25519Signer:
    """Signs with an Ed25519 private key held in this process."""

    def __init__(self, private_key: Ed25519PrivateKey, *, comment: str = "") -> None:
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._private_key = private_key
        self.public_key = PublicKey.from_ed25519(raw, comment)

    def sign_data(self, data: bytes) -> bytes:
        return string(ED25519.encode()) + string(self._private_key.sign(data))


class AgentSigner:
    """Signs through ssh-agent; the private key never enters this process."""

    def __init__(self, public_key: PublicKey, client: AgentClient) -> None:
        self.public_key = public_key
        self._client = client

    def sign_data(self, data: bytes) -> bytes:
        return self._client.sign(self.public_key.blob, data)


def agent_signer(fingerprint: str, *, client: Optional[AgentClient] = None) -> AgentSigner:
    """The agent's key with this ``SHA256:...`` fingerprint; raises KeyFileError if absent."""
    client = client or AgentClient()
    held = client.identities()
    for blob, comment in held:
        if _fingerprint(blob) == fingerprint:
            key = PublicKey.from_blob(blob, comment)
            if key.key_type != ED25519:
                raise KeyFileError(
                    f"the agent's key {fingerprint} is {key.key_type}; "
                    "airlock signs with Ed25519 keys only",
                    hint="add an Ed25519 key to the agent (ssh-keygen -t ed25519; ssh-add)",
                )
            return AgentSigner(key, client)
    listed = ", ".join(_fingerprint(blob) for blob, _ in held) or "none"
    raise KeyFileError(
        f"the ssh-agent at {client.socket_path} does not hold key {fingerprint} "
        f"(it holds: {listed})",
        hint="add the key with `ssh-add PATH`, then check with `ssh-add -l`",
    )


def _passphrase_for(path: Path, passphrase: Optional[bytes]) -> bytes:
    if passphrase is not None:
        return passphrase
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        return env.encode("utf-8")
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"Passphrase for {path}: ").encode("utf-8")
    raise KeyFileError(
        f"the key {path} is encrypted and no passphrase was given",
        hint=f"set {PASSPHRASE_ENV}, run interactively to be prompted, "
        "or load the key into ssh-agent and pass its .pub file",
    )


def _load_openssh(path: Path, text: str, passphrase: Optional[bytes]) -> Ed25519Signer:
    found = sshkeyfile.decode(
        text, where=str(path), passphrase=lambda: _passphrase_for(path, passphrase)
    )
    if found is None:  # a cipher we do not implement: cryptography may know it
        return _load_with_cryptography(path, text.encode(), passphrase, openssh=True)
    private_key = Ed25519PrivateKey.from_private_bytes(found.seed)
    return Ed25519Signer(private_key, comment=found.comment)


def _load_with_cryptography(
    path: Path, data: bytes, passphrase: Optional[bytes], *, openssh: bool
) -> Ed25519Signer:
    encrypted = b"ENCRYPTED" in data or openssh
    password = _passphrase_for(path, passphrase) if encrypted else None
    loader: Callable[..., object] = (
        serialization.load_ssh_private_key if openssh else serialization.load_pem_private_key
    )
    try:
        key = loader(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(
            f"cannot read the private key {path}: {e}",
            hint="check the passphrase; airlock reads OpenSSH and PKCS#8 PEM Ed25519 keys",
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"the key {path} is not an Ed25519 key; airlock signs with Ed25519 keys only",
            hint="make one with `airlock keygen` or `ssh-keygen -t ed25519`",
        )
    return Ed25519Signer(key, comment=_sibling_comment(path))


def _sibling_comment(path: Path) -> str:
    try:
        return PublicKey.parse(Path(str(path) + ".pub").read_text(encoding="utf-8")).comment
    except (OSError, KeyFileError, UnicodeDecodeError):
        return ""


def load_signer(key: Union[str, Path], *, passphrase: Optional[bytes] = None) -> Signer:
    """A signer for ``key``.

    ``key`` is a path to an OpenSSH or PKCS#8 PEM Ed25519 private key (encrypted or not:
    the passphrase comes from the argument, else $AIRLOCK_KEY_PASSPHRASE, else a prompt when
    stdin is a terminal); or a path to a ``.pub`` file or the string ``agent:SHA256:...``,
    which sign through the ssh-agent at $SSH_AUTH_SOCK. Raises KeyFileError.
    """
    if isinstance(key, str) and key.startswith("agent:"):
        return agent_signer(key[len("agent:") :])
    path = Path(key)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(
            f"cannot read the signing key {path}: {e.strerror or e}",
            hint="pass the private key file, its .pub file (to sign through ssh-agent), "
            "or agent:SHA256:<fingerprint>",
        ) from e
    text = data.decode("utf-8", errors="replace")
    stripped = text.strip()
    if sshkeyfile.is_openssh_private_key(stripped):
        return _load_openssh(path, stripped, passphrase)
    if stripped.startswith("-----BEGIN") and "PRIVATE KEY-----" in stripped.splitlines()[0]:
        return _load_with_cryptography(path, data, passphrase, openssh=False)
    first = stripped.splitlines()[0] if stripped else ""
    if is_key_type(first.split(" ", 1)[0]):
        return agent_signer(PublicKey.parse(first).fingerprint)
    raise KeyFileError(
        f"{path} is neither a private key nor a public key line",
        hint="pass an Ed25519 private key (airlock keygen / ssh-keygen -t ed25519) "
        "or its .pub file to sign through ssh-agent",
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, refusing to replace anything already there."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # link() is atomic and never replaces: a key that appeared meanwhile is kept.
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def refuse_existing_key(out: Path) -> None:
    """Raise KeyFileError when ``out`` or ``out.pub`` exists (checked before asking anything)."""
    for p in (out, Path(str(out) + ".pub")):
        if os.path.lexists(p):
            raise KeyFileError(
                f"{p} already exists; airlock never overwrites a key",
                hint="choose another --out path, or move the old key away first",
            )


def generate_keypair(out: Path, *, comment: str, passphrase: Optional[bytes]) -> PublicKey:
    """Write a new Ed25519 key to ``out`` (0600, OpenSSH format) and ``out.pub``.

    Encrypted with bcrypt-pbkdf and aes256-ctr (as ssh-keygen does) when ``passphrase`` is
    given. Refuses to overwrite either file. Raises KeyFileError; returns the public key.
    """
    refuse_existing_key(out)
    pub_path = Path(str(out) + ".pub")
    if passphrase is not None and not passphrase:
        raise KeyFileError(
            "the passphrase is empty",
            hint="give a non-empty passphrase, or --no-passphrase for an unencrypted key",
        )
    private_key = Ed25519PrivateKey.generate()
    signer = Ed25519Signer(private_key, comment=comment)
    key_file = sshkeyfile.Ed25519KeyFile(
        seed=private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        ),
        public=signer.public_key.ed25519_bytes,
        comment=comment,
    )
    try:
        _write_new(out, sshkeyfile.encode(key_file, passphrase=passphrase), 0o600)
        try:
            _write_new(pub_path, (signer.public_key.openssh() + "\n").encode("utf-8"), 0o644)
        except OSError:
            out.unlink()
            raise
    except FileExistsError as e:
        raise KeyFileError(
            f"{e.filename or out} appeared while the key was written; nothing was replaced",
            hint="choose another --out path",
        ) from e
    except OSError as e:
        raise KeyFileError(
            f"cannot write the key to {out}: {e.strerror or e}",
            hint="check the directory exists and is writable",
        ) from e
    return signer.public_key


def _key_bits(pub: PublicKey) -> int:
    reader = Reader(pub.blob)
    reader.string()
    if pub.key_type.startswith("ssh-rsa"):
        if pub.key_type != "ssh-rsa":
            reader.string()  # certificate nonce
        reader.string()  # e
        n = reader.string().lstrip(b"\x00")
        return int.from_bytes(n, "big").bit_length()
    if "nistp384" in pub.key_type:
        return 384
    if "nistp521" in pub.key_type:
        return 521
    return 256


def fingerprint_line(pub: PublicKey) -> str:
    """Exactly what ``ssh-keygen -l -f`` prints: ``256 SHA256:... comment (ED25519)``."""
    comment = pub.comment or "no comment"
    return f"{_key_bits(pub)} {pub.fingerprint} {comment} ({_KNOWN_TYPES[pub.key_type]})"


def new_key_passphrase(
    label: str,
    *,
    no_passphrase: bool = False,
    prompt: Optional[Callable[[str], str]] = None,
) -> Optional[bytes]:
    """The passphrase for a new private key: AIRLOCK_KEY_PASSPHRASE, else asked twice.

    ``prompt`` defaults to getpass when stdin is a terminal. ``no_passphrase`` returns None
    (an unencrypted key, asked for on purpose). Raises UsageError when --no-passphrase and
    the variable are both given, KeyFileError when there is no source or the two typed
    passphrases differ or are empty.
    """
    from bundler.errors import UsageError

    env = os.environ.get(PASSPHRASE_ENV)
    if no_passphrase:
        if env is not None:
            raise UsageError(
                f"--no-passphrase was given but {PASSPHRASE_ENV} is set",
                hint=f"unset {PASSPHRASE_ENV} for an unencrypted key, or drop --no-passphrase",
            )
        return None
    if env is not None:
        if not env:
            raise KeyFileError(
                f"{PASSPHRASE_ENV} is set but empty",
                hint="set a passphrase, or pass --no-passphrase for an unencrypted key",
            )
        return env.encode("utf-8")
    if prompt is None and sys.stdin is not None and sys.stdin.isatty():
        prompt = getpass.getpass
    if prompt is None:
        raise KeyFileError(
            "no passphrase for the new key and no terminal to ask on",
            hint=f"set {PASSPHRASE_ENV}, run interactively, or pass --no-passphrase "
            "to write an unencrypted key on purpose",
        )
    first = prompt(f"Passphrase for {label}: ")
    if not first:
        raise KeyFileError(
            f"no passphrase typed for {label}",
            hint="type one, or pass --no-passphrase for an unencrypted key",
        )
    if prompt("Same passphrase again: ") != first:
        raise KeyFileError("the two passphrases differ; no key was written")
    return first.encode("utf-8")
