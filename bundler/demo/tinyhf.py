"""Tiny random-weight Llama repositories in the Hugging Face layout, as publishers ship them.

``config.json`` (``LlamaForCausalLM``), seeded random weights written with ``safetensors``
(one file, or ``model-0000N-of-0000M.safetensors`` shards with their index), a real
Llama-style BPE tokenizer trained with the ``tokenizers`` library (byte fallback, so the
pinned ``convert_hf_to_gguf.py`` reads it as a Llama vocabulary) and a
``tokenizer_config.json`` with a chat template. The same options give the same bytes.
Tests and ``bench/convert.py`` use it (``safetensors`` and ``tokenizers`` are test
dependencies, imported when a repository is written).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bundler.demo.tinymodel import CHATML_TEMPLATE

_CORPUS = (
    "hello world. the world is a small place. a test is a test, the end. "
    "airlock converts the publisher's own weights, offline, with a pinned converter. "
)


@dataclass(frozen=True)
class TinyHfOptions:
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    ff: int = 512
    vocab: int = 384
    shards: int = 1
    seed: int = 0
    architecture: str = "LlamaForCausalLM"


def tokenizer_json(vocab: int) -> bytes:
    """A Llama-2-style tokenizer.json: BPE with byte fallback, ``▁`` for spaces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))  # noqa: S106
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    doc = json.loads(tok.to_str())
    # the byte tokens are ordinary vocabulary entries of a Llama tokenizer, not added tokens
    doc["added_tokens"] = [t for t in doc["added_tokens"] if t["content"] in specials[:3]]
    return json.dumps(doc, ensure_ascii=False, sort_keys=True).encode()


def _weights(o: TinyHfOptions, vocab: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(o.seed)

    def mat(rows: int, cols: int) -> Any:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    head_dim = o.hidden // o.heads
    t: dict[str, Any] = {"model.embed_tokens.weight": mat(vocab, o.hidden)}
    for i in range(o.layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = mat(o.hidden, o.hidden)
        t[p + "self_attn.k_proj.weight"] = mat(o.kv_heads * head_dim, o.hidden)
        t[p + "self_attn.v_proj.weight"] = mat(o.kv_heads * head_dim, o.hidden)
        t[p + "self_attn.o_proj.weight"] = mat(o.hidden, o.hidden)
        t[p + "mlp.gate_proj.weight"] = mat(o.ff, o.hidden)
        t[p + "mlp.up_proj.weight"] = mat(o.ff, o.hidden)
        t[p + "mlp.down_proj.weight"] = mat(o.hidden, o.ff)
        t[p + "input_layernorm.weight"] = np.ones(o.hidden, dtype=np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(o.hidden, dtype=np.float32)
    t["model.norm.weight"] = np.ones(o.hidden, dtype=np.float32)
    t["lm_head.weight"] = mat(vocab, o.hidden)
    return t


def tiny_hf_repo(options: TinyHfOptions | None = None) -> dict[str, bytes]:
    """The repository's files (path -> bytes), ready for the Hub test server or a directory."""
    from safetensors.numpy import save

    o = options or TinyHfOptions()
    tokenizer = tokenizer_json(o.vocab)
    vocab = len(json.loads(tokenizer)["model"]["vocab"])
    files: dict[str, bytes] = {"tokenizer.json": tokenizer}
    files["config.json"] = _json(
        {
            "architectures": [o.architecture],
            "model_type": "llama",
            "hidden_size": o.hidden,
            "intermediate_size": o.ff,
            "num_hidden_layers": o.layers,
            "num_attention_heads": o.heads,
            "num_key_value_heads": o.kv_heads,
            "vocab_size": vocab,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        }
    )
    files["tokenizer_config.json"] = _json(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": 512,
            "chat_template": CHATML_TEMPLATE,
        }
    )
    files["generation_config.json"] = _json({"bos_token_id": 1, "eos_token_id": 2})
    tensors = _weights(o, vocab)
    names = sorted(tensors)
    if o.shards <= 1:
        files["model.safetensors"] = save(tensors, metadata={"format": "pt"})
        return files
    weight_map: dict[str, str] = {}
    total = 0
    for k in range(o.shards):
        part = names[k :: o.shards]
        shard = f"model-{k + 1:05d}-of-{o.shards:05d}.safetensors"
        files[shard] = save({n: tensors[n] for n in part}, metadata={"format": "pt"})
        for n in part:
            weight_map[n] = shard
            total += int(tensors[n].nbytes)
    files["model.safetensors.index.json"] = _json(
        {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    return files


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
