"""The bundle's build provenance: an in-toto Statement v1 with a SLSA Provenance v1 predicate.

Pure: takes the spec and lock bytes, the resolved inputs and the payload files and returns
the bytes of ``evidence/provenance.intoto.json``. The statement's subject is the list of
payload files (path and sha256), because the manifest that names the bundle is written
after the payload; the provenance file is itself a payload file, so the manifest
signatures cover it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import yaml

from bundler import __version__
from bundler.errors import BuildError
from runtime.components import parse_engine, parse_model

__all__ = [
    "BUILD_TYPE",
    "PREDICATE_TYPE",
    "PROVENANCE_PATH",
    "STATEMENT_TYPE",
    "build_provenance",
    "resolved_dependencies",
]

PROVENANCE_PATH = "evidence/provenance.intoto.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://airlock.dev/build-types/bundle/v1"

_INVOCATION_NAMESPACE = uuid.UUID("0b9c7f3e-1d2a-5e4f-8a6b-3c5d7e9f1a2b")


def build_provenance(
    *,
    files: Sequence[Mapping[str, Any]],
    spec_bytes: bytes,
    lock_bytes: bytes,
    resolved: Sequence[Mapping[str, Any]],
    builder_id: str,
    started: Optional[str] = None,
    finished: Optional[str] = None,
    invocation_id: Optional[str] = None,
) -> bytes:
    """Return the provenance statement as JSON bytes.

    ``files`` are the payload entries (``path``, ``sha256``; other keys ignored) and become
    the subject; ``evidence/provenance.intoto.json`` itself is left out. ``spec_bytes`` and
    ``lock_bytes`` are embedded parsed, with their sha256. ``resolved`` are SLSA resource
    descriptors (``uri``, ``digest`` {``sha256``}, ``name``), see
    :func:`resolved_dependencies`. ``started``/``finished`` are RFC 3339 times and are
    omitted when None (pass times derived from ``SOURCE_DATE_EPOCH`` for reproducible
    output); ``invocation_id`` defaults to a uuid5 of the inputs, so the same inputs give
    the same bytes.

    Raises :class:`BuildError` when the spec or lock cannot be parsed, a time is not RFC
    3339, or a subject or dependency lacks a sha256.
    """
    problems: list[str] = []
    subject = []
    for f in sorted(files, key=lambda f: str(f["path"])):
        if f["path"] == PROVENANCE_PATH:
            continue
        if not _is_sha256(f.get("sha256")):
            problems.append(f"payload file {f['path']}: sha256 missing or not 64 hex digits")
            continue
        subject.append({"name": str(f["path"]), "digest": {"sha256": str(f["sha256"])}})
    deps = []
    for i, r in enumerate(resolved):
        digest = r.get("digest") or {}
        if not r.get("uri") or not _is_sha256(digest.get("sha256")):
            name = r.get("name", "?")
            problems.append(f"resolved dependency #{i} ({name}): uri or sha256 missing")
            continue
        d: dict[str, Any] = {"uri": str(r["uri"]), "digest": {"sha256": str(digest["sha256"])}}
        if r.get("name"):
            d["name"] = str(r["name"])
        deps.append(d)
    deps.sort(key=lambda d: (d["uri"], d["digest"]["sha256"]))
    for label, value in (("started", started), ("finished", finished)):
        if value is not None and not _is_rfc3339(value):
            problems.append(f"{label} time {value!r} is not RFC 3339 (e.g. 2026-11-27T00:00:00Z)")
    spec = _parse("spec", spec_bytes, problems)
    lock = _parse("lock", lock_bytes, problems)
    if not subject:
        problems.append("no payload files: the provenance subject would be empty")
    if problems:
        raise BuildError(
            "cannot write the build provenance",
            problems=problems,
            hint="this is a bug in the build pipeline's inputs; report it with the build log",
        )
    spec_digest = hashlib.sha256(spec_bytes).hexdigest()
    lock_digest = hashlib.sha256(lock_bytes).hexdigest()
    if invocation_id is None:
        seed = json.dumps([spec_digest, lock_digest, subject, deps], sort_keys=True)
        invocation_id = uuid.uuid5(_INVOCATION_NAMESPACE, seed).urn
    metadata: dict[str, Any] = {"invocationId": invocation_id}
    if started is not None:
        metadata["startedOn"] = started
    if finished is not None:
        metadata["finishedOn"] = finished
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "spec": {"content": spec, "digest": {"sha256": spec_digest}},
                    "lock": {"content": lock, "digest": {"sha256": lock_digest}},
                },
                "internalParameters": {"airlock": __version__},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": builder_id, "version": {"airlock": __version__}},
                "metadata": metadata,
            },
        },
    }
    return (json.dumps(statement, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def resolved_dependencies(components: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """SLSA resource descriptors for every fetched input named in the manifest components.

    Hub files become ``<endpoint>/<repo>/resolve/<commit>/<hub_path>``, wheels
    ``pkg:pypi/<name>@<version>?file_name=<wheel>`` and the llama-cpp-python source its
    download URL (or its purl), NVIDIA's CUDA runtime wheels (``cuda.runtime_wheel_files``)
    by purl too. A model made at build time lists the Hub files it was made from and the
    converter environment's wheels. Local models and wheels appear by purl as well; each
    wheel file appears once even when two wheelhouses carry it.
    """
    out: dict[tuple[str, str], dict[str, Any]] = {}

    def add(uri: str, sha256: str, name: str) -> None:
        out.setdefault((uri, sha256), {"uri": uri, "digest": {"sha256": sha256}, "name": name})

    for comp in components.values():
        props = comp.get("properties") or {}
        if comp.get("type") == "model":
            for m in (parse_model(raw) for raw in props.get("models") or []):
                endpoint = (m.endpoint or "https://huggingface.co").rstrip("/")
                pinned = (m.source or "hub") == "hub" and m.repo and m.commit
                derived = m.derived_from
                if derived:  # made at build time: its inputs, its converter
                    for f in derived.get("files") or []:
                        uri = (
                            f"{endpoint}/{derived['repo']}/resolve/{derived['commit']}/{f['path']}"
                        )
                        add(uri, str(f["sha256"]), str(f["path"]))
                    for w in (m.converter.get("environment") or {}).get("packages") or []:
                        add(
                            f"pkg:pypi/{w['name']}@{w['version']}?file_name={w['file']}",
                            str(w["sha256"]),
                            str(w["file"]),
                        )
                for f in m.files:
                    if not f.get("hub_path") and derived:
                        continue  # the GGUF made from the inputs above: an output
                    if pinned:
                        uri = f"{endpoint}/{m.repo}/resolve/{m.commit}/{f['hub_path']}"
                    else:
                        uri = "file:" + str(f.get("hub_path") or f["path"])
                    add(uri, str(f["sha256"]), str(f["path"]))
        for w in props.get("wheels", []):
            base = str(w["file"]).rsplit("/", 1)[-1]
            pname = str(w["name"]).lower().replace("_", "-")
            add(f"pkg:pypi/{pname}@{w['version']}?file_name={base}", str(w["sha256"]), base)
        if comp.get("type") != "runtime":
            continue
        engine = parse_engine(dict(props))
        nvidia = (engine.cuda.runtime_wheel_files or ()) if engine.cuda else ()
        for w in nvidia:  # NVIDIA's runtime wheels (CUDA builds)
            add(
                f"pkg:pypi/{w['name']}@{w['version']}?file_name={w['file']}",
                str(w["sha256"]),
                str(w["file"]),
            )
        src = engine.llama_cpp_python
        if src:
            uri = str(src.get("url") or f"pkg:pypi/llama-cpp-python@{src['version']}")
            add(uri, str(src["sha256"]), str(src["sdist"]))
    return [out[k] for k in sorted(out)]


def _parse(label: str, data: bytes, problems: list[str]) -> Any:
    try:
        return _jsonable(yaml.safe_load(data.decode("utf-8")))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        problems.append(f"the {label} is not valid UTF-8 YAML/JSON: {e}")
        return None


def _jsonable(value: Any) -> Any:
    # YAML may produce dates and timestamps; JSON has no such types.
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    return value


def _is_sha256(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _is_rfc3339(value: str) -> bool:
    try:
        parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in value and parsed.tzinfo is not None
