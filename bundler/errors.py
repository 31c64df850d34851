"""Every error airlock reports: one root, one subclass per failure kind, one exit code each.

The exit codes are part of the command-line contract (docs/FORMAT.md, "Exit codes"):
scripts at transfer stations branch on them, so never renumber one.
"""

from __future__ import annotations

from runtime.errors import (
    AirlockError,
    ArchiveFormatError,
    HostError,
    InstallError,
    IntegrityError,
    RollbackError,
    UsageError,
)

__all__ = [
    "AirlockError",
    "ArchiveFormatError",
    "BuildError",
    "ClosureError",
    "ConvertError",
    "ExpiredError",
    "FetchError",
    "GgufError",
    "HostError",
    "InstallError",
    "IntegrityError",
    "KeyFileError",
    "RollbackError",
    "SignatureError",
    "SmokeTestError",
    "SpecError",
    "TrustError",
    "UsageError",
]


class SpecError(AirlockError):
    """The spec or lock file is invalid, or the lock does not match the spec."""

    exit_code = 3


class KeyFileError(AirlockError):
    """A key could not be read, decrypted, written or found in the agent."""

    exit_code = 4


class SignatureError(AirlockError):
    """A signature is malformed or does not verify over the manifest bytes."""

    exit_code = 10


class TrustError(AirlockError):
    """Signatures verify, but the site's trust policy is not met (unknown, revoked, too few)."""

    exit_code = 11


class ExpiredError(AirlockError):
    """The bundle's expiry has passed at the time verification started."""

    exit_code = 12


class FetchError(AirlockError):
    """A source (Hub, package index, local path) could not be fetched as pinned."""

    exit_code = 30


class BuildError(AirlockError):
    """Building the engine or the wheelhouse failed."""

    exit_code = 40


class GgufError(BuildError):
    """A model file for the llama.cpp engine is not a readable GGUF (or a split is incomplete)."""


class ConvertError(BuildError):
    """A model could not be converted (convert_hf_to_gguf.py) or quantized (llama-quantize)."""


class SmokeTestError(AirlockError):
    """The built engine could not serve the bundle's model; nothing was signed."""

    exit_code = 41


class ClosureError(AirlockError):
    """The wheelhouse cannot install offline for a target."""

    exit_code = 42
