"""GGUF facts from generated tiny models; corrupt, foreign and incomplete models refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler.demo.tinymodel import TinyModelOptions, write_tiny_model
from bundler.errors import GgufError
from bundler.sources.ggufinfo import (
    entrypoint_candidates,
    read_facts,
    shards_of,
    split_parts,
)


def test_facts_of_a_tiny_llama(tmp_path: Path) -> None:
    (path,) = write_tiny_model(tmp_path / "tiny.gguf", TinyModelOptions(dim=64, layers=2, ff=128))
    facts = read_facts([path])
    assert facts.architecture == "llama"
    assert facts.quantization == "F32"
    assert (facts.context_length, facts.embedding_length, facts.block_count) == (2048, 64, 2)
    assert (facts.head_count, facts.head_count_kv) == (4, 4)
    assert facts.chat_template is True
    assert facts.tensor_count == 1 + 9 * 2 + 2
    n_vocab = 3 + 256 + 14
    per_layer = 2 * 64 + 4 * 64 * 64 + 3 * 64 * 128
    assert facts.parameters == 2 * n_vocab * 64 + 2 * per_layer + 64
    assert facts.split_count == 1 and facts.file_size == path.stat().st_size
    assert set(facts.properties()) >= {"architecture", "parameters", "quantization", "file_size"}


def test_f16_without_chat_template(tmp_path: Path) -> None:
    opts = TinyModelOptions(f16=True, chat_template=False, kv_heads=2)
    (path,) = write_tiny_model(tmp_path / "t.gguf", opts)
    facts = read_facts([path])
    assert facts.quantization == "F16" and facts.chat_template is False
    assert facts.head_count_kv == 2


def test_split_model_counts_as_one_with_totals(tmp_path: Path) -> None:
    paths = write_tiny_model(tmp_path / "big.gguf", TinyModelOptions(split=3))
    names = [p.name for p in paths]
    assert names == [f"big-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert entrypoint_candidates(names) == [names[0]]
    assert shards_of(names[0], names) == names
    facts = read_facts(paths)
    single = read_facts(write_tiny_model(tmp_path / "one.gguf"))
    assert facts.split_count == 3
    assert facts.tensor_count == single.tensor_count
    assert facts.parameters == single.parameters
    assert facts.file_size == sum(p.stat().st_size for p in paths)


def test_rejects_incomplete_split(tmp_path: Path) -> None:
    names = ["m-00001-of-00003.gguf", "m-00003-of-00003.gguf"]
    with pytest.raises(GgufError, match="incomplete") as e:
        shards_of(names[0], names)
    assert e.value.problems == ("missing shard m-00002-of-00003.gguf",)


def test_rejects_shard_count_disagreeing_with_header(tmp_path: Path) -> None:
    paths = write_tiny_model(tmp_path / "big.gguf", TinyModelOptions(split=2))
    with pytest.raises(GgufError, match="2 shard"):
        read_facts(paths[:1])


def test_rejects_non_gguf_file(tmp_path: Path) -> None:
    p = tmp_path / "model.safetensors.gguf"
    p.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(GgufError, match="not a GGUF file") as e:
        read_facts([p])
    assert e.value.hint and "convert" in e.value.hint


def test_rejects_truncated_gguf(tmp_path: Path) -> None:
    (path,) = write_tiny_model(tmp_path / "t.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(GgufError, match=r"corrupt|truncated"):
        read_facts([cut])


def test_split_name_parsing() -> None:
    assert split_parts("a-b-00002-of-00010.gguf") == ("a-b", 2, 10)
    assert split_parts("model.gguf") is None
    assert entrypoint_candidates(["a.gguf", "b-00002-of-00002.gguf", "README.md"]) == ["a.gguf"]


def test_tiny_model_is_deterministic(tmp_path: Path) -> None:
    (a,) = write_tiny_model(tmp_path / "a.gguf")
    (b,) = write_tiny_model(tmp_path / "b.gguf")
    assert a.read_bytes() == b.read_bytes()
    bigger = write_tiny_model(tmp_path / "c.gguf", TinyModelOptions(dim=128, ff=256, layers=3))
    assert bigger[0].stat().st_size > a.stat().st_size
