"""One typed view of what the signed manifest says about the engine and the models.

The producer writes ``components.engine.properties``
(``bundler.engine.llamacpp.engine_properties``, ``glibc_min`` from the build's symbol audit,
``server_defaults`` from the spec) and ``components.models.properties.models`` (one record
per model, ``bundler.pipeline.stage_models``; docs/FORMAT.md). Readers on both sides of the gap
take these records instead of digging in the dicts, so every default is written once, here.
Parsing is as tolerant as the readers always were: a missing key or ``null`` is the default
(``None``, an empty tuple or dict, or the layout the producer writes); a value of the wrong
type is a :class:`UsageError` naming the field, never a silent default. Each record keeps
the raw object in ``properties`` for anything not modelled.
Standard library only: target hosts import this (3.8+).
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from runtime.errors import UsageError

# Where the producer puts the engine in the bundle; also the readers' defaults.
ENGINE_SERVER = "engine/bin/llama-server"
ENGINE_LIB_DIR = "engine/lib"
CUDA_RUNTIME_DIR = "engine/lib/cuda"
CUDA_MODULE = "engine/lib/libggml-cuda.so"

_ENGINE = "components.engine.properties"
_MODELS = "components.models.properties.models"


class CudaFacts(NamedTuple):
    """``components.engine.properties.cuda``: the CUDA backend module and its runtime."""

    architectures: Tuple[str, ...]  # "80", "90", ...
    cuda_version: Optional[str]
    min_driver: Optional[str]
    module: Optional[str]  # None: not recorded, so not checked against the files
    runtime_dir: str  # defaulted to <lib_dir>/cuda, i.e. CUDA_RUNTIME_DIR
    runtime_libraries: Tuple[str, ...]
    runtime_wheels: Tuple[str, ...]
    runtime_wheel_files: Optional[Tuple[Dict[str, Any], ...]]  # None: exact wheels unknown
    runtime_wheel_files_note: Optional[str]
    nvcc: Optional[str]
    vmm: Optional[bool]
    properties: Dict[str, Any]


class EngineFacts(NamedTuple):
    """``components.engine.properties``: the llama.cpp build and how to launch it."""

    llama_cpp_python: Dict[str, Any]  # the pinned sdist: version, sdist, sha256, url
    llama_cpp_commit: Optional[str]
    cmake_flags: Tuple[str, ...]
    cpu_variants: Tuple[str, ...]
    cuda: Optional[CudaFacts]  # None: no CUDA backend in the bundle
    compiler: Optional[str]
    cmake: Optional[str]
    arch: Optional[str]
    glibc_min: Optional[str]  # the oldest glibc a host may have ("2.34")
    server: str  # defaulted to ENGINE_SERVER
    lib_dir: str  # defaulted to ENGINE_LIB_DIR
    backend_dir: str  # defaulted to lib_dir
    server_defaults: Dict[str, Any]  # the spec's server section (port, host, ctx_size, ...)
    server_flags: Tuple[str, ...]  # options the server is known to accept; () unknown
    properties: Dict[str, Any]


class GgufFacts(NamedTuple):
    """A model's ``gguf`` record (``bundler.sources.ggufinfo.GgufFacts.properties``); all None
    when the manifest has none."""

    architecture: Optional[str]
    parameters: Optional[int]
    quantization: Optional[str]
    context_length: Optional[int]
    embedding_length: Optional[int]
    block_count: Optional[int]
    head_count: Optional[int]
    head_count_kv: Optional[int]
    chat_template: Optional[bool]
    tensor_count: Optional[int]
    split_count: Optional[int]
    file_size: Optional[int]
    properties: Dict[str, Any]


class ModelFacts(NamedTuple):
    """One record of ``components.models.properties.models``."""

    name: Optional[str]
    source: Optional[str]  # "hub" or "local"
    license: Optional[str]
    license_permissive: Optional[bool]
    gated: Optional[bool]
    license_files: Tuple[str, ...]
    card: Optional[str]
    entrypoint: Optional[str]
    files: Tuple[Dict[str, Any], ...]  # {path, hub_path, sha256, size, lfs}
    gguf: GgufFacts
    repo: Optional[str]
    revision: Optional[str]
    commit: Optional[str]
    endpoint: Optional[str]
    properties: Dict[str, Any]
    # A model made at build time: what it was made from ({repo, commit, revision, endpoint,
    # files: [{path, size, sha256}]}) and how ({script, llama_cpp_commit, environment,
    # outtype, quantize, ...}); empty for a GGUF shipped as published.
    derived_from: Dict[str, Any]
    converter: Dict[str, Any]

    @property
    def lineage(self) -> Optional[str]:
        """ "converted from ORG/REPO@COMMIT with llama.cpp COMMIT" (None: shipped as published)."""
        if not self.derived_from:
            return None
        verb = "converted" if self.converter.get("outtype") else "quantized"
        return "{} from {}@{} with llama.cpp {}".format(
            verb,
            self.derived_from.get("repo"),
            self.derived_from.get("commit"),
            self.converter.get("llama_cpp_commit"),
        )


# --------------------------------------------------------------------------- field parsers


def _problem(where: str, what: str, value: Any) -> UsageError:
    return UsageError(
        f"{where} in the manifest is {what}, not {value!r}",
        hint="the manifest was not written by airlock build; rebuild the bundle",
    )


def _str(raw: Dict[str, Any], key: str) -> Optional[str]:
    value = raw.get(key)
    return None if value is None else str(value)


def _int(raw: Dict[str, Any], key: str, where: str) -> Optional[int]:
    value = raw.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _problem(f"{where}.{key}", "not an integer", value) from None


def _bool(raw: Dict[str, Any], key: str) -> Optional[bool]:
    value = raw.get(key)
    return None if value is None else bool(value)


def _dict(raw: Dict[str, Any], key: str, where: str) -> Dict[str, Any]:
    value = raw.get(key)
    if not value:
        return {}
    if not isinstance(value, dict):
        raise _problem(f"{where}.{key}", "not an object", value)
    return dict(value)


def _list(raw: Dict[str, Any], key: str, where: str) -> List[Any]:
    value = raw.get(key)
    if not value:
        return []
    if not isinstance(value, (list, tuple)):
        raise _problem(f"{where}.{key}", "not a list", value)
    return list(value)


def _strs(raw: Dict[str, Any], key: str, where: str) -> Tuple[str, ...]:
    return tuple(str(v) for v in _list(raw, key, where))


def _objects(raw: Dict[str, Any], key: str, where: str) -> Tuple[Dict[str, Any], ...]:
    out = []
    for i, item in enumerate(_list(raw, key, where)):
        if not isinstance(item, dict):
            raise _problem(f"{where}.{key}[{i}]", "not an object", item)
        out.append(dict(item))
    return tuple(out)


# --------------------------------------------------------------------------- records


def parse_cuda(raw: Dict[str, Any], *, lib_dir: str = ENGINE_LIB_DIR) -> CudaFacts:
    """The CUDA record; ``lib_dir`` is the engine's, under which the runtime defaults."""
    where = _ENGINE + ".cuda"
    wheel_files = None
    if raw.get("runtime_wheel_files") is not None:
        wheel_files = _objects(raw, "runtime_wheel_files", where)
    return CudaFacts(
        architectures=_strs(raw, "architectures", where),
        cuda_version=_str(raw, "cuda_version"),
        min_driver=_str(raw, "min_driver"),
        module=_str(raw, "module") or None,
        runtime_dir=_str(raw, "runtime_dir") or lib_dir + "/cuda",
        runtime_libraries=_strs(raw, "runtime_libraries", where),
        runtime_wheels=_strs(raw, "runtime_wheels", where),
        runtime_wheel_files=wheel_files,
        runtime_wheel_files_note=_str(raw, "runtime_wheel_files_note"),
        nvcc=_str(raw, "nvcc"),
        vmm=_bool(raw, "vmm"),
        properties=dict(raw),
    )


