"""The manifest rules both sides share: paths, strings, dates, sizes, and strict parsing.

The writer (``bundler.bundle.manifest``) checks a manifest with :func:`manifest_problems`
before signing it and every reader parses the signed bytes with :func:`parse_manifest`,
so a value is accepted on the far side exactly when the writer could have produced it,
and every accepted value is one the rest of the code can use (docs/FORMAT.md, "Manifest").
Standard library only, Python 3.8+.
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Set, Tuple

from runtime import components
from runtime.errors import ArchiveFormatError, UsageError
from runtime.tarformat import MAX_MTIME, MODES
from runtime.text import text_problem

FORMAT_NAME = "airlock-bundle"
SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
# A path must fit under any destination of up to ~1 KiB within PATH_MAX (4096 with its NUL),
# each segment within NAME_MAX (255); the depth stays far below Python's recursion limit
# (shutil.rmtree, os.walk on the hosts recurse once per directory level).
MAX_PATH_BYTES = 3072
MAX_SEGMENT_BYTES = 255
MAX_PATH_DEPTH = 128
MAX_NAME_BYTES = 128
MAX_INT = 2**63 - 1  # sizes and sequence numbers fit an off_t / int64 everywhere
MAX_DEPTH = 32  # JSON nesting
MAX_REPORTED = 100
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
TOP_LEVEL_FILES = ("SHA256SUMS", "README.md")
BUNDLE_COMPONENT = "bundle"
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_TIMESTAMP = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
# name and version become file names (<name>-<version>.tar) and host directories
# (releases/<version>): one safe path segment.
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")  # MAX_NAME_BYTES
_FILE_KEYS = {"path", "size", "sha256", "mode", "component"}
_TOP_KEYS = {
    "format",
    "schema_version",
    "name",
    "version",
    "sequence",
    "created",
    "expires",
    "builder",
    "components",
    "files",
}
_BUILDER_KEYS = {"airlock", "python", "platform"}


# --------------------------------------------------------------------------- paths


def path_problem(path: object) -> Optional[str]:
    """Why ``path`` is not an acceptable bundle path, or None when it is."""
    if not isinstance(path, str):
        return "path is not a string"
    if path == "":
        return "empty path"
    why = text_problem(path, limit=MAX_PATH_BYTES)
    if why is not None:
        return f"path {why}"
    if path.startswith("/"):
        return "absolute path"
    if "\\" in path:
        return "backslash in path"
    if unicodedata.normalize("NFC", path) != path:
        return "path is not in Unicode NFC form"
    segments = path.split("/")
    if len(segments) > MAX_PATH_DEPTH:
        return f"path deeper than {MAX_PATH_DEPTH} segments"
    for segment in segments:
        if segment == "":
            return "empty path segment"
        if segment == ".":
            return "'.' path segment"
        if segment == "..":
            return "'..' path segment (traversal)"
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            return f"path segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def component_of(path: str) -> str:
    """The component a payload path belongs to: its first segment, or ``bundle``."""
    return path.split("/", 1)[0] if "/" in path else BUNDLE_COMPONENT


# --------------------------------------------------------------------------- values


def parse_time(text: str) -> datetime:
    """The manifest's ``YYYY-MM-DDTHH:MM:SSZ`` as an aware UTC datetime; raises ValueError."""
    if not _TIMESTAMP.match(text):
        raise ValueError(f"{text!r} is not YYYY-MM-DDTHH:MM:SSZ")
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)


def created_epoch(manifest: Dict[str, Any]) -> int:
    """The manifest's ``created`` in seconds since the epoch: every tar header's mtime."""
    return int(parse_time(manifest["created"]).timestamp())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _time_problem(manifest: Dict[str, Any], key: str) -> Optional[str]:
    value = manifest.get(key)
    if not isinstance(value, str):
        return f"manifest: {key} must be an RFC 3339 UTC time like 2026-01-31T00:00:00Z"
    try:
        parse_time(value)
    except ValueError as e:
        return f"manifest: {key} {value!r} is not a real RFC 3339 UTC time ({e})"
    return None


