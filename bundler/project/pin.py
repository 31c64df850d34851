"""Resolve a spec into ``airlock.lock``: Hub revisions to commits, every file to size and sha256.

The lock's data model is :mod:`bundler.project.lock` (pure); this module does the I/O that fills
it: Hub look-ups through :class:`bundler.sources.hub.HubClient` and hashing of local sources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from bundler import console
from bundler.errors import FetchError, SpecError, UsageError
from bundler.fsio import hash_file
from bundler.project.derive import is_checkpoint, safetensors_entrypoint
from bundler.project.lock import Lock, LockedFile, LockedModel, local_path_text, write_lock
from bundler.project.spec import ModelSpec, Spec
from bundler.sources.ggufinfo import entrypoint_candidates, shards_of, split_parts
from bundler.sources.hub import HubClient, HubSettings, select_files


def _local_shards(path: Path) -> list[Path]:
    parts = split_parts(path.name)
    if parts is None:
        return [path]
    names = shards_of(path.name, [p.name for p in path.parent.iterdir()])
    return [path.parent / n for n in names]


def _lock_local(spec: Spec, m: ModelSpec) -> LockedModel:
    assert m.path is not None
    files = []
    for p in _local_shards(m.path):
        size, sha = hash_file(p)
        files.append(LockedFile(path=p.name, size=size, sha256=sha))
    return LockedModel(
        name=m.name,
        source="local",
        files=tuple(files),
        entrypoint=m.path.name,
        path=local_path_text(spec, m),
    )


def _lock_hub(m: ModelSpec, client: HubClient) -> LockedModel:
    assert m.repo is not None
    snap = client.resolve(m.repo, m.revision)
    by_path = {f.path: f for f in snap.files}
    paths, missing = select_files(list(by_path), files=m.files, allow=m.allow)
    if missing:
        raise FetchError(
            f"{m.repo}@{m.revision} (commit {snap.commit[:12]}) lacks requested files",
            problems=[f"models.{m.name}.files: {p} not in the repository" for p in missing],
            hint="check the names against the repository's file list",
        )
    candidates = entrypoint_candidates(paths)
    checkpoint = safetensors_entrypoint(paths)
    if m.convert is not None and checkpoint is None:
        raise SpecError(
            f"models.{m.name}.convert: {m.repo}@{m.revision} (commit {snap.commit[:12]}) has no "
            "safetensors checkpoint among the selected files",
            hint="select model.safetensors (or model.safetensors.index.json and its shards) "
            "with config.json and the tokenizer files",
        )
    entry = m.entrypoint
    if entry is None and checkpoint is not None and (m.convert is not None or not candidates):
        if m.convert is None:
            console.info(
                f"models.{m.name}: the selection has no GGUF file; its safetensors "
                f"({checkpoint}) are converted with llama.cpp's convert_hf_to_gguf.py at build time"
            )
        entry = checkpoint
    elif entry is None:
        if len(candidates) != 1:
            found = ", ".join(candidates) or "none"
            raise SpecError(
                f"models.{m.name}: cannot tell which GGUF file to serve (found: {found})",
                hint="select files with 'files'/'allow', or name one with 'entrypoint'",
            )
        entry = candidates[0]
    elif entry not in paths:
        raise SpecError(f"models.{m.name}.entrypoint: {entry} is not among the selected files")
    if not is_checkpoint(entry):
        shards_of(entry, paths)
    files = []
    for p in paths:
        rf = by_path[p]
        if rf.lfs_sha256 is not None:
            sha = rf.lfs_sha256
        else:
            # The Hub names small files by git blob id only: fetch them (verified against that
            # id) to learn their sha256. They are cached, so the build does not fetch again.
            sha = client.fetch(
                m.repo, snap.commit, p, size=rf.size, lfs_sha256=None, blob_id=rf.blob_id
            ).sha256
        files.append(
            LockedFile(
                path=p, size=rf.size, sha256=sha, lfs=rf.lfs_sha256 is not None, blob_id=rf.blob_id
            )
        )
    return LockedModel(
        name=m.name,
        source="hub",
        files=tuple(files),
        entrypoint=entry,
        repo=m.repo,
        revision=m.revision,
        request_files=m.files,
        request_allow=m.allow,
        commit=snap.commit,
        endpoint=client.settings.endpoint,
        gated=snap.gated,
        card_license=snap.card_license,
    )


def resolve_lock(spec: Spec, client: HubClient) -> Lock:
    """Resolve every model of ``spec``: Hub revisions to commits, files to size and sha256."""
    models = []
    for m in spec.models:
        console.step(f"resolving {m.name} ({m.repo + '@' + m.revision if m.repo else m.path})")
        models.append(_lock_local(spec, m) if m.source == "local" else _lock_hub(m, client))
    return Lock(models=tuple(models), controller_python=spec.controller_python)


ConverterPins = Callable[[Spec, Lock], Optional[dict[str, Any]]]
"""Resolves the converter environment for a resolved lock (``Lock.converter``; None: no model
is converted). The pipeline passes it: the converter lives in the engine's pinned source."""


def lock(
    spec: Spec,
    *,
    settings: Optional[HubSettings] = None,
    converter: Optional[ConverterPins] = None,
) -> tuple[Lock, bool]:
    """Write ``airlock.lock`` for ``spec``; returns the lock and whether the file changed."""
    settings = settings or HubSettings.from_env()
    if settings.offline and any(m.source == "hub" for m in spec.models):
        raise UsageError(
            "cannot lock offline: resolving revisions needs the Hub",
            hint="unset HF_HUB_OFFLINE / drop --offline, or build with the existing lock",
        )
    new = resolve_lock(spec, HubClient(settings))
    if converter is not None:
        new = replace(new, converter=converter(spec, new))
    old_path = spec.lock_path
    old = old_path.read_bytes() if old_path.exists() else None
    changed = old != new.to_bytes()
    if changed:
        write_lock(old_path, new)
    return new, changed
