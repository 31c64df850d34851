"""install.yml's controller play alone: the trust options the role passes to ``airlock verify``.

No host is needed: the inventory's host group is empty, so only the controller play runs
(the real ansible-playbook, the real ``airlock verify``, a real signed bundle).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bundler.bundle.pack import pack
from bundler.ssh.keys import load_signer

from .playbook_support import BIN, REPO, make_signer


def _cosigned_bundle(work: Path) -> tuple[Path, Path]:
    """A bundle signed by the site's key and by a key the site does not list."""
    site = make_signer(work / "keys", "release")
    other = make_signer(work / "other", "othersite")
    stage = work / "stage"
    shutil.copytree(REPO / "runtime", stage / "runtime", ignore=shutil.ignore_patterns("__py*"))
    result = pack(
        stage,
        name="demo",
        version="1.0.0",
        sequence=1,
        expires=datetime.now(timezone.utc) + timedelta(days=30),
        components={},
        signers=[load_signer(site.key), load_signer(other.key)],
        out_dir=work / "out",
    )
    return Path(result.path), site.allowed_signers


def _install(
    work: Path, bundle: Path, allowed: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    inventory = work / "inventory.ini"
    inventory.write_text("[airlock_hosts]\n")
    argv = [
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(REPO / "playbooks/install.yml"),
    ]
    argv += ["-e", f"airlock_bundle={bundle}", "-e", f"airlock_allowed_signers={allowed}"]
    argv += ["-e", "airlock_threshold=1", "-e", f"airlock_cli={BIN / 'airlock'}"]
    argv += ["-e", f"airlock_controller_workdir={work / 'ctl'}", *extra]
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "playbooks/ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["ANSIBLE_LOCAL_TEMP"] = str(work / "ansible-local")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)


def test_unknown_signer_refuses_unless_airlock_allow_unknown_signers(tmp_path: Path) -> None:
    bundle, allowed = _cosigned_bundle(tmp_path)
    refused = _install(tmp_path, bundle, allowed)
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0, out[-3000:]
    assert "REFUSED by the trust policy (exit 11)" in out, out[-3000:]
    accepted = _install(tmp_path, bundle, allowed, "-e", "airlock_allow_unknown_signers=true")
    out = accepted.stdout + accepted.stderr
    assert accepted.returncode == 0, out[-3000:]
    assert "verified against" in out and "threshold 1" in out


def test_a_controller_without_the_airlock_command_is_told_so_not_refused(tmp_path: Path) -> None:
    """A missing CLI makes the command module answer rc 2 (ENOENT): that is a setup problem
    on the controller, and the message must say so rather than blame the bundle."""
    bundle, allowed = _cosigned_bundle(tmp_path)
    missing = tmp_path / "no-venv" / "bin" / "airlock"
    run = _install(tmp_path, bundle, allowed, "-e", f"airlock_cli={missing}")
    out = " ".join((run.stdout + run.stderr).split())  # the callback wraps long messages
    assert run.returncode != 0, out[-3000:]
    assert f"Could not run the airlock command {missing} on the controller" in out, out[-3000:]
    assert "Is it installed and executable?" in out, out[-3000:]
    assert "REFUSED" not in out, out[-3000:]
