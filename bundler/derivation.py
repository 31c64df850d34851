"""Models made at build time: a safetensors checkpoint converted, a GGUF quantized.

The pinned llama.cpp of the spec's engine does the work (bundler.engine.convert,
bundler.engine.quantize); this module decides what to run for a locked model and what the
manifest records about it (``derived_from``, ``converter``; docs/FORMAT.md). The pipeline
fetches the inputs and stages the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bundler import console
from bundler.engine import convert as convertlib
from bundler.engine import quantize, sdist
from bundler.engine.buildcache import default_cache_dir
from bundler.errors import ConvertError, SpecError
from bundler.project.derive import DEFAULT_OUTTYPE, QUANTIZE_INPUTS, is_checkpoint
from bundler.project.lock import Lock, LockedModel
from bundler.project.spec import ModelSpec, Spec
from bundler.sources.ggufinfo import read_facts

__all__ = ["Derived", "Deriver", "converter_pins", "deriver_for", "derives"]


@dataclass(frozen=True)
class Derived:
    """A GGUF made at build time (in the build cache) and its lineage for the manifest."""

    path: Path
    size: int
    sha256: str
    name: str  # its file name in the bundle: <model>-<TYPE>.gguf
    lineage: dict[str, Any]


def derives(sm: ModelSpec, m: LockedModel) -> bool:
    """True when the model is made at build time (converted or quantized)."""
    return is_checkpoint(m.entrypoint) or sm.quantize is not None


@dataclass
class Deriver:
    """Converts and quantizes models with the engine's pinned llama.cpp (tools built once)."""

    source: sdist.SourceArchive
    cache_dir: Path
    log_dir: Path
    pins: Optional[Mapping[str, Any]] = None  # the lock's converter environment
    _conv: Optional[convertlib.Converter] = None
    _env: Optional[convertlib.ConverterEnv] = None
    _tool: Optional[quantize.QuantizeTool] = None

    def converter(self) -> convertlib.Converter:
        if self._conv is None:
            self._conv = convertlib.converter(self.source, cache_dir=self.cache_dir)
        return self._conv

    def environment(self) -> convertlib.ConverterEnv:
        if self._env is None:
            if self.pins is None:  # check_lock refuses this for a converted model
                raise SpecError("the lock records no converter environment")
            console.step("converter environment (the lock's wheels, hash-checked, cached)")
            self._env = convertlib.converter_env(
                self.pins["requirements"],
                packages=self.pins["packages"],
                cache_dir=self.cache_dir,
                log_dir=self.log_dir,
            )
        return self._env

    def tool(self) -> quantize.QuantizeTool:
        if self._tool is None:
            console.step("llama-quantize (from the same pinned source)")
            self._tool = quantize.build_quantize_tool(
                self.source, cache_dir=self.cache_dir, log_dir=self.log_dir
            )
        return self._tool

    def make(
        self, sm: ModelSpec, m: LockedModel, inputs: Mapping[str, tuple[Path, str]]
    ) -> Derived:
        """Make the model's GGUF from its locked, fetched files (repo path -> (file, sha256)).

        Raises:
            ConvertError: no config.json, an architecture the converter does not know, a
                quantized input, or a tool that failed.
        """
        assert m.repo is not None and m.commit is not None
        weights = is_checkpoint(m.entrypoint)
        conv_props: dict[str, Any] = {
            "llama_cpp_commit": self.source.llama_cpp_commit,
            "llama_cpp_python": {"version": self.source.version, "sha256": self.source.sha256},
            "script": None,
            "outtype": None,
            "quantize": sm.quantize,
            "quantize_tool_sha256": None,
        }
        if weights:
            conv = self.converter()
            if "config.json" not in inputs:
                raise ConvertError(
                    f"model {m.name}: the selection has no config.json",
                    hint="add config.json and the tokenizer files to the model's files/allow",
                )
            arch = convertlib.check_architecture(
                inputs["config.json"][0].read_bytes(), conv, model=m.name
            )
            env = self.environment()  # after the architecture check: that fails in seconds
            outtype = sm.convert.outtype if sm.convert is not None else DEFAULT_OUTTYPE
            if sm.convert is None:
                console.info(f"{m.name}: no GGUF in the selection; converting to {outtype}")
            console.step(f"converting {m.repo}@{m.commit[:12]} ({arch}) to {outtype}")
            made = convertlib.convert(
                conv,
                env,
                inputs,
                repo_name=m.repo.rsplit("/", 1)[-1],
                outtype=outtype,
                cache_dir=self.cache_dir,
                log_dir=self.log_dir,
            )
            gguf, gguf_sha, label = made.path, made.sha256, outtype.upper()
            conv_props.update(
                script={
                    "path": f"vendor/llama.cpp/{convertlib.SCRIPT}",
                    "sha256": conv.script_sha256,
                    "tree_sha256": conv.tree_sha256,
                },
                architecture=arch,
                outtype=outtype,
                environment={
                    "requirements": list(env.requirements),
                    "packages": [dict(p) for p in env.packages],
                    "lock_sha256": env.lock_sha256,
                },
                converted_sha256=made.sha256,
            )
        else:
            gguf, gguf_sha = inputs[m.entrypoint]
            facts = read_facts([gguf])
            if facts.quantization not in QUANTIZE_INPUTS:
                raise ConvertError(
                    f"model {m.name}: {m.entrypoint} is {facts.quantization}; quantize "
                    "takes an unquantized GGUF",
                    hint="select the repository's F16, BF16 or F32 GGUF file",
                )
            label = facts.quantization
        if sm.quantize is not None:
            tool = self.tool()
            console.step(f"quantizing {m.name} to {sm.quantize}")
            q = quantize.quantize(
                tool, gguf, input_sha256=gguf_sha, qtype=sm.quantize, cache_dir=self.cache_dir
            )
            gguf, gguf_sha, label = q.path, q.sha256, sm.quantize
            conv_props["quantize_tool_sha256"] = tool.sha256
        lineage = {
            "derived_from": {
                "repo": m.repo,
                "commit": m.commit,
                "revision": m.revision,
                "endpoint": m.endpoint,
                "files": [
                    {"path": f.path, "size": f.size, "sha256": f.sha256}
                    for f in sorted(m.files, key=lambda f: f.path)
                ],
            },
            "converter": conv_props,
        }
        return Derived(
            path=gguf,
            size=gguf.stat().st_size,
            sha256=gguf_sha,
            name=f"{m.name}-{label}.gguf",
            lineage=lineage,
        )


