"""The ``airlock build`` pipeline: lock, stage models and code, engine, evidence, smoke test, pack.

Each step is one function so the order reads top to bottom in :func:`build`. Model bytes
are read as few times as possible: a download is hashed as it arrives, a staged model is
a hard link to the verified cache blob (a hashing copy when the cache is on another file
system), and the digests known from fetch and lock are reused for the evidence; the pack
step is the one full read of a model that was just downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from bundler import __version__, console
from bundler.bundle.manifest import check_expiry_after_now
from bundler.bundle.pack import PackResult, pack
from bundler.derivation import Deriver, converter_pins, deriver_for, derives
from bundler.engine import cuda as cudalib
from bundler.engine import llamacpp, sdist, smoke
from bundler.errors import FetchError, GgufError, SpecError, UsageError
from bundler.evidence import provenance, sbom
from bundler.evidence.readme import render_bundle_readme
from bundler.fsio import FileStamp, hash_file
from bundler.paths import FAR_SIDE_DIRS, repo_root
from bundler.project import pin
from bundler.project.lock import (
    Lock,
    LockedFile,
    LockedModel,
    check_lock,
    load_lock,
)
from bundler.project.spec import ModelSpec, Spec, load_spec
from bundler.sources import wheelhouse
from bundler.sources.ggufinfo import read_facts, shards_of
from bundler.sources.hub import FetchedFile, HubClient, HubSettings
from bundler.sources.licenses import license_facts
from bundler.ssh.keys import Signer, load_signer

__all__ = ["BuildOptions", "BuildResult", "build", "converter_pins", "lock"]

CHUNK = 1024 * 1024
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache")


@dataclass(frozen=True)
class BuildOptions:
    out_dir: Path
    keys: tuple[str, ...] = ()
    offline: bool = False
    update_lock: bool = False
    skip_engine: bool = False  # models and code only (``--skip-engine``)
    source_date_epoch: Optional[int] = None
    split: Optional[int] = None
    durable: bool = False  # fsync the bundle before returning (archive.pack ``durable``)


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest_sha256: str
    lock_path: Path
    lock_changed: bool
    warnings: tuple[str, ...]
    files: int
    size: int


@dataclass
class _Staged:
    """What the staging steps learned: component properties and digests already known."""

    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    digests: dict[str, tuple[int, str]] = field(default_factory=dict)  # bundle path -> size, sha
    # bundle path -> the stamp under which its digest was computed (pack need not rehash it)
    stamps: dict[str, FileStamp] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    entrypoints: dict[str, Path] = field(default_factory=dict)


# --- staging ---------------------------------------------------------------------------------


def _place(src: Path, dest: Path, *, size: int, sha256: str) -> bool:
    """Put a verified cache blob at ``dest`` as a real file: hard link, else a checked copy.

    Returns True when ``dest`` is a hard link (the same inode: the blob's stamp holds).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
        return True
    except OSError:
        pass  # another file system (or links not allowed): copy, hashing as we go
    got = _copy_hashing(src, dest)
    if got != (size, sha256):
        raise FetchError(f"{src} changed while it was copied to the stage", hint="rerun the build")
    return False


def _copy_hashing(src: Path, dest: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fi, dest.open("xb") as fo:
        while chunk := fi.read(CHUNK):
            h.update(chunk)
            fo.write(chunk)
            size += len(chunk)
    os.chmod(dest, 0o644)
    return size, h.hexdigest()


def _fetch_locked(client: HubClient, m: LockedModel, f: LockedFile) -> FetchedFile:
    """One locked file of a Hub model, fetched (or found in the cache) and digest-checked."""
    assert m.repo is not None and m.commit is not None
    return client.fetch(
        m.repo,
        m.commit,
        f.path,
        size=f.size,
        lfs_sha256=f.sha256 if f.lfs else None,
        blob_id=f.blob_id,
        sha256=f.sha256,
    )


def _stage_hub(m: LockedModel, client: HubClient, stage: Path, st: _Staged) -> list[dict[str, Any]]:
    assert m.repo is not None and m.commit is not None
    entries = []
    for f in m.files:
        got = _fetch_locked(client, m, f)
        bundle_path = f"models/{m.name}/{f.path}"
        linked = _place(got.path, stage / bundle_path, size=f.size, sha256=f.sha256)
        st.digests[bundle_path] = (f.size, f.sha256)
        if linked and got.stamp is not None:
            st.stamps[bundle_path] = got.stamp
        entries.append(
            {
                "path": bundle_path,
                "hub_path": f.path,
                "sha256": f.sha256,
                "size": f.size,
                "lfs": f.lfs,
            }
        )
    return entries


def _stage_local(
    spec: Spec, sm: ModelSpec, m: LockedModel, stage: Path, st: _Staged
) -> list[dict[str, Any]]:
    assert sm.path is not None
    entries = []
    problems = []
    for f in m.files:
        bundle_path = f"models/{m.name}/{f.path}"
        size, sha = _copy_hashing(sm.path.parent / f.path, stage / bundle_path)
        if (size, sha) != (f.size, f.sha256):
            problems.append(
                f"{f.path}: lock has {f.size} bytes sha256 {f.sha256}, file has {size} {sha}"
            )
        st.digests[bundle_path] = (size, sha)
        entries.append(
            {"path": bundle_path, "hub_path": f.path, "sha256": sha, "size": size, "lfs": False}
        )
    if problems:
        raise SpecError(
            f"local model {m.name} ({sm.path}) changed since the lock was written",
            problems=problems,
            hint="if the change is intended, rebuild with --update-lock (or run 'airlock lock')",
        )
    return entries


def _stage_derived(
    sm: ModelSpec, m: LockedModel, derive: Deriver, client: HubClient, stage: Path, st: _Staged
) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """Fetch a model made at build time, make its GGUF and stage it with the small files.

    The repository's card, license, config and tokenizer are staged as they are; the
    weights are not: the bundle carries the GGUF made from them. Returns (file entries,
    entrypoint, lineage).
    """
    if m.source != "hub" or m.repo is None or m.commit is None:
        raise SpecError(f"models.{m.name}: only a Hub model can be converted or quantized")
    inputs: dict[str, tuple[Path, str]] = {}
    entries = []
    for f in m.files:
        got = _fetch_locked(client, m, f)
        inputs[f.path] = (got.path, f.sha256)
        if f.path.endswith((".safetensors", ".gguf")) or f.path == m.entrypoint:
            continue
        bundle_path = f"models/{m.name}/{f.path}"
        _place(got.path, stage / bundle_path, size=f.size, sha256=f.sha256)
        st.digests[bundle_path] = (f.size, f.sha256)
        entry = {"path": bundle_path, "hub_path": f.path, "sha256": f.sha256, "size": f.size}
        entries.append({**entry, "lfs": f.lfs})
    made = derive.make(sm, m, inputs)
    bundle_path = f"models/{m.name}/{made.name}"
    _place(made.path, stage / bundle_path, size=made.size, sha256=made.sha256)
    st.digests[bundle_path] = (made.size, made.sha256)
    made_entry = {"path": bundle_path, "hub_path": None, "sha256": made.sha256}
    entries.append({**made_entry, "size": made.size, "lfs": False})
    return sorted(entries, key=lambda e: str(e["path"])), made.name, made.lineage


def stage_models(
    spec: Spec,
    lk: Lock,
    client: HubClient,
    stage: Path,
    st: _Staged,
    derive: Optional[Deriver] = None,
) -> None:
    """Fetch (or copy) every model into ``stage/models/<name>/`` and record its properties.

    A model made at build time (a safetensors checkpoint to convert, a GGUF to quantize)
    is made by ``derive`` and staged as the one GGUF it gives, with its lineage.
    """
    records = []
    for sm in spec.models:
        m = lk.model(sm.name)
        console.step(f"staging model {m.name}")
        lineage: dict[str, Any] = {}
        entrypoint = m.entrypoint
        if derive is not None and derives(sm, m):
            entries, entrypoint, lineage = _stage_derived(sm, m, derive, client, stage, st)
        elif m.source == "hub":
            entries = _stage_hub(m, client, stage, st)
        else:
            entries = _stage_local(spec, sm, m, stage, st)
        base = stage / "models" / m.name
        repo_paths = [f.path for f in m.files]
        try:
            shards = [
                base / p for p in shards_of(entrypoint, [entrypoint] if lineage else repo_paths)
            ]
            facts = read_facts(shards)
        except GgufError as e:
            raise GgufError(f"model {m.name}: {e.message}", hint=e.hint, problems=e.problems) from e
        card_path = base / "README.md"
        card = (
            card_path.read_text(encoding="utf-8", errors="replace") if card_path.is_file() else None
        )
        lic = license_facts(
            model=m.name,
            repo_paths=repo_paths,
            card_text=card,
            declared=sm.license,
            api_license=m.card_license,
            gated=m.gated,
        )
        st.warnings.extend(lic.warnings(m.name))
        st.entrypoints[m.name] = base / entrypoint
        record: dict[str, Any] = {
            "name": m.name,
            "source": m.source,
            "license": lic.license,
            "license_permissive": lic.permissive,
            "gated": lic.gated,
            "license_files": list(lic.license_files),
            "card": lic.card,
            "entrypoint": f"models/{m.name}/{entrypoint}",
            "files": entries,
            "gguf": facts.properties(),
            **lineage,
        }
        if m.source == "hub":
            record.update(repo=m.repo, revision=m.revision, commit=m.commit, endpoint=m.endpoint)
        else:
            record.update(repo=None, revision=None, commit=None, endpoint=None)
        records.append(record)
    st.components["models"] = {"type": "model", "properties": {"models": records}}


def stage_far_side(stage: Path, st: _Staged) -> None:
    """Copy runtime/, playbooks/, templates/ and docs/ so the far side needs only the bundle."""
    root = repo_root()
    for name in FAR_SIDE_DIRS:
        src = root / name
        if not src.is_dir():
            continue
        shutil.copytree(src, stage / name, ignore=_IGNORED, symlinks=False)
        st.components[name] = {"type": "code", "properties": {"source": f"airlock {__version__}"}}


def stage_readme(spec: Spec, stage: Path, st: _Staged) -> None:
    """The bundle's top-level README.md: what the person holding the tarball reads first."""
    models = st.components.get("models", {}).get("properties", {}).get("models", [])
    text = render_bundle_readme(
        name=spec.name,
        version=spec.version,
        sequence=spec.sequence,
        expires=spec.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        models=models,
    )
    (stage / "README.md").write_text(text, encoding="utf-8")


# --- engine, wheelhouses, evidence, smoke test ---------------------------------------------


def stage_engine(
    spec: Spec, stage: Path, st: _Staged, cache_dir: Path, log_dir: Path
) -> sdist.SourceArchive:
    """Build llama.cpp from the pinned sdist and stage it as ``engine/``; returns the source."""
    assert spec.engine is not None
    eng = spec.engine
    console.step(f"engine: llama.cpp from the llama-cpp-python {eng.llama_cpp_python} source")
    source = sdist.fetch_sdist(eng.llama_cpp_python, cache_dir=cache_dir)
    cuda = cudalib.cuda_options(eng.cuda.architectures) if eng.cuda.enabled else None
    if cuda is not None:
        # nvcc compiles the CUDA module with the system's gcc and libstdc++ headers, which
        # cannot link against zig's libc++: a CUDA engine is not built for the floor. Its
        # real levels are recorded (glibc_min/glibcxx_min) and hosts below them are
        # refused in preflight, before any transfer.
        console.warn(
            "CUDA engine: built with the system compiler, so it needs this machine's glibc "
            "and libstdc++ on every host (not the glibc 2.28 floor of CPU engines); see "
            "docs/OPERATIONS.md, Supported hosts"
        )
    engine = llamacpp.build_engine(
        source,
        variants=eng.cpu_variants,
        cuda=cuda,
        cache_dir=cache_dir,
        log_dir=log_dir,
        compiler="system" if cuda is not None else "portable",
    )
    llamacpp.stage_engine(engine, stage / "engine")
    props = dict(engine.properties)
    props["server_defaults"] = spec.server.properties()
    st.components["engine"] = {"type": "runtime", "properties": props}
    return source


def stage_wheels(
    spec: Spec,
    source: Optional[sdist.SourceArchive],
    stage: Path,
    st: _Staged,
    cache_dir: Path,
    log_dir: Path,
) -> None:
    """Hash-pinned wheelhouses for the targets and for the offline Ansible controller."""
    targets = spec.targets
    extra: list[Path] = []
    if targets is not None:
        if spec.engine is not None and source is not None and targets.llama_cpp_python:
            console.step("llama-cpp-python wheel (portable, from the same pinned source)")
            extra.append(
                llamacpp.build_llama_cpp_python_wheel(
                    source, variants=spec.engine.cpu_variants, cache_dir=cache_dir, log_dir=log_dir
                )
            )
    if targets is not None and not targets.requirements and not extra:
        console.info(
            "no target wheelhouse: the spec's targets need no packages "
            "(no requirements and no llama-cpp-python wheel)"
        )
    elif targets is not None:
        console.step("wheelhouse for the targets")
        result = wheelhouse.build_wheelhouse(
            [
                wheelhouse.Target(python=py, platform=pl)
                for py in targets.python
                for pl in targets.platforms
            ],
            list(targets.requirements),
            extra_wheels=extra,
            dest=stage / "wheels",
            cache_dir=cache_dir,
        )
        st.components["wheels"] = {"type": "wheelhouse", "properties": dict(result.properties)}
        _known_wheels(stage, st, result.properties)
    pythons = spec.controller_python
    console.step(f"wheelhouse for the Ansible controller (Python {', '.join(pythons)})")
    ctl = wheelhouse.build_controller_wheelhouse(
        stage / "controller", cache_dir=cache_dir, pythons=pythons
    )
    st.components["controller"] = {"type": "wheelhouse", "properties": dict(ctl.properties)}
    _known_wheels(stage, st, ctl.properties)


def _known_wheels(stage: Path, st: _Staged, props: Mapping[str, Any]) -> None:
    """Reuse the wheelhouse's checked digests for the evidence instead of hashing again."""
    for w in props.get("wheels", []):
        path = stage / str(w["file"])
        if path.is_file():
            st.digests[str(w["file"])] = (path.stat().st_size, str(w["sha256"]))


def _payload_files(stage: Path, st: _Staged) -> list[dict[str, Any]]:
    """Every staged file with size and sha256: known digests reused, the small rest hashed."""
    out = []
    for root, dirs, files in os.walk(stage):
        dirs.sort()
        for name in sorted(files):
            full = Path(root) / name
            rel = full.relative_to(stage).as_posix()
            size, sha = st.digests.get(rel) or hash_file(full)
            out.append({"path": rel, "size": size, "sha256": sha, "component": rel.split("/")[0]})
    return sorted(out, key=lambda f: f["path"].encode())


def stage_evidence(spec: Spec, stage: Path, st: _Staged, *, epoch: int, lock_bytes: bytes) -> None:
    """The CycloneDX SBOM and the in-toto/SLSA provenance in ``evidence/``."""
    console.step("evidence: SBOM and provenance")
    created = datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    comps = {**st.components, "evidence": {"type": "evidence", "properties": {}}}
    files = _payload_files(stage, st)
    spec_bytes = spec.path.read_bytes() if spec.path is not None else b""
    sbom_bytes = sbom.build_sbom(
        name=spec.name,
        version=spec.version,
        created=created,
        components=comps,
        files=files,
        serial_seed=hashlib.sha256(spec_bytes + lock_bytes).digest(),
    )
    prov_bytes = provenance.build_provenance(
        files=files,
        spec_bytes=spec_bytes,
        lock_bytes=lock_bytes,
        resolved=provenance.resolved_dependencies(comps),
        builder_id=f"https://airlock.dev/builders/airlock-cli@{__version__}",
        started=created,
        finished=created,
    )
    ev = stage / "evidence"
    ev.mkdir(parents=True, exist_ok=True)
    (ev / "sbom.cdx.json").write_bytes(sbom_bytes)
    (ev / "provenance.intoto.json").write_bytes(prov_bytes)
    st.components["evidence"] = {"type": "evidence", "properties": {}}


def smoke_test(spec: Spec, stage: Path, st: _Staged) -> None:
    """Serve the default model with the built runtime before anything is signed."""
    model = spec.server.model or spec.models[0].name
    console.step(f"smoke test: serving {model}")
    smoke.smoke_test(stage / "engine", st.entrypoints[model])


# --- the pipeline ----------------------------------------------------------------------------


def _epoch(options: BuildOptions) -> int:
    if options.source_date_epoch is not None:
        return options.source_date_epoch
    env = os.environ.get("SOURCE_DATE_EPOCH")
    return int(env) if env else int(time.time())


def _cache_dir() -> Path:
    return Path(os.environ.get("AIRLOCK_CACHE") or Path.home() / ".cache" / "airlock")


def lock(spec: Spec, *, settings: Optional[HubSettings] = None) -> tuple[Lock, bool]:
    """``airlock lock``: Hub revisions to commits, files to digests (bundler.project.pin),
    and the converter environment's wheels when a model is converted at build time."""
    return pin.lock(spec, settings=settings, converter=converter_pins)


def _load_signers(keys: Sequence[str]) -> list[Signer]:
    if not keys:
        raise UsageError("no signing key given", hint="pass --key PATH (airlock keygen makes one)")
    return [load_signer(k) for k in keys]


def build(spec_path: Path, options: BuildOptions) -> BuildResult:
    """Run the whole pipeline for ``spec_path``; returns the written bundle.

    Raises SpecError (spec/lock), FetchError/IntegrityError (sources), BuildError,
    SmokeTestError, KeyFileError, UsageError. Nothing is written to ``out_dir`` unless
    every step succeeded.
    """
    with console.working():  # no silence: each step shows progress or a "still working" line
        return _build(spec_path, options)


def _build(spec_path: Path, options: BuildOptions) -> BuildResult:
    epoch = _epoch(options)
    # A duration expiry ("180d") counts from the build time, so SOURCE_DATE_EPOCH keeps the
    # manifest reproducible.
    created = datetime.fromtimestamp(epoch, tz=timezone.utc)
    spec = load_spec(spec_path, now=created)
    check_expiry_after_now(
        spec.expires,
        created=created,
        now=datetime.now(timezone.utc),
        fix=f"expires: DATE in {spec_path}",
    )
    signers = _load_signers(options.keys)  # fail on a bad key before downloading gigabytes
    settings = HubSettings.from_env(offline=options.offline)
    if options.update_lock:
        lk, changed = lock(spec, settings=settings)
    else:
        lk, changed = check_lock(spec, load_lock(spec.lock_path)), False
    lock_bytes = lk.to_bytes()
    options.out_dir.mkdir(parents=True, exist_ok=True)
    client = HubClient(settings)
    st = _Staged()
    cache = _cache_dir()
    log_dir = options.out_dir / f"{spec.name}-{spec.version}.build-logs"
    derive = deriver_for(spec, lk, cache, log_dir)
    stage = Path(tempfile.mkdtemp(prefix=".airlock-stage-", dir=options.out_dir))
    try:
        stage_models(spec, lk, client, stage, st, derive)
        stage_far_side(stage, st)
        stage_readme(spec, stage, st)
        if (spec.engine is not None or spec.targets is not None) and not options.skip_engine:
            source = stage_engine(spec, stage, st, cache, log_dir) if spec.engine else None
            stage_wheels(spec, source, stage, st, cache, log_dir)
        stage_evidence(spec, stage, st, epoch=epoch, lock_bytes=lock_bytes)
        if "engine" in st.components:
            smoke_test(spec, stage, st)
        for w in st.warnings:
            console.warn(w)
        result = _pack(spec, stage, st, signers, options, epoch)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return BuildResult(
        path=result.path,
        manifest_sha256=result.manifest_sha256,
        lock_path=spec.lock_path,
        lock_changed=changed,
        warnings=tuple(st.warnings),
        files=result.files,
        size=result.size,
    )


def _pack(
    spec: Spec,
    stage: Path,
    st: _Staged,
    signers: Sequence[Signer],
    options: BuildOptions,
    epoch: int,
) -> PackResult:
    console.step("packing and signing")
    total = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    comps: Mapping[str, Mapping[str, Any]] = st.components
    with console.byte_progress("bundle", total) as advance:
        return pack(
            stage,
            name=spec.name,
            version=spec.version,
            sequence=spec.sequence,
            expires=spec.expires,
            components=comps,
            signers=signers,
            out_dir=options.out_dir,
            source_date_epoch=epoch,
            split=options.split,
            durable=options.durable,
            progress=advance,
            # digests checked while downloading: pack writes in one pass and re-checks them,
            # except cache blobs whose stat still shows the bytes that were checked
            known_digests={path: sha for path, (_size, sha) in st.digests.items()},
            stamps=st.stamps,
        )
