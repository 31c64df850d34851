"""The converter's requirements, architectures and lineage facts (pure parts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundler.engine.convert import (
    TORCH_REQUIREMENT,
    Converter,
    check_architecture,
    converter_requirements,
    known_architectures,
)
from bundler.engine.quantize import parse_types
from bundler.errors import ConvertError


def _tree(tmp_path: Path) -> Path:
    req = tmp_path / "requirements"
    req.mkdir()
    (req / "requirements-convert_legacy_llama.txt").write_text(
        "numpy~=2.2.6\nsentencepiece>=0.1.98,<0.3.0\n\ngguf>=0.1.0\nprotobuf>=4.21.0,<5.0.0\n"
    )
    (req / "requirements-convert_hf_to_gguf.txt").write_text(
        "-r ./requirements-convert_legacy_llama.txt\n"
        "--extra-index-url https://download.pytorch.org/whl/cpu\n"
        "## a comment\ntorch==2.11.0\n"
    )
    conv = tmp_path / "conversion"
    conv.mkdir()
    (conv / "__init__.py").write_text(
        'TEXT_MODEL_MAP: dict[str, str] = {\n    "LlamaForCausalLM": "llama",\n'
        '    "MistralForCausalLM": "llama",\n}\n'
        'MMPROJ_MODEL_MAP: dict[str, str] = {\n    "LlavaForConditionalGeneration": "llava",\n}\n'
    )
    return tmp_path


def test_requirements_follow_includes_drop_index_options_and_the_vendored_gguf(
    tmp_path: Path,
) -> None:
    assert converter_requirements(_tree(tmp_path)) == (
        "numpy~=2.2.6",
        "protobuf>=4.21.0,<5.0.0",
        "sentencepiece>=0.1.98,<0.3.0",
        TORCH_REQUIREMENT,
    )


def test_known_architectures_are_the_text_models_only(tmp_path: Path) -> None:
    assert known_architectures(_tree(tmp_path)) == {"LlamaForCausalLM", "MistralForCausalLM"}


def _conv(tmp_path: Path) -> Converter:
    tree = _tree(tmp_path)
    return Converter(
        tree=tree,
        script_sha256="0" * 64,
        tree_sha256="1" * 64,
        llama_cpp_commit="a" * 40,
        architectures=known_architectures(tree),
    )


def test_rejects_unknown_architecture_naming_it(tmp_path: Path) -> None:
    config = json.dumps({"architectures": ["LlavaForConditionalGeneration"]}).encode()
    with pytest.raises(ConvertError, match="'LlavaForConditionalGeneration'"):
        check_architecture(config, _conv(tmp_path), model="m")


def test_text_config_architecture_is_the_one_checked(tmp_path: Path) -> None:
    config = {"architectures": ["Other"], "text_config": {"architectures": ["LlamaForCausalLM"]}}
    assert check_architecture(json.dumps(config).encode(), _conv(tmp_path), model="m") == (
        "LlamaForCausalLM"
    )


def test_rejects_config_without_architecture(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="names no architecture"):
        check_architecture(b"{}", _conv(tmp_path), model="m")


def test_quantize_types_are_read_from_the_tools_usage() -> None:
    usage = (
        "usage: llama-quantize [--help] model-f32.gguf type\n"
        "-----\n allowed quantization types\n-----\n\n"
        "   2  or  Q4_0    :  4.34G, +0.4685 ppl @ Llama-3-8B\n"
        "  15  or  Q4_K_M  :  4.58G, +0.1754 ppl @ Llama-3-8B\n"
        "          COPY    : only copy tensors, no quantizing\n"
    )
    assert parse_types(usage) == ("Q4_0", "Q4_K_M", "COPY")