def parse_engine(raw: Dict[str, Any]) -> EngineFacts:
    """``components.engine.properties`` as a record. Raises UsageError for a value of
    the wrong type."""
    if not isinstance(raw, dict):
        raise UsageError(f"{_ENGINE} in the manifest is not an object")
    lib_dir = _str(raw, "lib_dir") or ENGINE_LIB_DIR
    cuda_raw = raw.get("cuda")
    if cuda_raw and not isinstance(cuda_raw, dict):
        raise _problem(_ENGINE + ".cuda", "not an object", cuda_raw)
    return EngineFacts(
        llama_cpp_python=_dict(raw, "llama_cpp_python", _ENGINE),
        llama_cpp_commit=_str(raw, "llama_cpp_commit"),
        cmake_flags=_strs(raw, "cmake_flags", _ENGINE),
        cpu_variants=_strs(raw, "cpu_variants", _ENGINE),
        # An empty object has always meant "no CUDA backend", like null.
        cuda=parse_cuda(cuda_raw, lib_dir=lib_dir) if cuda_raw else None,
        compiler=_str(raw, "compiler"),
        cmake=_str(raw, "cmake"),
        arch=_str(raw, "arch"),
        glibc_min=_str(raw, "glibc_min"),
        server=_str(raw, "server") or ENGINE_SERVER,
        lib_dir=lib_dir,
        backend_dir=_str(raw, "backend_dir") or lib_dir,
        server_defaults=_dict(raw, "server_defaults", _ENGINE),
        server_flags=_strs(raw, "server_flags", _ENGINE),
        properties=dict(raw),
    )


