"""The airlock exception root and the failure kinds shared by both sides of the gap.

This module lives in ``runtime/`` because target hosts run it with the standard library
only; ``bundler.errors`` re-exports everything here and adds the connected-side kinds, so
there is exactly one root, :class:`AirlockError`.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from runtime.text import printable


class AirlockError(Exception):
    """Root of every error airlock reports to a user.

    ``message`` says what failed, ``hint`` how to fix it, ``problems`` lists every
    individual finding when a verifier collected several before raising.
    """

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        hint: Optional[str] = None,
        problems: Optional[Iterable[str]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.problems: Sequence[str] = tuple(problems or ())

    def report(self) -> Dict[str, object]:
        """The failure as a runtime command prints it on stdout: the playbooks read stdout as
        JSON even when the command fails (the human text, :meth:`render`, goes to stderr)."""
        return {
            "failed": True,
            "error": self.message,
            "problems": list(self.problems),
            "hint": self.hint,
            "exit_code": self.exit_code,
        }

    def render(self) -> str:
        """The full user-facing text: message, every problem, and the fix.

        Messages quote names and values from untrusted input (bundles, member names): every
        control or invisible character in them is shown as an escape, never sent raw to the
        terminal (runtime.text.printable).
        """
        lines = ["error: " + self.message]
        lines.extend("  - " + p for p in self.problems)
        if self.hint:
            lines.append("hint: " + self.hint)
        return "\n".join(printable(line, keep_newlines=True) for line in lines)


def json_command(run: Callable[[], Dict[str, Any]]) -> int:
    """Run a host-side command whose caller (a playbook) reads stdout as JSON: the result,
    or on failure :meth:`AirlockError.report` with the human text on stderr. The exit code."""
    try:
        result = run()
    except AirlockError as e:
        print(json.dumps(e.report(), sort_keys=True))
        print(e.render(), file=sys.stderr)
        return e.exit_code
    print(json.dumps(result, sort_keys=True))
    return 0


class UsageError(AirlockError):
    """A command was called with arguments that cannot work together."""

    exit_code = 2


class IntegrityError(AirlockError):
    """Bytes do not match the digest or size that was signed."""

    exit_code = 20


class ArchiveFormatError(AirlockError):
    """An archive member or metadata is malformed or of a kind airlock never accepts."""

    exit_code = 21


class RollbackError(AirlockError):
    """The bundle's sequence is below the floor already installed (a rollback attack)."""

    exit_code = 13


class HostError(AirlockError):
    """A target host cannot run the bundle (hardware, memory, disk, Python)."""

    exit_code = 50


class HostLibraryError(HostError):
    """A target host's glibc (or libstdc++) is older than the bundle's engine needs."""

    exit_code = 51


class InstallError(AirlockError):
    """Installing, switching or rolling back a release failed on a host."""

    exit_code = 60
