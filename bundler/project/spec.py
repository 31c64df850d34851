"""The ``airlock.yaml`` spec: a typed model and a validator that reports every problem at once."""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from bundler.bundle.manifest import expiry_from_text
from bundler.errors import SpecError
from bundler.project.derive import ConvertSpec, parse_derive
from bundler.sources.wheelhouse import CONTROLLER_PYTHON_WHY, CONTROLLER_PYTHONS
from runtime.variants import X86_VARIANT_NAMES

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# ggml's x86 CPU backend variants in its order (written once, in runtime.variants).
CPU_VARIANTS = X86_VARIANT_NAMES
DEFAULT_EXPIRY_DAYS = 180


@dataclass(frozen=True)
class ModelSpec:
    """One model the bundle carries: from the Hub (``source: hub``) or a local path."""

    name: str
    source: str  # "hub" | "local"
    repo: Optional[str] = None
    revision: str = "main"
    files: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    entrypoint: Optional[str] = None
    path: Optional[Path] = None  # local source, resolved against the spec's directory
    license: Optional[str] = None  # declared license for a local source
    convert: Optional[ConvertSpec] = None  # convert the repo's safetensors (project.derive)
    quantize: Optional[str] = None  # a llama-quantize type, e.g. Q4_K_M

    @property
    def pinned(self) -> bool:
        """True when the revision already is an immutable commit id."""
        return self.source == "local" or bool(COMMIT_RE.match(self.revision))


@dataclass(frozen=True)
class CudaSpec:
    enabled: bool = False
    architectures: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineSpec:
    """The llama.cpp engine: the pinned llama-cpp-python sdist, CPU variants, CUDA."""

    llama_cpp_python: str
    cpu_variants: Union[str, tuple[str, ...]] = "all"
    cuda: CudaSpec = field(default_factory=CudaSpec)


@dataclass(frozen=True)
class TargetsSpec:
    python: tuple[str, ...] = ("3.11",)
    platforms: tuple[str, ...] = ("manylinux_2_28_x86_64",)
    requirements: tuple[str, ...] = ()
    # The portable llama-cpp-python wheel built from the engine's pinned source (a second
    # llama.cpp compile); off for wheelhouses that only need the server's clients.
    llama_cpp_python: bool = True
    # The far side's Ansible controller: one hash-pinned closure per Python.
    controller_python: tuple[str, ...] = CONTROLLER_PYTHONS


@dataclass(frozen=True)
class ServerSpec:
    port: int = 8080
    host: str = "0.0.0.0"  # noqa: S104 - the service listens on the host's network by design
    ctx_size: Union[str, int] = "auto"
    parallel: Union[str, int] = "auto"
    model: Optional[str] = None
    api_key_file: Optional[str] = None

    def properties(self) -> dict[str, Any]:
        """The agreed ``server_defaults`` property object."""
        return {
            "port": self.port,
            "host": self.host,
            "ctx_size": self.ctx_size,
            "parallel": self.parallel,
            "model": self.model,
            "api_key_file": self.api_key_file,
        }


@dataclass(frozen=True)
class Spec:
    """A validated ``airlock.yaml``; ``path`` is where it was read from."""

    name: str
    version: str
    sequence: int
    expires: dt.datetime
    models: tuple[ModelSpec, ...]
    server: ServerSpec
    engine: Optional[EngineSpec] = None
    targets: Optional[TargetsSpec] = None
    path: Optional[Path] = None

    @property
    def controller_python(self) -> tuple[str, ...]:
        """The controller Pythons the bundle carries a closure for (the default without
        ``targets``)."""
        return self.targets.controller_python if self.targets is not None else CONTROLLER_PYTHONS

    @property
    def lock_path(self) -> Path:
        """``airlock.lock`` next to the spec."""
        base = self.path.parent if self.path is not None else Path(".")
        return base / "airlock.lock"

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


# --- validation ------------------------------------------------------------------------------

# ``runtime`` is the engine section's first name, still read (templates/airlock.example.yaml).
ENGINE_KEY, ENGINE_ALIAS = "engine", "runtime"
_TOP_KEYS = (
    "name",
    "version",
    "sequence",
    "expires",
    "models",
    ENGINE_KEY,
    ENGINE_ALIAS,
    "targets",
    "server",
)
_MODEL_KEYS = (
    "name",
    "source",
    "repo",
    "revision",
    "files",
    "allow",
    "entrypoint",
    "path",
    "license",
    "convert",
    "quantize",
)
_ENGINE_KEYS = ("llama_cpp_python", "cpu_variants", "cuda")
_CUDA_KEYS = ("enabled", "architectures")
_TARGET_KEYS = ("python", "platforms", "requirements", "llama_cpp_python", "controller_python")
_SERVER_KEYS = ("port", "host", "ctx_size", "parallel", "model", "api_key_file")


