"""``airlock.lock``: every model revision resolved to a commit, every file to size and sha256.

The lock is plain data (pure core): resolving it needs the Hub and lives in
:mod:`bundler.project.pin`; this module reads, writes and compares it with the spec.
It is written as canonical, indented JSON (sorted keys), so the same resolution
always gives the same bytes and a diff in review shows exactly what moved.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bundler.errors import SpecError
from bundler.fsio import write_atomic
from bundler.paths import safe_relpath
from bundler.project.derive import is_checkpoint
from bundler.project.spec import ModelSpec, Spec

LOCK_VERSION = 1
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class LockedFile:
    """One file of a model: its path inside the repo (or the local file name) and digests."""

    path: str
    size: int
    sha256: str
    lfs: bool = False
    blob_id: Optional[str] = None  # git blob sha1 for Hub files

    @property
    def etag(self) -> str:
        """The Hub's ETag for the file: the LFS sha256, else the git blob id."""
        return self.sha256 if self.lfs else (self.blob_id or "")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.blob_id is not None:
            d["lfs"] = self.lfs
            d["blob_id"] = self.blob_id
        return d


@dataclass(frozen=True)
class LockedModel:
    """What a spec model resolved to: the request it answers and the pinned result."""

    name: str
    source: str
    files: tuple[LockedFile, ...]
    entrypoint: str
    repo: Optional[str] = None
    revision: Optional[str] = None
    request_files: tuple[str, ...] = ()
    request_allow: tuple[str, ...] = ()
    commit: Optional[str] = None
    endpoint: Optional[str] = None
    gated: bool = False
    card_license: Optional[str] = None
    path: Optional[str] = None  # local source, relative to the spec's directory when possible

    def file(self, path: str) -> LockedFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source": self.source,
            "entrypoint": self.entrypoint,
            "files": [f.to_json() for f in sorted(self.files, key=lambda f: f.path)],
        }
        if self.source == "hub":
            d.update(
                repo=self.repo,
                revision=self.revision,
                request_files=list(self.request_files),
                request_allow=list(self.request_allow),
                commit=self.commit,
                endpoint=self.endpoint,
                gated=self.gated,
                card_license=self.card_license,
            )
        else:
            d["path"] = self.path
        return d


@dataclass(frozen=True)
class Lock:
    models: tuple[LockedModel, ...]
    # The controller Pythons the spec resolved to (its default comes from airlock's code, so
    # an airlock whose default moved shows up here, in review, not silently in the bundle).
    # Empty in a lock written before it was recorded.
    controller_python: tuple[str, ...] = ()
    # The converter's environment when a model is converted at build time:
    # {"llama_cpp_python": version, "requirements": [...], "packages": [{name, version,
    # file, sha256}]}, resolved by ``airlock lock`` and installed exactly by the build.
    converter: Optional[dict[str, Any]] = None

    def model(self, name: str) -> LockedModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "lock_version": LOCK_VERSION,
            "models": {m.name: m.to_json() for m in self.models},
        }
        if self.controller_python:
            doc["controller_python"] = list(self.controller_python)
        if self.converter is not None:
            doc["converter"] = self.converter
        return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _file_from_json(d: Mapping[str, Any], where: str) -> LockedFile:
    path, size, sha = d.get("path"), d.get("size"), d.get("sha256")
    if not isinstance(path, str) or not isinstance(size, int) or not isinstance(sha, str):
        raise ValueError(f"{where}: a file needs path, size and sha256")
    if not safe_relpath(path):
        raise ValueError(f"{where}: path {path!r} leaves the model directory")
    blob = d.get("blob_id")
    if blob is not None and not (isinstance(blob, str) and COMMIT_RE.match(blob)):
        raise ValueError(f"{where}: blob_id {blob!r} is not 40 hex digits")
    if not SHA256_RE.match(sha):
        raise ValueError(f"{where}: sha256 {sha!r} is not 64 hex digits")
    return LockedFile(
        path=path,
        size=size,
        sha256=sha,
        lfs=bool(d.get("lfs", False)),
        blob_id=blob if isinstance(blob, str) else None,
    )


