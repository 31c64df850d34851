"""Static checks of playbooks/ and templates/: ansible-lint production, argument specs, the unit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ansible_lint_production_profile_passes() -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-lint"), "--nocolor", "--profile", "production", "playbooks/"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stderr + proc.stdout


def test_every_role_documents_every_entry_point_in_argument_specs() -> None:
    roles = sorted((REPO / "playbooks" / "roles").iterdir())
    assert roles
    for role in roles:
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
        entry_points = set(specs["argument_specs"])
        task_files = {p.stem for p in (role / "tasks").glob("*.yml")}
        # every playbook-facing entry point has its own spec
        assert {"main", "trust", "drift", "rollback", "uninstall"} <= entry_points
        assert entry_points <= task_files | {"main"}
        for entry in specs["argument_specs"].values():
            for name, option in entry["options"].items():
                assert name.startswith("airlock_"), name
                assert option.get("description") and option.get("type"), name


def _render_unit(tmp_path: Path, template: str, name: str) -> Path:
    unit = tmp_path / name
    args = f"src={REPO / 'templates' / template} dest={unit}"
    extra = [
        "airlock_install_root=/opt/airlock",
        "airlock_config_dir=/etc/airlock",
        "airlock_state_dir=/var/lib/airlock",
        "airlock_log_dir=/var/log/airlock",
        "airlock_user=airlock",
        "airlock_group=airlock",
        "airlock_python=/usr/bin/python3",
        "airlock_service_name=airlock-server",
        "airlock_front_service_name=airlock-front",
        "airlock_front_listen=0.0.0.0:8080",
    ]
    argv = [str(BIN / "ansible"), "localhost", "-c", "local", "-m", "ansible.builtin.template"]
    argv += ["-a", args]
    for e in extra:
        argv += ["-e", e]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return unit


# The slot template's instance is verified under an instance name (<port>); the front as is.
UNITS = [
    ("airlock-server@.service.j2", "airlock-server@8081.service", "ReadOnlyPaths=/opt/airlock "
     "/etc/airlock /var/lib/airlock", "--slot %i exec"),
    ("airlock-front.service.j2", "airlock-front.service", "ReadOnlyPaths=/opt/airlock "
     "/var/lib/airlock", "runtime.front serve --listen 0.0.0.0:8080 --active-file "
     "/var/lib/airlock/active-port"),
]  # fmt: skip


@pytest.mark.parametrize(("template", "name", "paths", "command"), UNITS)
def test_systemd_units_are_hardened_and_pass_systemd_analyze(
    tmp_path: Path, template: str, name: str, paths: str, command: str
) -> None:
    unit = _render_unit(tmp_path, template, name)
    text = unit.read_text()
    for directive in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        paths,
        command,
        "Restart=on-failure",
        "User=airlock",
        "CapabilityBoundingSet=\n",
    ):
        assert directive in text, directive
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert "Unknown" not in verify.stderr and "Invalid" not in verify.stderr, verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert level, security.stdout + security.stderr
    print(f"systemd-analyze security --offline {name}: {level.group(1)}")
    assert float(level.group(1)) <= 4.0, security.stdout[-3000:]
