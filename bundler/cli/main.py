"""The ``airlock`` command line: a parser and one small function per subcommand."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from importlib.util import find_spec
from types import ModuleType

from bundler import __version__
from bundler.cli import build, bundle, evidence, keys, project
from bundler.errors import AirlockError, HostError

COMMAND_MODULES: tuple[ModuleType, ...] = (keys, bundle, build, evidence, project)
# The commands that fetch from the Hub and build. They need the ``build`` extra
# (pyproject.toml: huggingface_hub, httpx2/httpcore2 2.16, ziglang; Python 3.11+), which a
# bundle's controller wheelhouse leaves out. Every other command (verify, inspect, unpack,
# ...) runs without it, also on Python 3.10, the oldest controller Python.
BUILD_COMMANDS = ("lock", "build", "demo")
BUILD_PYTHON = (3, 11)
# The distributions of the ``build`` extra; each one's import name is its own name.
BUILD_MODULES = ("huggingface_hub", "httpx2", "httpcore2", "ziglang")
FAR_SIDE_COMMANDS = "verify, inspect, unpack and the other far-side commands"


def missing_build_modules() -> list[str]:
    """The distributions of the ``build`` extra that this Python cannot import."""
    return [name for name in BUILD_MODULES if find_spec(name) is None]


def refuse_build_here(command: str, version: tuple[int, int], missing: Sequence[str]) -> None:
    """Refuse a build-side ``command`` where it cannot run: on a Python older than
    :data:`BUILD_PYTHON`, or without the ``build`` extra (``missing`` names what is absent).

    Raises:
        HostError: naming the command, what is missing, the fix and the commands that do
            run here.
    """
    if command not in BUILD_COMMANDS:
        return
    here = ".".join(map(str, version))
    if version < BUILD_PYTHON:
        need = ".".join(map(str, BUILD_PYTHON))
        raise HostError(
            f"airlock {command} needs Python {need} or newer (this is Python {here}): its "
            f"Hub and download dependencies are not installed for Python {here}",
            hint=f"run airlock {command} on a build machine with python{need} or newer; "
            f"Python {here} runs {FAR_SIDE_COMMANDS}",
        )
    if missing:
        raise HostError(
            f"airlock {command} needs airlock's build dependencies (the build extra), which "
            f"are not installed here: missing {', '.join(missing)}",
            hint="on a build machine install airlock with the build extra: "
            "pip install 'airlock[build]' (from a source checkout: bash .ci/setup-demo); "
            f"this installation runs {FAR_SIDE_COMMANDS}",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airlock",
        description="Build, sign, verify and install offline LLM appliance bundles.",
    )
    parser.add_argument("--version", action="version", version=f"airlock {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when something fails"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        version = (sys.version_info.major, sys.version_info.minor)
        refuse_build_here(args.command, version, missing_build_modules())
        result: int = args.func(args)
        return result
    except AirlockError as e:
        if args.debug:
            traceback.print_exc()
        print(e.render(), file=sys.stderr)
        if getattr(args, "json", False):
            # Scripts asked for JSON: they get the failure as JSON too, same shape as the
            # far-side tools (python3 -m runtime.unpack/selection --json).
            json.dump(
                {
                    "error": e.message,
                    "problems": list(e.problems),
                    "hint": e.hint,
                    "exit_code": e.exit_code,
                },
                sys.stdout,
                indent=2,
                sort_keys=True,
            )
            sys.stdout.write("\n")
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was left half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