def parse_lock(data: bytes, *, where: str = "airlock.lock") -> Lock:
    """Parse lock bytes; raises SpecError when they are malformed."""
    try:
        doc = json.loads(data)
        if doc.get("lock_version") != LOCK_VERSION:
            raise ValueError(f"lock_version {doc.get('lock_version')!r}, expected {LOCK_VERSION}")
        controller = tuple(doc.get("controller_python", ()))
        if not all(isinstance(v, str) for v in controller):
            raise ValueError(f"controller_python {controller!r} is not a list of versions")
        models = []
        for name, m in sorted(doc["models"].items()):
            files = tuple(
                _file_from_json(f, f"models.{name}.files[{i}]") for i, f in enumerate(m["files"])
            )
            commit = m.get("commit")
            if m["source"] == "hub" and not (isinstance(commit, str) and COMMIT_RE.match(commit)):
                raise ValueError(f"models.{name}.commit {commit!r} is not a 40-hex commit")
            models.append(
                LockedModel(
                    name=name,
                    source=m["source"],
                    files=files,
                    entrypoint=m["entrypoint"],
                    repo=m.get("repo"),
                    revision=m.get("revision"),
                    request_files=tuple(m.get("request_files", ())),
                    request_allow=tuple(m.get("request_allow", ())),
                    commit=commit,
                    endpoint=m.get("endpoint"),
                    gated=bool(m.get("gated", False)),
                    card_license=m.get("card_license"),
                    path=m.get("path"),
                )
            )
        converter = _converter_from_json(doc.get("converter"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SpecError(
            f"{where} is malformed: {e}",
            hint="regenerate it with 'airlock lock SPEC' (never edit a lock by hand)",
        ) from e
    return Lock(models=tuple(models), controller_python=controller, converter=converter)


def _converter_from_json(d: Any) -> Optional[dict[str, Any]]:
    if d is None:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("llama_cpp_python"), str):
        raise ValueError("converter: needs llama_cpp_python, requirements and packages")
    reqs = d.get("requirements")
    if not isinstance(reqs, list) or not all(isinstance(r, str) for r in reqs):
        raise ValueError("converter.requirements: expected a list of text")
    packages = d.get("packages")
    if not isinstance(packages, list) or not packages:
        raise ValueError("converter.packages: expected a non-empty list")
    for i, p in enumerate(packages):
        where = f"converter.packages[{i}]"
        if not isinstance(p, dict) or not all(
            isinstance(p.get(k), str) for k in ("name", "version", "file")
        ):
            raise ValueError(f"{where}: a package needs name, version and file")
        if not SHA256_RE.match(str(p.get("sha256"))):
            raise ValueError(f"{where}: sha256 {p.get('sha256')!r} is not 64 hex digits")
    return {"llama_cpp_python": d["llama_cpp_python"], "requirements": reqs, "packages": packages}


def load_lock(path: Path) -> Optional[Lock]:
    """The lock at ``path``, or None when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse_lock(data, where=str(path))


def write_lock(path: Path, lock: Lock) -> None:
    """Write atomically: a temp file in the same directory, then ``os.replace``."""
    write_atomic(path, lock.to_bytes())


def local_path_text(spec: Spec, model: ModelSpec) -> str:
    """How a local source's path is recorded: relative to the spec when it lies below it."""
    assert model.path is not None
    base = spec.path.resolve().parent if spec.path is not None else Path.cwd()
    try:
        return model.path.relative_to(base).as_posix()
    except ValueError:
        return str(model.path)


def lock_problems(spec: Spec, lock: Lock) -> list[str]:
    """Every way the lock fails to answer the spec (empty when it matches). Pure."""
    problems: list[str] = []
    locked = {m.name: m for m in lock.models}
    for m in spec.models:
        lm = locked.pop(m.name, None)
        if lm is None:
            problems.append(f"models.{m.name}: not in the lock")
            continue
        if lm.source != m.source:
            problems.append(f"models.{m.name}: source is {m.source}, lock has {lm.source}")
            continue
        if m.source == "local":
            if lm.path != local_path_text(spec, m):
                problems.append(f"models.{m.name}: path changed ({lm.path} -> {m.path})")
            continue
        checks = (
            ("repo", m.repo, lm.repo),
            ("revision", m.revision, lm.revision),
            ("files", list(m.files), list(lm.request_files)),
            ("allow", list(m.allow), list(lm.request_allow)),
        )
        for key, want, have in checks:
            if want != have:
                problems.append(f"models.{m.name}.{key}: spec has {want!r}, lock has {have!r}")
        if m.entrypoint is not None and m.entrypoint != lm.entrypoint:
            problems.append(
                f"models.{m.name}.entrypoint: spec has {m.entrypoint!r}, lock has {lm.entrypoint!r}"
            )
        if m.convert is not None and not is_checkpoint(lm.entrypoint):
            problems.append(
                f"models.{m.name}.convert: the lock's entrypoint {lm.entrypoint!r} is not a "
                "safetensors checkpoint"
            )
        if COMMIT_RE.match(m.revision) and lm.commit != m.revision:
            problems.append(
                f"models.{m.name}.revision: commit {m.revision} but lock has {lm.commit}"
            )
    for name in sorted(locked):
        problems.append(f"models.{name}: in the lock but not in the spec")
    if lock.controller_python and lock.controller_python != spec.controller_python:
        problems.append(
            f"targets.controller_python: spec has {list(spec.controller_python)!r}, "
            f"lock has {list(lock.controller_python)!r}"
        )
    converts = [m.name for m in lock.models if is_checkpoint(m.entrypoint)]
    if converts and lock.converter is None:
        problems.append(
            f"converter: models {', '.join(converts)} are converted at build time but the "
            "lock records no converter environment"
        )
    elif converts and lock.converter is not None and spec.engine is not None:
        pinned = lock.converter["llama_cpp_python"]
        if pinned != spec.engine.llama_cpp_python:
            problems.append(
                f"converter.llama_cpp_python: spec has {spec.engine.llama_cpp_python!r}, "
                f"lock has {pinned!r}"
            )
    return problems


def check_lock(spec: Spec, lock: Optional[Lock]) -> Lock:
    """The lock when it answers the spec; raises SpecError listing every mismatch otherwise."""
    where = spec.lock_path
    if lock is None:
        raise SpecError(
            f"no lock file at {where}: the spec's revisions are not pinned to commits",
            hint="run 'airlock lock SPEC' (and commit airlock.lock), or build with --update-lock",
        )
    problems = lock_problems(spec, lock)
    if problems:
        raise SpecError(
            f"{where} does not match the spec",
            problems=problems,
            hint="run 'airlock lock SPEC' or build with --update-lock to re-resolve",
        )
    return lock
