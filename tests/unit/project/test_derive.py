"""The spec's convert/quantize keys and the checkpoint entrypoint rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bundler.errors import SpecError
from bundler.project.derive import QUANT_TYPES, ConvertSpec, is_checkpoint, safetensors_entrypoint
from bundler.project.spec import parse_spec


def _spec(model: dict[str, Any], tmp_path: Path) -> Any:
    data = {
        "name": "x",
        "version": "1",
        "sequence": 1,
        "models": [{"name": "m", "repo": "org/m", **model}],
    }
    return parse_spec(data, base_dir=tmp_path)


def test_convert_and_quantize_are_read(tmp_path: Path) -> None:
    spec = _spec({"convert": {"outtype": "BF16"}, "quantize": "q4_k_m"}, tmp_path)
    assert spec.models[0].convert == ConvertSpec(outtype="bf16")
    assert spec.models[0].quantize == "Q4_K_M"


def test_rejects_unknown_quantization_type_listing_the_tools_types(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        _spec({"quantize": "Q4_K_X"}, tmp_path)
    (problem,) = e.value.problems
    assert problem.startswith("models[0].quantize: unknown quantization type 'Q4_K_X'")
    assert "Q4_K_M" in problem and all(t in problem for t in QUANT_TYPES)


def test_rejects_unknown_outtype_and_convert_keys(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        _spec({"convert": {"outtype": "f8", "threads": 4}}, tmp_path)
    assert sorted(e.value.problems) == [
        "models[0].convert.outtype: unknown outtype 'f8' (one of f16, bf16, q8_0)",
        "models[0].convert.threads: unknown key (allowed: outtype)",
    ]


def test_local_model_cannot_be_converted(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    data = {
        "name": "x",
        "version": "1",
        "sequence": 1,
        "models": [{"name": "m", "source": "local", "path": "a.gguf", "quantize": "Q8_0"}],
    }
    with pytest.raises(SpecError) as e:
        parse_spec(data, base_dir=tmp_path)
    assert any(
        p.startswith("models[0].quantize: not used by a local source") for p in e.value.problems
    )


def test_checkpoint_entrypoint_prefers_the_index() -> None:
    sharded = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert safetensors_entrypoint([*sharded, "model.safetensors.index.json"]) == (
        "model.safetensors.index.json"
    )
    assert safetensors_entrypoint(sharded) is None, "shards without their index are refused"
    assert safetensors_entrypoint(["model.safetensors", "config.json"]) == "model.safetensors"
    assert safetensors_entrypoint(["a.gguf"]) is None
    assert is_checkpoint("model.safetensors.index.json") and not is_checkpoint("a.gguf")


def _converted_lock(converter: Any) -> Any:
    from bundler.project.lock import Lock, LockedFile, LockedModel

    files = (LockedFile(path="model.safetensors", size=1, sha256="a" * 64),)
    model = LockedModel(
        name="m",
        source="hub",
        files=files,
        entrypoint="model.safetensors",
        repo="org/m",
        revision="main",
        commit="c" * 40,
    )
    return Lock(models=(model,), converter=converter)


PINS = {
    "llama_cpp_python": "0.3.36",
    "requirements": ["torch==2.13.0"],
    "packages": [{"name": "torch", "version": "2.13.0+cpu", "file": "t.whl", "sha256": "b" * 64}],
}


def test_lock_records_the_converter_environment_and_reads_it_back() -> None:
    from bundler.project.lock import parse_lock

    lk = _converted_lock(PINS)
    assert parse_lock(lk.to_bytes()).converter == PINS
    assert b'"converter"' not in _converted_lock(None).to_bytes()


def test_refuses_lock_of_a_converted_model_without_converter_pins(tmp_path: Path) -> None:
    from bundler.project.lock import lock_problems

    spec = parse_spec(
        {
            "name": "x",
            "version": "1",
            "sequence": 1,
            "models": [{"name": "m", "repo": "org/m", "convert": {}}],
            "engine": {"llama_cpp_python": "0.3.36"},
        },
        base_dir=tmp_path,
    )
    assert lock_problems(spec, _converted_lock(PINS)) == []
    (problem,) = lock_problems(spec, _converted_lock(None))
    assert problem.startswith("converter: models m are converted at build time")
    other = {**PINS, "llama_cpp_python": "0.3.35"}
    assert lock_problems(spec, _converted_lock(other)) == [
        "converter.llama_cpp_python: spec has '0.3.36', lock has '0.3.35'"
    ]


def test_rejects_converter_pins_without_digests() -> None:
    from bundler.project.lock import parse_lock

    bad = {**PINS, "packages": [{"name": "torch", "version": "1", "file": "t.whl", "sha256": "x"}]}
    with pytest.raises(SpecError, match="is not 64 hex digits"):
        parse_lock(_converted_lock(bad).to_bytes())
