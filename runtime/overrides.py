"""Operator overrides of the runtime decision (all checked at once) and the bundle defaults."""

from __future__ import annotations

from typing import Any, Dict, Optional

from runtime.errors import UsageError

OVERRIDE_KEYS = (
    "backend",
    "ctx_size",
    "parallel",
    "threads",
    "gpu_layers",
    "host",
    "port",
    "model",
    "api_key_file",
)


def check_overrides(ov: Dict[str, Any]) -> Dict[str, Any]:
    """The overrides that apply, integers as int; "auto" and None dropped. Raises
    UsageError listing every invalid one."""
    problems = []
    out: Dict[str, Any] = {}
    for key, value in ov.items():
        if value is None:
            continue
        if key not in OVERRIDE_KEYS:
            problems.append(
                "unknown override {!r} (known: {})".format(key, ", ".join(OVERRIDE_KEYS))
            )
        elif key == "backend":
            if value not in ("auto", "cpu", "cuda"):
                problems.append(f"backend must be auto, cpu or cuda, not {value!r}")
            elif value != "auto":
                out[key] = value
        elif key in ("host", "model", "api_key_file"):
            out[key] = str(value)
        else:
            if isinstance(value, str) and value == "auto":
                continue
            try:
                n = int(value)
            except (TypeError, ValueError):
                n = -1
            if isinstance(value, bool) or n < (0 if key == "gpu_layers" else 1):
                problems.append(f"{key} must be a positive integer or 'auto', not {value!r}")
            else:
                out[key] = n
    if problems:
        raise UsageError(
            "invalid runtime overrides",
            problems=problems,
            hint="fix airlock_server_overrides (or --overrides)",
        )
    return out


def fixed_value(ov: Dict[str, Any], defaults: Dict[str, Any], key: str) -> Optional[int]:
    """A fixed value for ``key``: the operator's override, else the bundle's integer default."""
    if ov.get(key) is not None:
        return int(ov[key])
    value = defaults.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
