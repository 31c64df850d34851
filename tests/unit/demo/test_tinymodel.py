"""The demo's tiny model: constructed weights make greedy decoding answer one sentence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from bundler.demo.run import ANSWER
from bundler.demo.tinymodel import (
    TinyModelOptions,
    answer_pieces,
    greedy_answers,
    write_tiny_model,
)


def _vocab(path: Path) -> list[str]:
    reader = GGUFReader(path)
    field = reader.fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[i]).decode() for i in field.data]


@pytest.mark.parametrize("f16", [False, True])
def test_answer_model_greedily_writes_the_sentence_after_any_prompt_token(
    tmp_path: Path, f16: bool
) -> None:
    (path,) = write_tiny_model(tmp_path / "a.gguf", TinyModelOptions(answer=ANSWER, f16=f16))
    vocab = _vocab(path)
    sentence = set(answer_pieces(ANSWER))
    starts = [i for i, piece in enumerate(vocab) if piece not in sentence]
    assert len(starts) == len(vocab) - len(sentence)
    for start, ids in zip(starts, greedy_answers(path, starts)):
        assert "".join(vocab[i] for i in ids).replace("▁", " ") == ANSWER, vocab[start]


def test_answer_model_stays_a_few_hundred_kb(tmp_path: Path) -> None:
    (path,) = write_tiny_model(tmp_path / "a.gguf", TinyModelOptions(answer=ANSWER))
    assert 100_000 < path.stat().st_size < 1_000_000


def test_random_model_does_not_answer_the_sentence(tmp_path: Path) -> None:
    # greedy_answer checks the construction: a random model's blocks contribute
    (path,) = write_tiny_model(tmp_path / "r.gguf")
    with pytest.raises(ValueError, match="not zero"):
        greedy_answers(path, [10])


def test_answer_model_blocks_add_nothing(tmp_path: Path) -> None:
    (path,) = write_tiny_model(tmp_path / "a.gguf", TinyModelOptions(answer=ANSWER))
    tensors = {t.name: np.asarray(t.data) for t in GGUFReader(path).tensors}
    for name, data in tensors.items():
        if name.endswith(("attn_output.weight", "ffn_down.weight")):
            assert not np.any(data), name
    assert np.any(tensors["blk.0.attn_q.weight"])  # the blocks still compute, to no effect


@pytest.mark.parametrize("bad", ["", "a  b", "one cat and one cat"])
def test_rejects_answers_a_bigram_table_cannot_spell(bad: str) -> None:
    with pytest.raises(ValueError):
        answer_pieces(bad)


def test_same_options_give_the_same_bytes(tmp_path: Path) -> None:
    (a,) = write_tiny_model(tmp_path / "a.gguf", TinyModelOptions(answer=ANSWER))
    (b,) = write_tiny_model(tmp_path / "b.gguf", TinyModelOptions(answer=ANSWER))
    assert a.read_bytes() == b.read_bytes()