class _Problems:
    """Collects ``key.path: what is wrong (how to fix)`` lines."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, message: str, hint: str = "") -> None:
        self.items.append(f"{key}: {message}" + (f" ({hint})" if hint else ""))

    def unknown_keys(self, where: str, data: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in sorted(str(k) for k in data):
            if key in allowed:
                continue
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(allowed)
            self.add(f"{where}{key}", "unknown key", hint)


def _type_name(value: Any) -> str:
    return type(value).__name__ if value is not None else "nothing"


def _str(p: _Problems, data: Mapping[str, Any], key: str, where: str, *, required: bool) -> Any:
    if key not in data or data[key] is None:
        if required:
            p.add(where + key, "missing value", f"add '{key}: ...'")
        return None
    value = data[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # version: 1.0 is a common YAML slip; accept it as text
    if not isinstance(value, str) or not value.strip():
        p.add(where + key, f"expected text, got {_type_name(value)}", "quote the value")
        return None
    return value


def _str_list(p: _Problems, data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        p.add(where + key, f"expected a list of text, got {_type_name(value)}", "e.g. [a, b]")
        return ()
    return tuple(str(v) for v in value)


def _auto_or_int(p: _Problems, data: Mapping[str, Any], key: str, where: str) -> Union[str, int]:
    value = data.get(key, "auto")
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    p.add(where + key, f"expected 'auto' or a positive integer, got {value!r}", "e.g. auto")
    return "auto"


def _expires(p: _Problems, value: Any, now: dt.datetime) -> dt.datetime:
    default = now + dt.timedelta(days=DEFAULT_EXPIRY_DAYS)
    if value is None:
        return default
    if isinstance(value, dt.datetime):
        result = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    elif isinstance(value, dt.date):
        result = dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    else:
        parsed = expiry_from_text(value, now=now) if isinstance(value, str) else None
        if parsed is None:
            hint = "use a date (2027-05-26) or a duration (180d)"
            p.add("expires", f"cannot read {value!r}", hint)
            return default
        result = parsed
    if result <= now:
        p.add("expires", f"{result:%Y-%m-%d} is in the past", "choose a later date")
    return result.astimezone(dt.timezone.utc)


def default_model_name(repo: str) -> str:
    """The name of a Hub model entry without ``name:``, from a repo id that matches
    ``REPO_RE``: its last path segment lower-cased, cut to 64 characters, trailing
    punctuation dropped (``Qwen/Qwen2.5-0.5B-Instruct-GGUF`` -> ``qwen2.5-0.5b-instruct-gguf``).
    REPO_RE's characters are a name's, upper case aside, and it starts with one of ``a-z0-9``."""
    return repo.rsplit("/", 1)[-1].lower()[:64].rstrip("-._")


def _model(p: _Problems, raw: Any, i: int, base: Path) -> Optional[ModelSpec]:
    where = f"models[{i}]."
    if not isinstance(raw, dict):
        p.add(f"models[{i}]", f"expected a mapping, got {_type_name(raw)}", "name: ..., repo: ...")
        return None
    p.unknown_keys(where, raw, _MODEL_KEYS)
    source = raw.get("source", "hub")
    # a Hub model may leave its name out: it defaults to the repo's name (below)
    name = _str(p, raw, "name", where, required=source != "hub")
    if name is not None and not NAME_RE.match(name):
        p.add(where + "name", f"{name!r} is not a valid name", "lowercase letters, digits, . _ -")
    if source not in ("hub", "local"):
        p.add(where + "source", f"unknown source {source!r}", "use 'hub' or 'local'")
        return None
    files = _str_list(p, raw, "files", where)
    allow = _str_list(p, raw, "allow", where)
    entrypoint = _str(p, raw, "entrypoint", where, required=False)
    license_ = _str(p, raw, "license", where, required=False)
    convert, quantize = parse_derive(raw, where, p.add)
    if source == "local":
        path = _str(p, raw, "path", where, required=True)
        for key in ("repo", "revision", "files", "allow", "entrypoint", "convert", "quantize"):
            if key in raw:
                p.add(where + key, "not used by a local source", "remove it or use source: hub")
        if path is None or name is None:
            return None
        resolved = (base / path).resolve() if not Path(path).is_absolute() else Path(path)
        if not resolved.is_file():
            p.add(where + "path", f"{resolved} is not a file", "point it at a .gguf file")
        return ModelSpec(name=name, source="local", path=resolved, license=license_)
    repo = _str(p, raw, "repo", where, required=True)
    if repo is not None and not REPO_RE.match(repo):
        p.add(where + "repo", f"{repo!r} is not an 'org/name' repository id", "e.g. org/model-GGUF")
    revision = _str(p, raw, "revision", where, required=False) or "main"
    if files and allow:
        p.add(where + "allow", "use either 'files' or 'allow', not both", "drop one of them")
    if "path" in raw:
        p.add(where + "path", "only a local source has a path", "add 'source: local'")
    if "name" not in raw and repo is not None and REPO_RE.match(repo):
        name = default_model_name(repo)
    if name is None or repo is None:
        return None
    return ModelSpec(
        name=name,
        source="hub",
        repo=repo,
        revision=revision,
        files=files,
        allow=allow,
        entrypoint=entrypoint,
        license=license_,
        convert=convert,
        quantize=quantize,
    )


def _engine(p: _Problems, data: Mapping[str, Any]) -> Optional[EngineSpec]:
    """The ``engine`` section (or its older name ``runtime``); problems name the key used."""
    if ENGINE_KEY in data and ENGINE_ALIAS in data:
        p.add(
            ENGINE_ALIAS,
            f"'{ENGINE_ALIAS}' is the older name of '{ENGINE_KEY}'; the spec has both",
            f"keep only '{ENGINE_KEY}'",
        )
        return None
    key = ENGINE_ALIAS if ENGINE_ALIAS in data else ENGINE_KEY
    raw = data.get(key)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        p.add(key, f"expected a mapping, got {_type_name(raw)}", "llama_cpp_python: 0.3.16")
        return None
    p.unknown_keys(f"{key}.", raw, _ENGINE_KEYS)
    version = _str(p, raw, "llama_cpp_python", f"{key}.", required=True)
    variants_raw = raw.get("cpu_variants", "all")
    variants: Union[str, tuple[str, ...]] = "all"
    if variants_raw != "all":
        listed = _str_list(p, raw, "cpu_variants", f"{key}.")
        for v in listed:
            if v not in CPU_VARIANTS:
                close = difflib.get_close_matches(v, CPU_VARIANTS, n=1)
                hint = (
                    f"did you mean '{close[0]}'?" if close else "one of " + ", ".join(CPU_VARIANTS)
                )
                p.add(f"{key}.cpu_variants", f"unknown CPU variant {v!r}", hint)
        if listed and "x64" not in listed:
            p.add(f"{key}.cpu_variants", "must include 'x64'", "x64 is the fallback for any CPU")
        variants = listed
    cuda = CudaSpec()
    cuda_raw = raw.get("cuda")
    if cuda_raw is not None:
        if not isinstance(cuda_raw, dict):
            p.add(f"{key}.cuda", f"expected a mapping, got {_type_name(cuda_raw)}", "enabled: true")
        else:
            p.unknown_keys(f"{key}.cuda.", cuda_raw, _CUDA_KEYS)
            enabled = cuda_raw.get("enabled", False)
            if not isinstance(enabled, bool):
                p.add(f"{key}.cuda.enabled", f"expected true/false, got {enabled!r}", "")
                enabled = False
            archs = _str_list(p, cuda_raw, "architectures", f"{key}.cuda.")
            for a in archs:
                if not re.match(r"^\d{2,3}[a-z]?(-real|-virtual)?$", a):
                    p.add(f"{key}.cuda.architectures", f"{a!r} is not a CUDA arch", "e.g. '80'")
            if enabled and not archs:
                p.add(f"{key}.cuda.architectures", "missing value", "e.g. ['80', '90']")
            cuda = CudaSpec(enabled=enabled, architectures=archs)
    if version is None:
        return None
    return EngineSpec(llama_cpp_python=version, cpu_variants=variants, cuda=cuda)


def _targets(p: _Problems, raw: Any) -> Optional[TargetsSpec]:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        p.add("targets", f"expected a mapping, got {_type_name(raw)}", "python: ['3.11']")
        return None
    p.unknown_keys("targets.", raw, _TARGET_KEYS)
    pythons = _str_list(p, raw, "python", "targets.") or TargetsSpec().python
    for v in pythons:
        if not re.match(r"^3\.\d{1,2}$", v):
            p.add("targets.python", f"{v!r} is not a Python version", "e.g. '3.11' (quote it)")
    platforms = _str_list(p, raw, "platforms", "targets.") or TargetsSpec().platforms
    binding = raw.get("llama_cpp_python", True)
    if not isinstance(binding, bool):
        p.add(
            "targets.llama_cpp_python",
            f"expected true/false, got {binding!r}",
            "true ships the llama-cpp-python wheel, false leaves it out",
        )
        binding = True
    return TargetsSpec(
        python=pythons,
        platforms=platforms,
        requirements=_str_list(p, raw, "requirements", "targets."),
        llama_cpp_python=binding,
        controller_python=_controller_python(p, raw),
    )


def _controller_python(p: _Problems, raw: dict[str, Any]) -> tuple[str, ...]:
    key = "targets.controller_python"
    if "controller_python" not in raw:
        return CONTROLLER_PYTHONS
    versions = _str_list(p, raw, "controller_python", "targets.")
    supported = ", ".join(f"'{v}'" for v in CONTROLLER_PYTHONS)
    if not versions:
        if isinstance(raw["controller_python"], list) or raw["controller_python"] is None:
            p.add(key, "expected a non-empty list of Python versions", f"e.g. [{supported}]")
        return CONTROLLER_PYTHONS
    for v in versions:
        if not re.match(r"^3\.\d{1,2}$", v):
            p.add(key, f"{v!r} is not a Python version", "e.g. '3.12' (quote it)")
        elif v not in CONTROLLER_PYTHONS:
            p.add(
                key,
                f"Python {v} cannot run the controller: {CONTROLLER_PYTHON_WHY}",
                f"choose from {supported}",
            )
    for v in sorted({v for v in versions if versions.count(v) > 1}):
        p.add(key, f"{v!r} is listed twice", "list each Python once")
    return versions


def _server(p: _Problems, raw: Any, models: Sequence[ModelSpec]) -> ServerSpec:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        p.add("server", f"expected a mapping, got {_type_name(raw)}", "port: 8080")
        raw = {}
    p.unknown_keys("server.", raw, _SERVER_KEYS)
    port = raw.get("port", 8080)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        p.add("server.port", f"expected a port number 1-65535, got {port!r}", "e.g. 8080")
        port = 8080
    host = _str(p, raw, "host", "server.", required=False) or ServerSpec().host
    model = _str(p, raw, "model", "server.", required=False)
    names = [m.name for m in models]
    if model is None and names:
        model = names[0]
    elif model is not None and names and model not in names:
        close = difflib.get_close_matches(model, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "one of " + ", ".join(names)
        p.add("server.model", f"no model named {model!r}", hint)
    return ServerSpec(
        port=port,
        host=host,
        ctx_size=_auto_or_int(p, raw, "ctx_size", "server."),
        parallel=_auto_or_int(p, raw, "parallel", "server."),
        model=model,
        api_key_file=_str(p, raw, "api_key_file", "server.", required=False),
    )


def parse_spec(
    data: Any, *, base_dir: Path, path: Optional[Path] = None, now: Optional[dt.datetime] = None
) -> Spec:
    """Validate the parsed YAML ``data``; raises SpecError listing every problem."""
    now = now or dt.datetime.now(dt.timezone.utc)
    p = _Problems()
    if not isinstance(data, dict):
        raise SpecError(
            f"{path or 'spec'}: expected a YAML mapping at the top level",
            hint="start from templates/airlock.example.yaml",
        )
    p.unknown_keys("", data, _TOP_KEYS)
    name = _str(p, data, "name", "", required=True)
    if name is not None and not NAME_RE.match(name):
        p.add("name", f"{name!r} is not a valid name", "lowercase letters, digits, . _ -")
    version = _str(p, data, "version", "", required=True)
    sequence = data.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
        hint = "a non-negative integer that grows with every release (rollback protection)"
        p.add("sequence", f"expected an integer, got {sequence!r}", hint)
        sequence = 0
    expires = _expires(p, data.get("expires"), now)
    models: list[ModelSpec] = []
    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        p.add("models", "expected a non-empty list of models", "see templates/airlock.example.yaml")
    else:
        for i, raw in enumerate(raw_models):
            m = _model(p, raw, i, base_dir)
            if m is not None:
                models.append(m)
        seen: set[str] = set()
        for m in models:
            if m.name in seen:
                p.add("models", f"model name {m.name!r} used twice", "give each model its own name")
            seen.add(m.name)
    engine = _engine(p, data)
    targets = _targets(p, data.get("targets"))
    server = _server(p, data.get("server"), models)
    if p.items:
        where = str(path) if path is not None else "the spec"
        raise SpecError(
            f"{where} has {len(p.items)} problem(s)",
            problems=p.items,
            hint="fix every listed key; templates/airlock.example.yaml documents them all",
        )
    assert name is not None and version is not None
    return Spec(
        name=name,
        version=version,
        sequence=sequence,
        expires=expires,
        models=tuple(models),
        server=server,
        engine=engine,
        targets=targets,
        path=path,
    )


def load_spec(path: Path, *, now: Optional[dt.datetime] = None) -> Spec:
    """Read and validate ``airlock.yaml``; raises SpecError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot read spec {path}: {e.strerror}", hint="check the path") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{path} is not valid YAML: {e}", hint="fix the YAML syntax") from e
    return parse_spec(data, base_dir=path.resolve().parent, path=path, now=now)
