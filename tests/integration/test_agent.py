"""Signing through a real ssh-agent: the private key never enters airlock's process."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.errors import KeyFileError
from bundler.ssh.keys import AgentSigner, PublicKey, generate_keypair, load_signer
from bundler.ssh.sig import MANIFEST_NAMESPACE, sign, verify

MESSAGE = b'{"format":"airlock-bundle","name":"agent-signed"}'


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: run bash .ci/setup (installs openssh-client)"
    return found


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A private ssh-agent on a socket in tmp_path; stopped by its pid afterwards."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(
        [tool("ssh-agent"), "-D", "-a", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None, "ssh-agent exited at start"
            assert time.monotonic() < deadline, "ssh-agent did not create its socket"
            time.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ssh_add(env: dict[str, str], *args: str) -> None:
    subprocess.run([tool("ssh-add"), *args], env=env, check=True, capture_output=True, timeout=30)


def test_agent_signature_verifies_with_stock_ssh_keygen(tmp_path: Path, agent) -> None:
    key = tmp_path / "k"
    pub = generate_keypair(key, comment="agent key", passphrase=None)
    ssh_add(agent, str(key))
    signer = load_signer("agent:" + pub.fingerprint)
    assert isinstance(signer, AgentSigner)
    sig = sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)
    # Ed25519 is deterministic: the agent's signature equals the one made from the file.
    assert sig == sign(MESSAGE, load_signer(key), namespace=MANIFEST_NAMESPACE)
    (tmp_path / "allowed").write_text(f"ops {pub.openssh()}\n")
    (tmp_path / "m.sig").write_bytes(sig)
    stock = subprocess.run(
        [tool("ssh-keygen"), "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", "ops",
         "-n", MANIFEST_NAMESPACE, "-s", str(tmp_path / "m.sig")],
        input=MESSAGE, capture_output=True, timeout=30,
    )  # fmt: skip
    assert stock.returncode == 0, stock.stderr


def test_pub_file_signs_through_the_agent_holding_an_encrypted_key(
    tmp_path: Path, agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "locked"
    pub = generate_keypair(key, comment="locked", passphrase=b"agent pass")
    askpass = tmp_path / "askpass"
    askpass.write_text("#!/bin/sh\necho 'agent pass'\n")
    askpass.chmod(0o700)
    ssh_add({**agent, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}, str(key))
    monkeypatch.setattr("sys.stdin", None)
    monkeypatch.delenv("AIRLOCK_KEY_PASSPHRASE", raising=False)
    with pytest.raises(KeyFileError):
        load_signer(key)  # the file itself still needs its passphrase...
    signer = load_signer(tmp_path / "locked.pub")  # ...the agent does not
    assert signer.public_key.blob == pub.blob
    sig = sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)
    assert verify(MESSAGE, sig, namespace=MANIFEST_NAMESPACE).blob == pub.blob


def test_agent_without_the_key_says_which_keys_it_holds(tmp_path: Path, agent) -> None:
    held = generate_keypair(tmp_path / "held", comment="held", passphrase=None)
    ssh_add(agent, str(tmp_path / "held"))
    absent = generate_keypair(tmp_path / "absent", comment="absent", passphrase=None)
    with pytest.raises(KeyFileError) as exc:
        load_signer(tmp_path / "absent.pub")
    assert absent.fingerprint in exc.value.message
    assert held.fingerprint in exc.value.message


def test_key_removed_from_agent_fails_signing_clearly(tmp_path: Path, agent) -> None:
    key = tmp_path / "k"
    pub = generate_keypair(key, comment="k", passphrase=None)
    ssh_add(agent, str(key))
    signer = load_signer("agent:" + pub.fingerprint)
    ssh_add(agent, "-D")
    with pytest.raises(KeyFileError, match="refused signing"):
        sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)


def test_stock_ssh_keygen_key_in_agent(tmp_path: Path, agent) -> None:
    key = tmp_path / "stock"
    subprocess.run(
        [tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "stock", "-f", str(key)],
        check=True, timeout=30,
    )  # fmt: skip
    ssh_add(agent, str(key))
    pub = PublicKey.parse((tmp_path / "stock.pub").read_text())
    listed = subprocess.run(
        [tool("ssh-add"), "-l"], env=agent, capture_output=True, check=True, timeout=30
    ).stdout.decode()
    assert pub.fingerprint in listed
    sig = sign(MESSAGE, load_signer(tmp_path / "stock.pub"), namespace=MANIFEST_NAMESPACE)
    assert verify(MESSAGE, sig, namespace=MANIFEST_NAMESPACE).blob == pub.blob