def _string_problems(manifest: object) -> List[str]:
    """Every key and string anywhere in ``manifest`` held to the text rule, nesting bounded."""
    problems: List[str] = []
    stack: List[Tuple[object, Tuple[object, ...]]] = [(manifest, ())]
    while stack:
        value, where = stack.pop()
        if len(where) > MAX_DEPTH:
            problems.append(f"manifest: {_where(where)} is nested deeper than {MAX_DEPTH}")
        elif isinstance(value, str):
            why = text_problem(value)
            if why is not None:
                problems.append(f"manifest: {_where(where)}: string {why}")
        elif isinstance(value, dict):
            for key in sorted(value, reverse=True):
                why = text_problem(key, limit=MAX_PATH_BYTES)
                if why is not None:
                    problems.append(f"manifest: {_where(where)}: key {key!r} {why}")
                stack.append((value[key], (*where, key)))
        elif isinstance(value, list):
            stack.extend((v, (*where, i)) for i, v in reversed(list(enumerate(value))))
    return problems


def _where(where: Tuple[object, ...]) -> str:
    out = "$"
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def manifest_problems(manifest: object) -> List[str]:
    """Every way a decoded manifest breaks schema version 1 (empty list when valid)."""
    if not isinstance(manifest, dict):
        return ["manifest is not a JSON object"]
    problems = _string_problems(manifest)
    if problems:  # values that break the text rule are not looked at any further
        return _capped(problems)
    for key in sorted(_TOP_KEYS - set(manifest)):
        problems.append(f"manifest: missing field {key!r}")
    for key in sorted(set(manifest) - _TOP_KEYS):
        problems.append(f"manifest: unknown field {key!r}")
    if manifest.get("format", FORMAT_NAME) != FORMAT_NAME:
        problems.append(f"manifest: format is not {FORMAT_NAME!r}")
    if manifest.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        problems.append(
            f"manifest: schema_version {manifest.get('schema_version')!r} is not supported"
            f" (this reader knows {SCHEMA_VERSION})"
        )
    for key in ("name", "version"):
        value = manifest.get(key, "x")
        if not isinstance(value, str) or not _NAME.match(value):
            problems.append(
                f"manifest: {key} must be 1-{MAX_NAME_BYTES} characters of letters, digits,"
                " '.', '_', '+', '-', starting with a letter or digit"
            )
    sequence = manifest.get("sequence", 0)
    if not (_is_int(sequence) and 0 <= sequence <= MAX_INT):
        problems.append(f"manifest: sequence must be an integer from 0 to {MAX_INT}")
    problems.extend(_times_problems(manifest))
    builder = manifest.get("builder", dict.fromkeys(_BUILDER_KEYS, ""))
    if (
        not isinstance(builder, dict)
        or set(builder) != _BUILDER_KEYS
        or not all(isinstance(v, str) for v in builder.values())
    ):
        problems.append("manifest: builder must be {airlock, python, platform} strings")
    components = manifest.get("components", {})
    if not isinstance(components, dict):
        problems.append("manifest: components must be an object")
        components = {}
    for cname, comp in sorted(components.items()):
        if "/" in cname or path_problem(cname) is not None or cname == "airlock":
            problems.append(f"manifest: component name {cname!r} is not a path segment")
        if (
            not isinstance(comp, dict)
            or set(comp) != {"type", "properties"}
            or not isinstance(comp.get("type"), str)
            or not isinstance(comp.get("properties"), dict)
        ):
            problems.append(
                f"manifest: component {cname!r} must be {{type: string, properties: object}}"
            )
    if not problems:
        problems.extend(_record_problems(manifest))
    files = manifest.get("files", [])
    if not isinstance(files, list):
        return _capped([*problems, "manifest: files must be a list"])
    problems.extend(_files_problems(files, components))
    return _capped(problems)


def _record_problems(manifest: Dict[str, Any]) -> List[str]:
    """The engine and model records every reader takes (runtime.components): a signed
    value no reader can use is refused here, so verify never accepts what inspect, report,
    diff or a host's selection would then fail on."""
    records = [
        (name, comp)
        for name, comp in sorted(manifest["components"].items())
        if name in ("engine", "models") or comp["type"] in ("runtime", "model")
    ]
    problems = []
    for name, comp in records:
        try:
            if name == "engine" or comp["type"] == "runtime":
                components.parse_engine(comp["properties"])
            if name == "models" or comp["type"] == "model":
                models = comp["properties"].get("models") or []
                if not isinstance(models, list):
                    raise UsageError(f"components.{name}.properties.models is not a list")
                for i, m in enumerate(models):
                    components.parse_model(m, where=f"components.{name}.properties.models[{i}]")
        except UsageError as e:
            problems.append(f"manifest: {e.message}")
    return problems


