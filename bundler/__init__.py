"""airlock: signed, offline appliance bundles for local LLM serving."""

from __future__ import annotations

from pathlib import Path


def _read_version() -> str:
    source = Path(__file__).resolve().parent.parent / "VERSION"
    if source.is_file():
        # A checkout (editable or not) always reports what VERSION says.
        return source.read_text(encoding="utf-8").strip()
    # Installed: ask the package metadata (imported only here: it costs 40 ms at startup).
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return "0+unknown"
    try:
        return version("airlock")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _read_version()
