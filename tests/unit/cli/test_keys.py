"""`airlock keygen`: passphrase sources, refusals, human and JSON output."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from bundler.cli.main import main
from bundler.ssh.keys import PASSPHRASE_ENV, PublicKey, fingerprint_line, load_signer
from bundler.ssh.sig import signature_id


class _Tty:
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)


def test_prompts_twice_and_encrypts(tmp_path: Path, monkeypatch, capsys) -> None:
    answers = iter(["horse battery", "horse battery"])
    monkeypatch.setattr("sys.stdin", _Tty())
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    out = tmp_path / "k"
    assert main(["keygen", "--out", str(out), "--comment", "ops"]) == 0
    pub = PublicKey.parse((tmp_path / "k.pub").read_text())
    assert capsys.readouterr().out == fingerprint_line(pub) + "\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert load_signer(out, passphrase=b"horse battery").public_key == pub


def test_mismatched_prompts_write_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    answers = iter(["one", "two"])
    monkeypatch.setattr("sys.stdin", _Tty())
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 4
    assert "differ" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_refuses_without_a_passphrase_source(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", None)
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 4
    err = capsys.readouterr().err
    assert PASSPHRASE_ENV in err and "--no-passphrase" in err
    assert list(tmp_path.iterdir()) == []


def test_no_passphrase_and_env_together_is_a_usage_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "x")
    assert main(["keygen", "--out", str(tmp_path / "k"), "--no-passphrase"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_refuses_existing_key_before_asking(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "k").write_text("precious")
    monkeypatch.setattr("sys.stdin", _Tty())
    monkeypatch.setattr("getpass.getpass", lambda prompt: pytest.fail("asked: " + prompt))
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 4
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "k").read_text() == "precious"


def test_json_output(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "pw")
    out = tmp_path / "k"
    assert main(["keygen", "--out", str(out), "--comment", "ci", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    pub = PublicKey.parse((tmp_path / "k.pub").read_text())
    assert data == {
        "private_key": str(out),
        "public_key_file": f"{out}.pub",
        "public_key": pub.openssh(),
        "fingerprint": pub.fingerprint,
        "fingerprint_line": fingerprint_line(pub),
        "signature_id": signature_id(pub),
        "comment": "ci",
        "encrypted": True,
    }
