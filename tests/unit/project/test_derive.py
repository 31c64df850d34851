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
