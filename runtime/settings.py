"""A release's server settings file (/etc/airlock/releases/<version>.env): KEY=VALUE lines."""

from __future__ import annotations

import shlex
from typing import Dict, Optional

from runtime.errors import InstallError


def parse_env_file(text: str) -> Dict[str, str]:
    """KEY=VALUE lines (values shell-quoted as systemd's EnvironmentFile= accepts them)."""
    env: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.replace("_", "").isalnum():
            raise InstallError(
                f"line {number} of the server settings is not KEY=VALUE: {line!r}",
                hint="rerun install.yml to render the settings from templates/server.env.j2",
            )
        parts = shlex.split(value) if value else [""]
        env[key] = " ".join(parts)
    return env


def settings_value(env_file: str, key: str) -> Optional[str]:
    with open(env_file, encoding="utf-8") as f:
        return parse_env_file(f.read()).get(key)
