"""Interop with stock OpenSSH: ssh-keygen verifies ours, we verify its, keys cross both ways."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bundler.cli.main import main
from bundler.errors import KeyFileError, SignatureError, TrustError
from bundler.ssh.keys import (
    PASSPHRASE_ENV,
    PublicKey,
    fingerprint_line,
    generate_keypair,
    load_signer,
)
from bundler.ssh.sig import ARCHIVE_NAMESPACE, MANIFEST_NAMESPACE, parse, sign, verify
from bundler.ssh.trust import (
    TrustPolicy,
    evaluate,
    load_policy,
    parse_allowed_signers,
    parse_revoked,
)

MESSAGE = b'{"format":"airlock-bundle","name":"demo","version":"1.0.0"}'


def ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    assert found, "ssh-keygen is missing: run bash .ci/setup (installs openssh-client)"
    return found


def run(
    *args: str, stdin: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [ssh_keygen(), *args], input=stdin, capture_output=True, check=check, timeout=60
    )


@pytest.fixture(autouse=True)
def _no_passphrase_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)


def stock_key(tmp_path: Path, name: str, *, passphrase: str = "", comment: str = "") -> Path:
    path = tmp_path / name
    run("-q", "-t", "ed25519", "-N", passphrase, "-C", comment or name, "-f", str(path))
    return path


def stock_verify(
    tmp_path: Path,
    pub: PublicKey,
    sig: bytes,
    message: bytes,
    *,
    namespace: str = MANIFEST_NAMESPACE,
    options: str = "",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[bytes]:
    allowed = tmp_path / "allowed_signers_stock"
    allowed.write_text(f"release@example.org {options + ' ' if options else ''}{pub.openssh()}\n")
    sig_path = tmp_path / "stock.sig"
    sig_path.write_bytes(sig)
    return run(
        "-Y", "verify", "-f", str(allowed), "-I", "release@example.org", "-n", namespace,
        "-s", str(sig_path), *extra, stdin=message, check=False,
    )  # fmt: skip


def stock_sign(
    tmp_path: Path, key: Path, message: bytes, *, namespace: str, hashalg: str = ""
) -> bytes:
    msg = tmp_path / "msg"
    msg.write_bytes(message)
    # ssh-keygen asks before overwriting msg.sig, and exits 0 having kept the old one
    (tmp_path / "msg.sig").unlink(missing_ok=True)
    args = ["-Y", "sign", "-f", str(key), "-n", namespace]
    if hashalg:
        args += ["-O", f"hashalg={hashalg}"]
    run(*args, str(msg))
    return (tmp_path / "msg.sig").read_bytes()


def test_stock_ssh_keygen_verifies_our_signature(tmp_path: Path) -> None:
    out = tmp_path / "ours"
    generate_keypair(out, comment="release", passphrase=None)
    signer = load_signer(out)
    sig = sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)
    ok = stock_verify(tmp_path, signer.public_key, sig, MESSAGE)
    assert ok.returncode == 0, ok.stderr
    assert b'Good "airlock-manifest-v1" signature for release@example.org' in ok.stdout
    tampered = stock_verify(tmp_path, signer.public_key, sig, MESSAGE + b"x")
    assert tampered.returncode != 0


def test_we_verify_stock_ssh_keygen_signatures(tmp_path: Path) -> None:
    key = stock_key(tmp_path, "stock")
    pub = PublicKey.parse((tmp_path / "stock.pub").read_text())
    for hashalg in ("", "sha256", "sha512"):
        sig = stock_sign(tmp_path, key, MESSAGE, namespace=ARCHIVE_NAMESPACE, hashalg=hashalg)
        assert parse(sig).hash_algorithm == (hashalg or "sha512")
        assert verify(MESSAGE, sig, namespace=ARCHIVE_NAMESPACE).blob == pub.blob
        with pytest.raises(SignatureError):
            verify(MESSAGE + b"x", sig, namespace=ARCHIVE_NAMESPACE)
        with pytest.raises(SignatureError):
            verify(MESSAGE, sig, namespace=MANIFEST_NAMESPACE)


def test_signatures_are_byte_identical_to_ssh_keygen(tmp_path: Path) -> None:
    key = stock_key(tmp_path, "stock")
    for message in (b"", MESSAGE, os.urandom(3 * 1024 * 1024)):
        ours = sign(message, load_signer(key), namespace=MANIFEST_NAMESPACE)
        assert ours == stock_sign(tmp_path, key, message, namespace=MANIFEST_NAMESPACE)


def test_encrypted_stock_key_loads_with_passphrase_and_fails_clearly_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = stock_key(tmp_path, "locked", passphrase="s3cret pass")
    expected = PublicKey.parse((tmp_path / "locked.pub").read_text())
    monkeypatch.setattr("sys.stdin", None)
    with pytest.raises(KeyFileError) as exc:
        load_signer(key)
    assert "encrypted and no passphrase" in exc.value.message
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_signer(key, passphrase=b"guess")
    signer = load_signer(key, passphrase=b"s3cret pass")
    assert signer.public_key == expected  # comment too, read from the decrypted key
    monkeypatch.setenv(PASSPHRASE_ENV, "s3cret pass")
    sig = sign(MESSAGE, load_signer(key), namespace=MANIFEST_NAMESPACE)
    assert stock_verify(tmp_path, expected, sig, MESSAGE).returncode == 0


@pytest.mark.parametrize(
    "cipher",
    [
        "aes256-ctr",
        "aes128-ctr",
        "aes256-cbc",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
    ],
)
def test_every_ssh_keygen_key_cipher_loads(tmp_path: Path, cipher: str) -> None:
    key = tmp_path / "k"
    run("-q", "-t", "ed25519", "-Z", cipher, "-N", "pass", "-C", cipher, "-f", str(key))
    expected = PublicKey.parse((tmp_path / "k.pub").read_text())
    assert load_signer(key, passphrase=b"pass").public_key == expected
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_signer(key, passphrase=b"pas")


def test_stock_ssh_keygen_reads_our_encrypted_key(tmp_path: Path) -> None:
    out = tmp_path / "ours"
    pub = generate_keypair(out, comment="ops", passphrase=b"pw 1")
    derived = run("-y", "-P", "pw 1", "-f", str(out)).stdout.decode()
    assert PublicKey.parse(derived) == pub
    assert run("-y", "-P", "wrong", "-f", str(out), check=False).returncode != 0
    assert run("-l", "-f", str(out)).stdout.decode().split()[2] == "ops"


@pytest.mark.parametrize("comment", ["release key 2026", ""])
def test_fingerprint_line_equals_ssh_keygen_l(tmp_path: Path, comment: str) -> None:
    key = tmp_path / "k"
    run("-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key))
    pub = PublicKey.parse((tmp_path / "k.pub").read_text())
    expected = run("-l", "-f", str(tmp_path / "k.pub")).stdout.decode().rstrip("\n")
    assert fingerprint_line(pub) == expected


@pytest.mark.parametrize("comment", ["release@build", ""])
def test_keygen_command_prints_what_ssh_keygen_l_prints(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, comment: str
) -> None:
    out = tmp_path / "signing"
    monkeypatch.setenv(PASSPHRASE_ENV, "pw")
    assert main(["keygen", "--out", str(out), "--comment", comment]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == run("-l", "-f", str(out)).stdout.decode().strip()
    assert run("-y", "-P", "pw", "-f", str(out)).returncode == 0


def test_keygen_command_refuses_without_passphrase_source(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", None)
    assert main(["keygen", "--out", str(tmp_path / "k")]) == KeyFileError.exit_code
    assert "--no-passphrase" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()
    assert main(["keygen", "--out", str(tmp_path / "k"), "--no-passphrase", "--json"]) == 0
    assert '"encrypted": false' in capsys.readouterr().out
    assert run("-y", "-P", "", "-f", str(tmp_path / "k")).returncode == 0
    assert main(["keygen", "--out", str(tmp_path / "k"), "--no-passphrase"]) == 4


# Each policy line is judged by stock ssh-keygen and by airlock.trust at the same time: they
# must agree, or a transfer station and the controller would disagree about one bundle.
VERIFY_TIME = datetime(2026, 6, 15, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "options, accepted",
    [
        ("", True),
        ('namespaces="airlock-manifest-v1"', True),
        ('namespaces="git,airlock-*"', True),
        ('namespaces="airlock-archive-v1"', False),
        ('namespaces="airlock-*,!airlock-manifest-*"', False),
        ('valid-after="20260101Z"', True),
        ('valid-after="20260615120001Z"', False),
        ('valid-before="20260615120000Z"', True),
        ('valid-before="202606151159Z"', False),
        ('valid-after="20260101Z",valid-before="20270101Z"', True),
        ("cert-authority", False),
    ],
)
def test_trust_agrees_with_stock_verify_on_options(
    tmp_path: Path, options: str, accepted: bool
) -> None:
    out = tmp_path / "k"
    generate_keypair(out, comment="k", passphrase=None)
    signer = load_signer(out)
    sig = sign(MESSAGE, signer, namespace=MANIFEST_NAMESPACE)
    stamp = VERIFY_TIME.strftime("%Y%m%d%H%M%SZ")
    stock = stock_verify(
        tmp_path, signer.public_key, sig, MESSAGE, options=options,
        extra=("-O", f"verify-time={stamp}"),
    )  # fmt: skip
    assert (stock.returncode == 0) is accepted, stock.stderr
    text = (tmp_path / "allowed_signers_stock").read_text()
    policy = TrustPolicy(parse_allowed_signers(text))
    if accepted:
        decision = evaluate(
            policy, MESSAGE, [("k.sig", sig)], namespace=MANIFEST_NAMESPACE, now=VERIFY_TIME
        )
        assert decision.accepted[0].principals == ("release@example.org",)
    else:
        with pytest.raises(TrustError):
            evaluate(
                policy, MESSAGE, [("k.sig", sig)], namespace=MANIFEST_NAMESPACE, now=VERIFY_TIME
            )


def test_revoked_list_means_the_same_to_stock_verify(tmp_path: Path) -> None:
    out = tmp_path / "k"
    pub = generate_keypair(out, comment="k", passphrase=None)
    sig = sign(MESSAGE, load_signer(out), namespace=MANIFEST_NAMESPACE)
    revoked = tmp_path / "revoked_keys"
    revoked.write_text(pub.openssh() + "\n")
    stock = stock_verify(tmp_path, pub, sig, MESSAGE, extra=("-r", str(revoked)))
    assert stock.returncode != 0
    assert stock_verify(tmp_path, pub, sig, MESSAGE).returncode == 0
    signers = parse_allowed_signers((tmp_path / "allowed_signers_stock").read_text())
    policy = TrustPolicy(signers, revoked=parse_revoked(revoked.read_text()))
    with pytest.raises(TrustError, match="0 of the required 1") as exc:
        evaluate(policy, MESSAGE, [("k.sig", sig)], namespace=MANIFEST_NAMESPACE, now=VERIFY_TIME)
    assert exc.value.problems == (f"k.sig: key {pub.fingerprint} is revoked",)
    with pytest.raises(TrustError, match="lists only 0 usable key"):
        load_policy(tmp_path / "allowed_signers_stock", revoked=revoked)


def test_binary_krl_from_ssh_keygen_is_refused_clearly(tmp_path: Path) -> None:
    out = tmp_path / "k"
    generate_keypair(out, comment="k", passphrase=None)
    krl = tmp_path / "revoked.krl"
    run("-k", "-f", str(krl), str(tmp_path / "k.pub"))
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("x " + (tmp_path / "k.pub").read_text())
    with pytest.raises(TrustError, match="binary OpenSSH KRL"):
        load_policy(allowed, revoked=krl)
