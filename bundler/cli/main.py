"""The ``airlock`` command line: a parser and one small function per subcommand."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from bundler import __version__
from bundler.cli import build, bundle, evidence, keys, project
from bundler.errors import AirlockError, HostError

COMMAND_MODULES: tuple[ModuleType, ...] = (keys, bundle, build, evidence, project)
# The commands that fetch from the Hub and build (huggingface_hub, httpx2/httpcore2 2.16:
# Python 3.11+, marked so in pyproject.toml). Every other command (verify, inspect,
# unpack, ...) also runs on Python 3.10, the oldest controller Python.
BUILD_COMMANDS = ("lock", "build", "demo")
BUILD_PYTHON = (3, 11)


def refuse_old_python(command: str, version: tuple[int, int]) -> None:
    """Refuse a build-side ``command`` on a Python older than :data:`BUILD_PYTHON`.

    Raises:
        HostError: naming the command, both Pythons and the commands that do run here.
    """
    if command in BUILD_COMMANDS and version < BUILD_PYTHON:
        need = ".".join(map(str, BUILD_PYTHON))
        here = ".".join(map(str, version))
        raise HostError(
            f"airlock {command} needs Python {need} or newer (this is Python {here}): its "
            f"Hub and download dependencies are not installed for Python {here}",
            hint=f"run airlock {command} on a build machine with python{need} or newer; "
            f"Python {here} runs verify, inspect, unpack and the other far-side commands",
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
        refuse_old_python(args.command, (sys.version_info.major, sys.version_info.minor))
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
