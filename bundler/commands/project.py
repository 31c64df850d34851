"""Project subcommands: init, demo."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add this group's subcommands to the ``airlock`` parser."""
    del sub


def _unused(args: argparse.Namespace) -> int:  # pragma: no cover - placeholder until filled
    del args
    return 0
