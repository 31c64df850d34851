"""``airlock init``: a working project directory, a usable key, and never an overwrite."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from bundler.cli.main import main
from bundler.errors import KeyFileError, UsageError
from bundler.project.init import init_project, project_name, render_spec
from bundler.ssh import keys as sshkeys
from bundler.ssh import sig as sshsig
from bundler.ssh.keys import new_key_passphrase

TEMPLATE = "# The bundle's name.\nname: {{ name }}\nversion: 1.0.0  # keep me\n"


@pytest.fixture
def template_dir(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    (d / "airlock.example.yaml").write_text(TEMPLATE)
    return d


def test_writes_spec_key_and_allowed_signers(tmp_path: Path, template_dir: Path) -> None:
    project = init_project(
        tmp_path / "My Project", passphrase=None, template_dir=template_dir, name=None
    )
    assert project.spec.read_text() == (
        "# The bundle's name.\nname: my-project\nversion: 1.0.0  # keep me\n"
    )
    assert stat.S_IMODE(project.key.stat().st_mode) == 0o600
    line = project.allowed_signers.read_text()
    assert line.startswith(
        'my-project-release namespaces="airlock-manifest-v1,airlock-archive-v1" '
    )
    pub = sshkeys.PublicKey.parse(project.public_key.read_text())
    assert pub.fingerprint == project.fingerprint


def test_new_key_signs_what_stock_ssh_keygen_accepts(tmp_path: Path, template_dir: Path) -> None:
    project = init_project(tmp_path / "p", passphrase=b"s3cret", template_dir=template_dir)
    signer = sshkeys.load_signer(project.key, passphrase=b"s3cret")
    message = b'{"name":"p"}'
    sig = tmp_path / "m.sig"
    sig.write_bytes(sshsig.sign(message, signer, namespace=sshsig.MANIFEST_NAMESPACE))
    result = subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(project.allowed_signers), "-I",
         project.principal, "-n", sshsig.MANIFEST_NAMESPACE, "-s", str(sig)],
        input=message, capture_output=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_encrypted_key_needs_its_passphrase(tmp_path: Path, template_dir: Path) -> None:
    project = init_project(tmp_path / "p", passphrase=b"s3cret", template_dir=template_dir)
    with pytest.raises(KeyFileError):
        sshkeys.load_signer(project.key, passphrase=b"wrong")


def test_refuses_to_overwrite_an_existing_project(tmp_path: Path, template_dir: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    (d / "airlock.yaml").write_text("mine\n")
    with pytest.raises(UsageError) as exc:
        init_project(d, passphrase=None, template_dir=template_dir)
    assert f"{d / 'airlock.yaml'} exists" in exc.value.problems
    assert (d / "airlock.yaml").read_text() == "mine\n"
    assert sorted(os.listdir(d)) == ["airlock.yaml"]


def test_rejects_a_name_the_spec_would_reject(tmp_path: Path, template_dir: Path) -> None:
    with pytest.raises(UsageError):
        init_project(tmp_path / "p", name="Bad Name!", passphrase=None, template_dir=template_dir)
    assert not (tmp_path / "p").exists()


def test_render_replaces_a_literal_example_name() -> None:
    assert (
        render_spec("# c\nname: example  # why\nname: other\n", name="x")
        == "# c\nname: x  # why\nname: other\n"
    )


def test_project_name_is_spec_safe(tmp_path: Path) -> None:
    assert project_name(tmp_path / "Air Gap__Prod") == "air-gap__prod"


def test_passphrase_comes_from_env_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRLOCK_KEY_PASSPHRASE", "from-env")
    assert new_key_passphrase("k", prompt=lambda _: pytest.fail("prompted")) == b"from-env"


def test_prompted_passphrases_must_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRLOCK_KEY_PASSPHRASE", raising=False)
    answers = iter(["one", "two"])
    with pytest.raises(KeyFileError, match="differ"):
        new_key_passphrase("k", prompt=lambda _: next(answers))


def test_empty_passphrase_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRLOCK_KEY_PASSPHRASE", "")
    with pytest.raises(KeyFileError, match="set but empty"):
        new_key_passphrase("k", prompt=lambda _: pytest.fail("prompted"))


def test_cli_init_uses_the_shipped_example_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "proj"
    assert main(["init", str(d), "--no-passphrase"]) == 0
    spec = (d / "airlock.yaml").read_text()
    assert spec.startswith("# airlock.yaml")  # the commented example, comments kept
    assert yaml.safe_load(spec)["name"] == "proj"
    out = capsys.readouterr()
    assert "airlock lock" in out.out + out.err
    assert main(["init", str(d), "--no-passphrase"]) == UsageError.exit_code
