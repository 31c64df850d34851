"""The setup split: the demo installs only what it needs, the tests install the rest on top."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import tomllib


def _array(script: Path, name: str) -> set[str]:
    text = script.read_text(encoding="utf-8")
    m = re.search(rf"^{name}=\((.*?)^\)", text, flags=re.MULTILINE | re.DOTALL)
    assert m, f"{script} lost {name}"
    return set(m.group(1).split())


def test_the_demo_runs_only_the_demo_part_and_the_tests_run_both(repo_root: Path) -> None:
    ci = repo_root / ".ci"
    demo = (ci / "demo").read_text(encoding="utf-8")
    assert "bash .ci/setup-demo" in demo and "bash .ci/setup\n" not in demo
    assert "bash .ci/setup\n" in (ci / "test").read_text(encoding="utf-8")
    assert "source .ci/setup-demo" in (ci / "setup").read_text(encoding="utf-8")


def test_demo_packages_hold_no_test_tools(repo_root: Path) -> None:
    demo = _array(repo_root / ".ci" / "setup-demo", "DEMO_APT_PACKAGES")
    test = _array(repo_root / ".ci" / "setup", "TEST_APT_PACKAGES")
    assert {"chromium", "mmdebstrap", "systemd-container"} <= test
    assert not demo & {"chromium", "mmdebstrap", "systemd-container", "git", "curl"}
    # what the demo itself runs: compilers, cmake and ninja, readelf/objdump (the glibc
    # floor audit), ssh-keygen and sshd (test host), ip and ss (netns), python3 -m venv
    assert {"build-essential", "cmake", "ninja-build", "binutils"} <= demo
    assert {"openssh-client", "openssh-server", "iproute2", "python3-venv"} <= demo
    extras = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert [r.split(">")[0] for r in extras["demo"]] == ["ansible-core"]
    test_names = {re.split(r"[<>=\[]", r)[0] for r in extras["test"]}
    assert {"pytest", "ruff", "mypy", "ansible-lint", "ansible-core"} <= test_names


def test_setup_scripts_parse(repo_root: Path) -> None:
    for name in ("setup", "setup-demo", "demo", "test", "run"):
        subprocess.run(["bash", "-n", str(repo_root / ".ci" / name)], check=True)