def converter_pins(spec: Spec, lk: Lock) -> Optional[dict[str, Any]]:
    """The converter environment ``airlock lock`` records (None: no model is converted).

    The vendored requirements of the engine's pinned ``convert_hf_to_gguf.py``, resolved
    to wheels with their sha256 (bundler.engine.convert.resolve_packages).
    """
    if not any(is_checkpoint(m.entrypoint) for m in lk.models):
        return None
    if spec.engine is None:
        raise SpecError(
            "a model is converted at build time, but the spec has no engine",
            hint="add 'engine: {llama_cpp_python: ...}': its pinned llama.cpp converts it",
        )
    cache = default_cache_dir()
    source = sdist.fetch_sdist(spec.engine.llama_cpp_python, cache_dir=cache)
    conv = convertlib.converter(source, cache_dir=cache)
    reqs = convertlib.converter_requirements(conv.tree)
    console.step("resolving the converter environment (" + ", ".join(reqs) + ")")
    packages = convertlib.resolve_packages(reqs, cache_dir=cache)
    return {
        "llama_cpp_python": source.version,
        "requirements": list(reqs),
        "packages": [dict(p) for p in packages],
    }


def deriver_for(spec: Spec, lk: Lock, cache: Path, log_dir: Path) -> Optional[Deriver]:
    """The converter and quantizer when a model is made at build time (None: none is)."""
    if not any(derives(sm, lk.model(sm.name)) for sm in spec.models):
        return None
    if spec.engine is None:
        raise SpecError(
            "a model is converted or quantized at build time, but the spec has no engine",
            hint="add 'engine: {llama_cpp_python: ...}': its pinned llama.cpp does the work",
        )
    source = sdist.fetch_sdist(spec.engine.llama_cpp_python, cache_dir=cache)
    return Deriver(source=source, cache_dir=cache, log_dir=log_dir, pins=lk.converter)
