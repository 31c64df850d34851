"""Subcommand groups. Each module has ``register(subparsers)`` and owns its subcommands."""

from __future__ import annotations

from types import ModuleType

from bundler.commands import build, bundle, evidence, keys, project

COMMAND_MODULES: tuple[ModuleType, ...] = (keys, bundle, build, evidence, project)
