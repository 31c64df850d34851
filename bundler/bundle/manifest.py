"""The bundle manifest: records, canonical JSON bytes (signed as-is), and strict parsing."""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from bundler import __version__
from bundler.errors import UsageError
from runtime.bundle import (
    BUNDLE_COMPONENT,
    FORMAT_NAME,
    MAX_MANIFEST_BYTES,
    SCHEMA_VERSION,
    component_of,
    manifest_problems,
    parse_manifest,
    parse_time,
    path_problem,
)

__all__ = [
    "Builder",
    "Component",
    "FileEntry",
    "Manifest",
    "canonical_json",
    "check_expiry_after_now",
    "check_path",
    "component_of",
    "expiry_from_text",
    "format_time",
    "parse",
    "parse_expires",
    "parse_time",
]

_MODES = ("0644", "0755")


@dataclass(frozen=True)
class FileEntry:
    """One payload file: where it unpacks, its size and sha256, its mode, its component."""

    path: str
    size: int
    sha256: str
    mode: str = "0644"
    component: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "mode": self.mode,
            "component": self.component or component_of(self.path),
        }


@dataclass(frozen=True)
class Component:
    """A component's type (model, runtime: the engine, wheelhouse, code, evidence, files)."""

    type: str
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Builder:
    """Which airlock, Python and platform wrote the bundle."""

    airlock: str
    python: str
    platform: str

    @classmethod
    def current(cls) -> Builder:
        return cls(
            airlock=__version__,
            python=platform.python_version(),
            platform=f"{platform.system()}-{platform.machine()}",
        )


@dataclass(frozen=True)
class Manifest:
    """Everything a signature covers. ``to_bytes()`` is computed once and shipped as-is."""

    name: str
    version: str
    sequence: int
    created: datetime
    expires: datetime
    builder: Builder
    components: Mapping[str, Component]
    files: Sequence[FileEntry]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "version": self.version,
            "sequence": self.sequence,
            "created": format_time(self.created),
            "expires": format_time(self.expires),
            "builder": {
                "airlock": self.builder.airlock,
                "python": self.builder.python,
                "platform": self.builder.platform,
            },
            "components": {
                name: {"type": c.type, "properties": dict(c.properties)}
                for name, c in self.components.items()
            },
            "files": [f.to_dict() for f in sorted(self.files, key=_path_key)],
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON; raises UsageError when the manifest would be invalid."""
        data = canonical_json(self.to_dict())
        problems = manifest_problems(json.loads(data))
        if self.expires <= self.created:
            problems.append("manifest: expires must be after created")
        if problems:
            raise UsageError(
                f"the manifest for {self.name} {self.version} would be invalid",
                problems=problems,
                hint="fix the staged files or the component properties named above",
            )
        if len(data) > MAX_MANIFEST_BYTES:
            raise UsageError(
                f"the manifest would be {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit",
                hint="bundle fewer, larger files (e.g. a wheelhouse archive per target)",
            )
        return data


def _path_key(entry: FileEntry) -> bytes:
    return entry.path.encode("utf-8")


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8; refuses floats and non-JSON types."""
    _reject_floats(obj, "$")
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def _reject_floats(obj: Any, where: str) -> None:
    if isinstance(obj, float):
        raise UsageError(
            f"{where} is a floating-point number; manifests hold integers and strings only",
            hint="store it as an integer (e.g. bytes, milli-units) or a string",
        )
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise UsageError(f"{where} has a non-string key {key!r}")
            _reject_floats(value, f"{where}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _reject_floats(value, f"{where}[{i}]")


def check_path(path: str) -> None:
    """Raise UsageError when ``path`` breaks the bundle path rules (docs/FORMAT.md)."""
    why = path_problem(path)
    if why is not None:
        raise UsageError(
            f"{path!r} cannot be a bundle path: {why}",
            hint="rename the staged file (relative, '/'-separated, NFC, no '..' or control chars)",
        )


def parse(data: bytes) -> dict[str, Any]:
    """Decode verified manifest bytes (never re-serialized). Raises ArchiveFormatError."""
    return parse_manifest(data)


def format_time(when: datetime) -> str:
    """RFC 3339 UTC with a ``Z``, whole seconds."""
    if when.tzinfo is None:
        raise UsageError("internal: naive datetime in a manifest time")
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_DURATION = re.compile(r"\A(\d+)([dw])\Z")


def expiry_from_text(text: str, *, now: datetime) -> Optional[datetime]:
    """The one expiry grammar (``airlock pack --expires`` and the spec's ``expires``):
    ``180d``, ``26w`` (counted from ``now``), ``2027-05-26`` or ``2027-05-26T00:00:00Z``
    (UTC). Returns an aware datetime, or None when ``text`` is none of these. Pure."""
    m = _DURATION.match(text.strip())
    if m:
        days = int(m.group(1)) * (7 if m.group(2) == "w" else 1)
        return now + timedelta(days=days)
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def parse_expires(text: str, *, now: datetime) -> datetime:
    """:func:`expiry_from_text`, raising UsageError when ``text`` cannot be read."""
    when = expiry_from_text(text, now=now)
    if when is not None:
        return when
    raise UsageError(
        f"cannot read the expiry {text!r}",
        hint="use a duration like 180d or 26w, or a date like 2027-05-26",
    )


def check_expiry_after_now(
    expires: datetime, *, created: datetime, now: datetime, fix: str
) -> None:
    """Refuse to write a bundle that is expired the moment it exists.

    ``created`` is the manifest's creation time (``SOURCE_DATE_EPOCH`` when set), from
    which a duration expiry counts; ``now`` is the real clock. A pinned clock far in the
    past makes the default ``180d`` end before today, and every verifier would refuse the
    bundle. ``fix`` names where the user sets the expiry (``--expires DATE``, ``expires:``).
    Pure. Raises UsageError naming both dates and the fix.
    """
    if expires > now:
        return
    pinned = ""
    if created < now - timedelta(minutes=5):
        pinned = (
            f"; a duration counts from the creation time {format_time(created)} "
            "(SOURCE_DATE_EPOCH), not from today"
        )
    raise UsageError(
        f"the bundle would expire at {format_time(expires)}, which is not after the "
        f"current time {format_time(now)}: every verifier would refuse it{pinned}",
        hint=f"give a date after today with {fix} (e.g. "
        f"{(now + timedelta(days=180)):%Y-%m-%d}), or build without a pinned SOURCE_DATE_EPOCH",
    )


def default_component(name: str) -> Component:
    """The component record for a directory nobody described."""
    return Component(type="bundle" if name == BUNDLE_COMPONENT else "files")