def parse_gguf(raw: Optional[Dict[str, Any]], *, where: str = "gguf") -> GgufFacts:
    """A model's ``gguf`` record; every field None when ``raw`` is None or empty."""
    if not raw:
        raw = {}
    if not isinstance(raw, dict):
        raise _problem(where, "not an object", raw)
    return GgufFacts(
        architecture=_str(raw, "architecture"),
        parameters=_int(raw, "parameters", where),
        quantization=_str(raw, "quantization"),
        context_length=_int(raw, "context_length", where),
        embedding_length=_int(raw, "embedding_length", where),
        block_count=_int(raw, "block_count", where),
        head_count=_int(raw, "head_count", where),
        head_count_kv=_int(raw, "head_count_kv", where),
        chat_template=_bool(raw, "chat_template"),
        tensor_count=_int(raw, "tensor_count", where),
        split_count=_int(raw, "split_count", where),
        file_size=_int(raw, "file_size", where),
        properties=dict(raw),
    )


def parse_model(raw: Dict[str, Any], *, where: str = "model") -> ModelFacts:
    """One model record. Raises UsageError for a value of the wrong type."""
    if not isinstance(raw, dict):
        raise _problem(where, "not an object", raw)
    return ModelFacts(
        name=_str(raw, "name"),
        source=_str(raw, "source"),
        license=_str(raw, "license"),
        license_permissive=_bool(raw, "license_permissive"),
        gated=_bool(raw, "gated"),
        license_files=_strs(raw, "license_files", where),
        card=_str(raw, "card"),
        entrypoint=_str(raw, "entrypoint"),
        files=_objects(raw, "files", where),
        gguf=parse_gguf(raw.get("gguf"), where=where + ".gguf"),
        repo=_str(raw, "repo"),
        revision=_str(raw, "revision"),
        commit=_str(raw, "commit"),
        endpoint=_str(raw, "endpoint"),
        properties=dict(raw),
        derived_from=_dict(raw, "derived_from", where),
        converter=_dict(raw, "converter", where),
    )


# --------------------------------------------------------------------------- the manifest


def engine_of(manifest: Dict[str, Any]) -> Optional[EngineFacts]:
    """The engine, or None when the manifest has no ``components.engine.properties``.
    Raises UsageError when it is there but malformed."""
    try:
        raw = manifest["components"]["engine"]["properties"]
    except (KeyError, TypeError):
        return None
    return parse_engine(raw)


def require_engine(manifest: Dict[str, Any]) -> EngineFacts:
    """The engine; raises UsageError when the manifest has none (not a bundle's manifest)."""
    engine = engine_of(manifest)
    if engine is None:
        raise UsageError(
            f"the manifest has no {_ENGINE}",
            hint="pass the bundle's airlock/manifest.json (a bundle built by airlock build)",
        )
    return engine


def models_of(manifest: Dict[str, Any]) -> List[ModelFacts]:
    """The bundle's models in manifest order (empty when it has none)."""
    try:
        raw = manifest["components"]["models"]["properties"]["models"]
    except (KeyError, TypeError):
        return []
    if not raw:
        return []
    if not isinstance(raw, list):
        raise _problem(_MODELS, "not a list", raw)
    return [parse_model(m, where=f"{_MODELS}[{i}]") for i, m in enumerate(raw)]


def find_model(manifest: Dict[str, Any], wanted: Optional[str]) -> ModelFacts:
    """The model named ``wanted``, or the first one when ``wanted`` is None. Raises
    UsageError when the manifest lists no models or none of that name."""
    models = models_of(manifest)
    if not models:
        raise UsageError(
            f"the manifest lists no models ({_MODELS})",
            hint="pass the bundle's airlock/manifest.json",
        )
    if wanted is None:
        return models[0]
    for m in models:
        if m.name == wanted:
            return m
    raise UsageError(
        f"model {wanted!r} is not in the bundle",
        hint="choose one of: {}".format(", ".join(str(m.name) for m in models)),
    )
