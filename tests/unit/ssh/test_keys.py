"""Ed25519 keys: public key lines, private key files, passphrases, fingerprints, agent client."""

from __future__ import annotations

import base64
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.errors import KeyFileError
from bundler.ssh.agent import AgentClient
from bundler.ssh.keys import (
    PASSPHRASE_ENV,
    AgentSigner,
    Ed25519Signer,
    PublicKey,
    agent_signer,
    fingerprint_line,
    generate_keypair,
    load_signer,
)
from bundler.ssh.wire import Reader, string, uint32

# A key made by `ssh-keygen -t ed25519 -C me@x`; the fingerprint is what `ssh-keygen -l` printed.
KNOWN_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMp3RS1qs/UZgM6mJ+rATqWDnIPoUSNPFJO3ENoLqbfT me@x"
KNOWN_FINGERPRINT = "SHA256:HmcdZ8vioq6bT5U5rV9t1202mUnKkkDsrQzU/SRkQi8"


@pytest.fixture(autouse=True)
def _no_passphrase_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)


def test_public_key_line_round_trips_with_ssh_keygen_fingerprint() -> None:
    key = PublicKey.parse(KNOWN_LINE + "\n")
    assert key.key_type == "ssh-ed25519"
    assert key.comment == "me@x"
    assert key.fingerprint == KNOWN_FINGERPRINT
    assert key.openssh() == KNOWN_LINE
    assert fingerprint_line(key) == f"256 {KNOWN_FINGERPRINT} me@x (ED25519)"


def test_fingerprint_line_says_no_comment_like_ssh_keygen() -> None:
    key = PublicKey.parse(" ".join(KNOWN_LINE.split()[:2]))
    assert key.comment == ""
    assert fingerprint_line(key) == f"256 {KNOWN_FINGERPRINT} no comment (ED25519)"


def test_fingerprint_line_counts_rsa_modulus_bits() -> None:
    pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    line = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    key = PublicKey.parse(line.decode() + " r@x")
    assert fingerprint_line(key).startswith("2048 SHA256:")
    assert fingerprint_line(key).endswith(" r@x (RSA)")


@pytest.mark.parametrize(
    "line, needle",
    [
        ("", "not an SSH public key line"),
        ("ssh-ed25519", "not an SSH public key line"),
        ("ssh-dss AAAAB3NzaC1kc3M=", "unknown SSH key type"),
        ("ssh-ed25519 !!!notbase64", "base64"),
        ("ssh-ed25519 " + base64.b64encode(b"\x00\x00").decode(), "malformed"),
        (
            "ssh-ed25519 " + base64.b64encode(string(b"ssh-ed25519") + string(b"x" * 31)).decode(),
            "32 bytes",
        ),
        ("ssh-rsa " + KNOWN_LINE.split()[1], "says ssh-rsa but the key inside is ssh-ed25519"),
    ],
)
def test_rejects_malformed_public_key_lines(line: str, needle: str) -> None:
    with pytest.raises(KeyFileError) as exc:
        PublicKey.parse(line)
    assert needle in exc.value.message


def test_generated_key_is_private_and_loads_back(tmp_path: Path) -> None:
    out = tmp_path / "signing"
    pub = generate_keypair(out, comment="release key", passphrase=None)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert (tmp_path / "signing.pub").read_text() == pub.openssh() + "\n"
    assert out.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    signer = load_signer(out)
    assert signer.public_key == pub  # comment included: it is stored inside the private key
    assert signer.public_key.comment == "release key"


