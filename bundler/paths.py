"""Where airlock's shipped trees live, and the rule for a relative path that stays inside."""

from __future__ import annotations

from pathlib import Path

# The directories that travel inside every bundle for the far side (runtime/ runs on the
# hosts, playbooks/ and templates/ on the Ansible controller, docs/ for the people there).
FAR_SIDE_DIRS = ("runtime", "playbooks", "templates", "docs")


def repo_root() -> Path:
    """The airlock source tree: ``bundler/`` and the far-side trees beside it (pyproject.toml)."""
    return Path(__file__).resolve().parent.parent


def templates_dir() -> Path:
    """The repository's ``templates/`` directory (shipped beside the packages)."""
    return repo_root() / "templates"


def safe_relpath(path: str) -> bool:
    """A repository path that stays inside its model directory: relative, no ``..``. Pure."""
    parts = path.split("/")
    return (
        bool(path)
        and not path.startswith("/")
        and "\\" not in path
        and "\0" not in path
        and all(p not in ("", ".", "..") for p in parts)
    )
