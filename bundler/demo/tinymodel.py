"""Tiny random-weight llama GGUF models that really load and generate in llama.cpp.

The tokenizer is a SentencePiece-style ("llama") vocabulary: ``<unk>``, ``<s>``, ``</s>``,
the 256 byte tokens ``<0x00>``..``<0xFF>`` (type BYTE, so any text tokenizes through byte
fallback) and a few normal pieces. Weights are seeded, so the same options give the same
bytes. ``dim``/``layers``/``ff`` scale the model up for compute-bound benchmarks;
``split`` writes ``<stem>-0000N-of-0000M.gguf`` shards.
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


def write_tiny_model(path: Path, options: Optional[TinyModelOptions] = None) -> list[Path]:
    """Write the model at ``path`` (or its shards next to it); returns the files written."""
    o = options or TinyModelOptions()
    if o.dim % o.heads or o.heads % o.kv_heads:
        raise ValueError("dim must divide by heads and heads by kv_heads")
    rng = np.random.default_rng(o.seed)
    tokens, scores, types = _vocab(o.extra_tokens)
    n_vocab = len(tokens)
    head_dim = o.dim // o.heads
    kv_dim = head_dim * o.kv_heads
    wtype = np.float16 if o.f16 else np.float32

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(wtype)

    def norm() -> np.ndarray:
        return np.ones((o.dim,), dtype=np.float32)

    tensors: list[tuple[str, np.ndarray]] = [("token_embd.weight", w(n_vocab, o.dim))]
    for i in range(o.layers):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", norm()),
            (b + "attn_q.weight", w(o.dim, o.dim)),
            (b + "attn_k.weight", w(kv_dim, o.dim)),
            (b + "attn_v.weight", w(kv_dim, o.dim)),
            (b + "attn_output.weight", w(o.dim, o.dim)),
            (b + "ffn_norm.weight", norm()),
            (b + "ffn_gate.weight", w(o.ff, o.dim)),
            (b + "ffn_up.weight", w(o.ff, o.dim)),
            (b + "ffn_down.weight", w(o.dim, o.ff)),
        ]
    tensors += [("output_norm.weight", norm()), ("output.weight", w(n_vocab, o.dim))]

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
    )
    for p in write_tiny_model(args.path, opts):
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