def _times_problems(manifest: Dict[str, Any]) -> List[str]:
    problems = [p for p in (_time_problem(manifest, k) for k in ("created", "expires")) if p]
    if problems or "created" not in manifest:
        return problems
    created = parse_time(manifest["created"])
    if not 0 <= created.timestamp() <= MAX_MTIME:
        problems.append("manifest: created must be from 1970 on (it is every member's mtime)")
    if parse_time(manifest["expires"]) <= created:
        problems.append("manifest: expires must be after created")
    return problems


def _files_problems(files: List[Any], components: Dict[str, Any]) -> List[str]:
    problems: List[str] = []
    previous: Optional[bytes] = None
    paths: Set[str] = set()
    parents: Set[str] = set()
    for index, entry in enumerate(files):
        where = f"manifest: files[{index}]"
        if not isinstance(entry, dict) or set(entry) != _FILE_KEYS:
            problems.append(f"{where} must have exactly path, size, sha256, mode, component")
            continue
        path = entry["path"]
        why = path_problem(path)
        if why is not None:
            problems.append(f"{where}: {path!r}: {why}")
            continue
        where = f"manifest: {path}"
        key = path.encode("utf-8")
        if path.startswith("airlock/"):
            problems.append(f"{where}: the airlock/ prefix is reserved for metadata")
        if previous is not None and key <= previous:
            problems.append(f"{where}: files are not sorted by path or the path repeats")
        previous = key
        paths.add(path)
        parts = path.split("/")
        parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
        size = entry["size"]
        if not (_is_int(size) and 0 <= size <= MAX_INT):
            problems.append(f"{where}: size must be an integer from 0 to {MAX_INT}")
        if not isinstance(entry["sha256"], str) or not _HEX64.match(entry["sha256"]):
            problems.append(f"{where}: sha256 must be 64 lowercase hex digits")
        if not isinstance(entry["mode"], str) or entry["mode"] not in MODES:
            problems.append(f'{where}: mode must be "0644" or "0755"')
        if entry["component"] != component_of(path):
            problems.append(f"{where}: component must be {component_of(path)!r}")
        elif entry["component"] != BUNDLE_COMPONENT and entry["component"] not in components:
            problems.append(
                "{}: component {!r} is not described in components".format(
                    where, entry["component"]
                )
            )
    for clash in sorted(paths & parents):
        problems.append(f"manifest: {clash} is both a file and a directory of other files")
    return problems


def _capped(problems: List[str]) -> List[str]:
    if len(problems) <= MAX_REPORTED:
        return problems
    return [*problems[:MAX_REPORTED], f"... and {len(problems) - MAX_REPORTED} more problems"]


# --------------------------------------------------------------------------- parsing


def _reject_float(value: str) -> Any:
    raise ValueError(f"floating-point number {value} (the manifest allows integers only)")


def _reject_constant(value: str) -> Any:
    raise ValueError(f"non-JSON constant {value}")


def _bounded_int(value: str) -> int:
    if len(value.lstrip("-")) > 19:
        raise ValueError(f"integer {value[:24]}... has more than 19 digits")
    return int(value)


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def canonical_bytes(manifest: Dict[str, Any]) -> bytes:
    """The one serialization airlock signs: sorted keys, no whitespace, UTF-8 as is."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def parse_manifest(data: bytes) -> Dict[str, Any]:
    """Decode and check manifest bytes; never re-serialize them (they are what was signed).

    The bytes must be exactly the canonical serialization of what they decode to (so no
    two readers can disagree about them). Raises ArchiveFormatError listing every problem.
    """
    hint = "this bundle was not written by a compatible airlock; obtain it again or rebuild it"
    if len(data) > MAX_MANIFEST_BYTES:
        raise ArchiveFormatError(
            f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit", hint=hint
        )
    try:
        manifest = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_float=_reject_float,
            parse_int=_bounded_int,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise ArchiveFormatError(f"manifest is not valid JSON: {why}", hint=hint) from None
    problems = manifest_problems(manifest)
    if problems:
        raise ArchiveFormatError(
            f"manifest breaks the bundle format ({len(problems)} problems)",
            problems=problems,
            hint=hint,
        )
    if canonical_bytes(manifest) != data:
        raise ArchiveFormatError(
            "manifest bytes are not canonical JSON (sorted keys, no whitespace, no escapes"
            " where a character can be written as is)",
            hint=hint,
        )
    result: Dict[str, Any] = manifest
    return result
