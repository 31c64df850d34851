"""Where airlock lives on a host (:class:`Layout`) and the host's state file, state.json.

The tree itself is drawn in ``python3 -m runtime.release --help``. The state file records
the installed releases, the current one, the sequence floor (rollback protection) and the
history of switches; every reader goes through :func:`load_state`, which also refuses a
schema this code does not know.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

from runtime.errors import InstallError, UsageError
from runtime.fsio import atomic_write

STATE_SCHEMA = 1


class Layout:
    """Where airlock lives on one host."""

    def __init__(
        self,
        *,
        root: str = "/opt/airlock",
        config: str = "/etc/airlock",
        state: str = "/var/lib/airlock",
    ) -> None:
        self.root = root
        self.config = config
        self.state = state

    @property
    def releases(self) -> str:
        return os.path.join(self.root, "releases")

    @property
    def current(self) -> str:
        return os.path.join(self.root, "current")

    @property
    def state_file(self) -> str:
        return os.path.join(self.state, "state.json")

    def release_dir(self, version: str) -> str:
        if not version or "/" in version or version in (".", "..") or version.startswith("."):
            raise UsageError(
                f"release version {version!r} cannot name a directory",
                hint="bundle versions must be plain names such as 1.2.0",
            )
        return os.path.join(self.releases, version)

    def manifest_file(self, digest: str) -> str:
        return os.path.join(self.state, "manifests", digest + ".json")

    def env_file(self, version: str) -> str:
        return os.path.join(self.config, "releases", version + ".env")


def empty_state() -> Dict[str, Any]:
    """The state of a host before its first install."""
    return {"schema": STATE_SCHEMA, "current": None, "releases": {}, "floor": 0, "history": []}


def load_state(layout: Layout) -> Dict[str, Any]:
    """The host's state, or an empty one before the first install.

    Raises InstallError when the file is not JSON or has another schema (a newer airlock
    installed this host: its playbooks must manage it).
    """
    try:
        with open(layout.state_file, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return empty_state()
    except ValueError as e:
        raise InstallError(
            f"state file {layout.state_file} is not valid JSON: {e}",
            hint="restore it from backup or remove it and reinstall the release",
        ) from e
    if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
        raise InstallError(
            f"state file {layout.state_file} has an unknown schema",
            hint="this host was installed by a newer airlock; use that version's playbooks",
        )
    return data


def save_state(layout: Layout, state: Dict[str, Any]) -> None:
    """Write ``state`` atomically (sorted, indented: an operator reads it too)."""
    text = json.dumps(state, indent=2, sort_keys=True) + "\n"
    atomic_write(layout.state_file, text.encode("utf-8"), 0o644)