def test_encrypted_key_needs_its_passphrase(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "k"
    pub = generate_keypair(out, comment="c", passphrase=b"correct horse")
    assert b"aes256-ctr" in base64.b64decode("".join(out.read_text().splitlines()[1:-1]))
    monkeypatch.setattr("sys.stdin", None)
    with pytest.raises(KeyFileError) as exc:
        load_signer(out)
    assert "encrypted" in exc.value.message and PASSPHRASE_ENV in (exc.value.hint or "")
    with pytest.raises(KeyFileError) as exc:
        load_signer(out, passphrase=b"wrong")
    assert "wrong passphrase" in exc.value.message
    assert load_signer(out, passphrase=b"correct horse").public_key == pub
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    assert load_signer(out).public_key == pub


def test_refuses_to_overwrite_an_existing_key(tmp_path: Path) -> None:
    out = tmp_path / "k"
    generate_keypair(out, comment="first", passphrase=None)
    before = out.read_bytes(), (tmp_path / "k.pub").read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(out, comment="second", passphrase=None)
    assert (out.read_bytes(), (tmp_path / "k.pub").read_bytes()) == before


def test_refuses_when_only_the_pub_file_exists(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text(KNOWN_LINE + "\n")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(tmp_path / "k", comment="x", passphrase=None)
    assert not (tmp_path / "k").exists()


def test_rejects_empty_passphrase(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="empty"):
        generate_keypair(tmp_path / "k", comment="x", passphrase=b"")
    assert not (tmp_path / "k").exists()


def test_loads_pkcs8_pem_keys_plain_and_encrypted(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    expected = Ed25519Signer(key).public_key.blob
    plain = tmp_path / "plain.pem"
    plain.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    sealed = tmp_path / "sealed.pem"
    sealed.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    assert load_signer(plain).public_key.blob == expected
    assert load_signer(sealed, passphrase=b"pw").public_key.blob == expected
    with pytest.raises(KeyFileError, match="cannot read"):
        load_signer(sealed, passphrase=b"nope")


def test_rejects_non_ed25519_private_key(tmp_path: Path) -> None:
    path = tmp_path / "id_rsa"
    path.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="Ed25519 keys only"):
        load_signer(path)


def test_missing_key_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as exc:
        load_signer(tmp_path / "absent")
    assert "absent" in exc.value.message and "agent:SHA256:" in (exc.value.hint or "")


def test_pub_file_without_agent_explains_ssh_auth_sock(tmp_path: Path) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text(KNOWN_LINE + "\n")
    with pytest.raises(KeyFileError, match="SSH_AUTH_SOCK"):
        load_signer(pub)


class FakeAgent:
    """An in-process ssh-agent holding Ed25519 keys, speaking the real wire protocol."""

    def __init__(self, path: Path, keys: list[Ed25519PrivateKey], *, refuse: bool = False):
        self.signers = [Ed25519Signer(k, comment=f"key{i}") for i, k in enumerate(keys)]
        self.refuse = refuse
        self.requests: list[int] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                length = int.from_bytes(conn.recv(4), "big")
                body = b""
                while len(body) < length:
                    body += conn.recv(length - len(body))
                conn.sendall(self._answer(Reader(body)))

    def _answer(self, req: Reader) -> bytes:
        kind = req.byte()
        self.requests.append(kind)
        if kind == 11:
            out = bytes([12]) + uint32(len(self.signers))
            for s in self.signers:
                out += string(s.public_key.blob) + string(s.public_key.comment.encode())
        elif kind == 13 and not self.refuse:
            blob, data = req.string(), req.string()
            signer = next(s for s in self.signers if s.public_key.blob == blob)
            out = bytes([14]) + string(signer.sign_data(data))
        else:
            out = bytes([5])
        return uint32(len(out)) + out

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def agent_keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()]


@pytest.fixture
def fake_agent(tmp_path: Path, agent_keys, monkeypatch) -> Iterator[FakeAgent]:
    sock = tmp_path / "agent.sock"
    agent = FakeAgent(sock, agent_keys)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
    yield agent
    agent.close()


def test_agent_signer_signs_with_the_chosen_key(fake_agent: FakeAgent) -> None:
    wanted = fake_agent.signers[1].public_key
    signer = load_signer("agent:" + wanted.fingerprint)
    assert isinstance(signer, AgentSigner)
    assert signer.public_key.blob == wanted.blob
    assert signer.sign_data(b"hello") == fake_agent.signers[1].sign_data(b"hello")
    assert fake_agent.requests == [11, 13]


def test_pub_file_selects_the_agent_key(fake_agent: FakeAgent, tmp_path: Path) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text(fake_agent.signers[0].public_key.openssh() + "\n")
    signer = load_signer(pub)
    assert signer.sign_data(b"x") == fake_agent.signers[0].sign_data(b"x")


def test_agent_without_the_key_lists_what_it_holds(fake_agent: FakeAgent) -> None:
    with pytest.raises(KeyFileError) as exc:
        load_signer("agent:" + KNOWN_FINGERPRINT)
    assert KNOWN_FINGERPRINT in exc.value.message
    for s in fake_agent.signers:
        assert s.public_key.fingerprint in exc.value.message
    assert "ssh-add" in (exc.value.hint or "")


def test_agent_refusal_is_a_key_error(fake_agent: FakeAgent) -> None:
    signer = agent_signer(fake_agent.signers[0].public_key.fingerprint)
    fake_agent.refuse = True
    with pytest.raises(KeyFileError, match="refused signing"):
        signer.sign_data(b"x")


def test_dead_agent_socket_is_a_key_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot talk to the ssh-agent"):
        AgentClient(str(tmp_path / "nothing.sock")).identities()


def test_write_is_atomic_no_temp_files_left(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k", comment="x", passphrase=b"pw")
    assert sorted(os.listdir(tmp_path)) == ["k", "k.pub"]


class _Tty:
    def isatty(self) -> bool:
        return True


def test_encrypted_key_prompts_on_a_terminal(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "k"
    pub = generate_keypair(out, comment="c", passphrase=b"typed")
    prompts: list[str] = []
    monkeypatch.setattr("sys.stdin", _Tty())
    monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or "typed")
    assert load_signer(out).public_key == pub
    assert prompts == [f"Passphrase for {out}: "]


def test_unencrypted_key_never_asks_for_a_passphrase(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "k"
    generate_keypair(out, comment="c", passphrase=None)
    monkeypatch.setattr("sys.stdin", _Tty())
    monkeypatch.setattr("getpass.getpass", lambda prompt: pytest.fail("asked: " + prompt))
    load_signer(out)
