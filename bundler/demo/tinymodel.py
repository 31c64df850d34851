"""Tiny llama GGUF models that really load and generate in llama.cpp: random weights, or
weights constructed so that greedy decoding answers one fixed sentence.

The tokenizer is a SentencePiece-style ("llama") vocabulary: ``<unk>``, ``<s>``, ``</s>``,
the 256 byte tokens ``<0x00>``..``<0xFF>`` (type BYTE, so any text tokenizes through byte
fallback) and a few normal pieces. Weights are seeded, so the same options give the same
bytes. ``dim``/``layers``/``ff`` scale the model up for compute-bound benchmarks;
``split`` writes ``<stem>-0000N-of-0000M.gguf`` shards.

With ``answer`` set, the model is a bigram table in transformer clothing: every block's
output projections (``attn_output``, ``ffn_down``) are zero, so each position's hidden
state is its own token's embedding; embeddings are one-hot "state" vectors and the output
matrix maps each state to the next word of the sentence. Whatever the prompt, the last
prompt token (not a word of the sentence) leads to the first word, each word to the next,
the last to end-of-sequence: greedy decoding writes the sentence and stops.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_PIECES = ("▁", "▁the", "▁a", "▁hello", "▁world", "e", "t", "a", "o", "n", "s", "▁is", ".", ",")


@dataclass(frozen=True)
class TinyModelOptions:
    dim: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    ff: int = 128
    context: int = 2048
    extra_tokens: int = 0
    f16: bool = False
    chat_template: bool = True
    split: int = 1  # number of shards
    seed: int = 0
    name: str = "tiny"
    # the sentence greedy decoding produces; None: random weights (answers are noise)
    answer: Optional[str] = None


# How far the right next token's logit is above every other one (after RMS norm the
# one-hot state is scaled to sqrt(dim)): far beyond any rounding, also in f16.
_ANSWER_LOGIT = 4.0


def _vocab(extra: int) -> tuple[list[bytes], list[float], list[int]]:
    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    types: list[int] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{i:02X}>".encode() for i in range(256)]
    types += [TokenType.BYTE] * 256
    pieces = [p.encode() for p in _PIECES] + [f"▁w{i}".encode() for i in range(extra)]
    tokens += pieces
    types += [TokenType.NORMAL] * len(pieces)
    scores = [0.0] * (3 + 256) + [-float(i + 1) for i in range(len(pieces))]
    return tokens, scores, types


def answer_pieces(sentence: str) -> list[str]:
    """The vocabulary pieces that spell ``sentence``: its first word as is, every later one
    with the SentencePiece space mark (``"Hi there."`` -> ``["Hi", "▁there."]``).

    Raises:
        ValueError: the sentence is empty, has empty words (double spaces) or repeats a
            word (a token could not lead to two different next tokens).
    """
    words = sentence.split(" ")
    if not sentence or any(not w for w in words):
        raise ValueError(f"answer {sentence!r}: words must be separated by single spaces")
    pieces = [words[0]] + ["▁" + w for w in words[1:]]
    if len(set(pieces)) != len(pieces):
        raise ValueError(f"answer {sentence!r} repeats a word; each word must appear once")
    return pieces


def _answer_weights(
    tokens: list[bytes], pieces: list[str], dim: int, eos: int
) -> tuple[np.ndarray, np.ndarray]:
    """(token_embd, output) for a model whose greedy continuation of anything is ``pieces``."""
    if len(pieces) + 1 > dim:
        raise ValueError(f"an answer of {len(pieces)} words needs dim > {len(pieces)}")
    ids = [tokens.index(p.encode()) for p in pieces]
    embd = np.zeros((len(tokens), dim), dtype=np.float32)
    out = np.zeros((len(tokens), dim), dtype=np.float32)
    # state 0: any token outside the sentence; state i + 1: the sentence's i-th word
    embd[:, 0] = 1.0
    for i, tok in enumerate(ids):
        embd[tok, 0] = 0.0
        embd[tok, i + 1] = 1.0
    for state, nxt in enumerate([*ids, eos]):
        out[nxt, state] = _ANSWER_LOGIT
    return embd, out


def greedy_answers(
    path: Path, prompt_last_tokens: list[int], *, limit: int = 64
) -> list[list[int]]:
    """For each prompt-ending token, the token ids a constructed answer model at ``path``
    generates after it (up to end-of-sequence), computed with numpy from the file's
    tensors. Blocks contribute nothing by construction, which this checks first. For tests.

    Raises:
        ValueError: a block's output projection is not zero.
    """
    from gguf import GGUFReader

    reader = GGUFReader(path)
    t = {tensor.name: np.asarray(tensor.data, dtype=np.float32) for tensor in reader.tensors}
    for name, data in t.items():
        if name.endswith(("attn_output.weight", "ffn_down.weight")) and np.any(data):
            raise ValueError(f"{name} is not zero: the blocks contribute to the output")
    embd, out, norm = t["token_embd.weight"], t["output.weight"], t["output_norm.weight"]
    eos = int(reader.fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    answers: list[list[int]] = []
    for tok in prompt_last_tokens:
        generated: list[int] = []
        while len(generated) < limit:
            x = embd[tok]
            h = x / np.sqrt(np.mean(x * x) + 1e-5) * norm
            tok = int(np.argmax(out @ h))
            if tok == eos:
                break
            generated.append(tok)
        answers.append(generated)
    return answers


def write_tiny_model(path: Path, options: Optional[TinyModelOptions] = None) -> list[Path]:
    """Write the model at ``path`` (or its shards next to it); returns the files written."""
    o = options or TinyModelOptions()
    if o.dim % o.heads or o.heads % o.kv_heads:
        raise ValueError("dim must divide by heads and heads by kv_heads")
    rng = np.random.default_rng(o.seed)
    tokens, scores, types = _vocab(o.extra_tokens)
    pieces = answer_pieces(o.answer) if o.answer is not None else []
    for piece in pieces:
        if piece.encode() not in tokens:
            tokens.append(piece.encode())
            types.append(TokenType.NORMAL)
            scores.append(-float(len(scores)))
    n_vocab = len(tokens)
    head_dim = o.dim // o.heads
    kv_dim = head_dim * o.kv_heads
    wtype = np.float16 if o.f16 else np.float32

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(wtype)

    def norm() -> np.ndarray:
        return np.ones((o.dim,), dtype=np.float32)

    def zero(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=wtype)

    # a block's output projections: zero in an answer model, so blocks add nothing
    proj = zero if pieces else w
    if pieces:
        embd, output = (a.astype(wtype) for a in _answer_weights(tokens, pieces, o.dim, 2))
    else:  # drawn in this order (embeddings first, output last): seeds keep their bytes
        embd, output = w(n_vocab, o.dim), None
    tensors: list[tuple[str, np.ndarray]] = [("token_embd.weight", embd)]
    for i in range(o.layers):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", norm()),
            (b + "attn_q.weight", w(o.dim, o.dim)),
            (b + "attn_k.weight", w(kv_dim, o.dim)),
            (b + "attn_v.weight", w(kv_dim, o.dim)),
            (b + "attn_output.weight", proj(o.dim, o.dim)),
            (b + "ffn_norm.weight", norm()),
            (b + "ffn_gate.weight", w(o.ff, o.dim)),
            (b + "ffn_up.weight", w(o.ff, o.dim)),
            (b + "ffn_down.weight", proj(o.dim, o.ff)),
        ]
    output = output if output is not None else w(n_vocab, o.dim)
    tensors += [("output_norm.weight", norm()), ("output.weight", output)]

    per_shard = -(-len(tensors) // o.split) if o.split > 1 else 0
    writer = GGUFWriter(path, "llama", split_max_tensors=per_shard)
    writer.add_name(o.name)
    writer.add_context_length(o.context)
    writer.add_embedding_length(o.dim)
    writer.add_block_count(o.layers)
    writer.add_feed_forward_length(o.ff)
    writer.add_head_count(o.heads)
    writer.add_head_count_kv(o.kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if o.f16 else LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    if o.chat_template:
        writer.add_chat_template(CHATML_TEMPLATE)
    for name, data in tensors:
        writer.add_tensor(name, data)
    files = writer.format_shard_names(path)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return list(files)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write a tiny random-weight llama GGUF")
    parser.add_argument("path", type=Path)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--ff", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--f16", action="store_true")
    parser.add_argument("--no-chat-template", action="store_true")
    parser.add_argument("--split", type=int, default=1)
    parser.add_argument("--answer", help="construct weights that answer this sentence")
    args = parser.parse_args(argv)
    opts = TinyModelOptions(
        dim=args.dim,
        layers=args.layers,
        ff=args.ff,
        heads=args.heads,
        kv_heads=args.heads,
        f16=args.f16,
        chat_template=not args.no_chat_template,
        split=args.split,
        answer=args.answer,
    )
    for p in write_tiny_model(args.path, opts):
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
