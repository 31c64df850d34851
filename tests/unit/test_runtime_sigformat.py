"""Signature members: exactly the SSHSIG armor airlock (and ssh-keygen -Y sign) writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bundler.bundle.region import signature_name
from bundler.ssh import sig as sshsig
from runtime.sigformat import signature_problem
from tests.bundlekit import make_key
from tests.fuzzkit import _with_reserved

MESSAGE = b'{"format":"airlock-bundle"}'


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory):
    return make_key(tmp_path_factory.mktemp("keys"), "alice")


def test_airlocks_own_signature_has_the_shape(key) -> None:
    sig = sshsig.sign(MESSAGE, key.signer, namespace=sshsig.MANIFEST_NAMESPACE)
    assert signature_problem(signature_name(key.signer), sig) is None


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH")
def test_a_stock_ssh_keygen_signature_has_the_shape(key, tmp_path: Path) -> None:
    msg = tmp_path / "manifest.json"
    msg.write_bytes(MESSAGE)
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-f", str(key.path), "-n", "airlock-manifest-v1", msg],
        check=True,
        capture_output=True,
    )
    sig = (tmp_path / "manifest.json.sig").read_bytes()
    assert signature_problem(signature_name(key.signer), sig) is None


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda s: s.replace(b"\n", b"\r\n"), "BEGIN/END lines"),
        (lambda s: s[:-1], "does not end with a newline"),
        (lambda s: s + b"\n", "BEGIN/END lines"),
        (lambda s: b" " + s, "BEGIN/END lines"),
        (
            lambda s: s.replace(b"\n", b"", 2).replace(b"SIGNATURE-----", b"SIGNATURE-----\n", 1),
            "wrapped",
        ),
        (lambda s: s.replace(b"AAAA", b"AA=A", 1), "base64"),
        (lambda s: _with_reserved(s, b"x"), "reserved field is not empty"),
    ],
    ids=[
        "crlf",
        "no-final-newline",
        "extra-line",
        "leading-space",
        "rewrapped",
        "base64",
        "reserved",
    ],
)
def test_any_other_shape_is_refused(key, change, why: str) -> None:
    sig = sshsig.sign(MESSAGE, key.signer, namespace=sshsig.MANIFEST_NAMESPACE)
    problem = signature_problem(signature_name(key.signer), change(sig))
    assert problem is not None and why in problem


def test_the_namespace_hash_and_member_name_are_checked(key, tmp_path: Path) -> None:
    other = sshsig.sign(MESSAGE, key.signer, namespace=sshsig.ARCHIVE_NAMESPACE)
    assert "namespace" in str(signature_problem(signature_name(key.signer), other))
    good = sshsig.sign(MESSAGE, key.signer, namespace=sshsig.MANIFEST_NAMESPACE)
    renamed = "airlock/signatures/" + "A" * 43 + ".sig"
    assert "does not match the signing key" in str(signature_problem(renamed, good))
    sha256 = sshsig.sign_digest(
        sshsig.message_digest(MESSAGE, "sha256"),
        key.signer,
        namespace=sshsig.MANIFEST_NAMESPACE,
        hash_algorithm="sha256",
    )
    assert signature_problem(signature_name(key.signer), sha256) is None
