"""GGUF metadata with the ``gguf`` package: the facts the far side needs without opening the model.

Only the header (key/values and tensor infos) is read, through the reader's memory map,
so a multi-GB model costs a few pages here; the one full read is the pack step.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bundler.errors import GgufError

GGUF_MAGIC = b"GGUF"
SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class GgufFacts:
    architecture: str
    parameters: int
    quantization: str
    context_length: Optional[int]
    embedding_length: Optional[int]
    block_count: Optional[int]
    head_count: Optional[int]
    head_count_kv: Optional[int]
    chat_template: bool
    tensor_count: int
    split_count: int
    file_size: int

    def properties(self) -> dict[str, Any]:
        """The agreed ``gguf`` property object of the models component."""
        return {
            "architecture": self.architecture,
            "parameters": self.parameters,
            "quantization": self.quantization,
            "context_length": self.context_length,
            "embedding_length": self.embedding_length,
            "block_count": self.block_count,
            "head_count": self.head_count,
            "head_count_kv": self.head_count_kv,
            "chat_template": self.chat_template,
            "tensor_count": self.tensor_count,
            "split_count": self.split_count,
            "file_size": self.file_size,
        }


def split_parts(name: str) -> Optional[tuple[str, int, int]]:
    """``(stem, number, count)`` for ``stem-0000N-of-0000M.gguf``, else None. Pure."""
    m = SPLIT_RE.match(name)
    if not m:
        return None
    return m.group("stem"), int(m.group("no")), int(m.group("count"))


def entrypoint_candidates(paths: Sequence[str]) -> list[str]:
    """GGUF files that start a model: single files and the first shard of a split. Pure."""
    out = []
    for p in paths:
        if not p.endswith(".gguf"):
            continue
        parts = split_parts(p)
        if parts is None or parts[1] == 1:
            out.append(p)
    return sorted(out)


def shards_of(entrypoint: str, paths: Sequence[str]) -> list[str]:
    """The entrypoint's shards in order (itself when not split); GgufError if one is missing."""
    parts = split_parts(entrypoint)
    if parts is None:
        return [entrypoint]
    stem, _, count = parts
    want = [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    missing = [w for w in want if w not in set(paths)]
    if missing:
        raise GgufError(
            f"split model {entrypoint} is incomplete",
            problems=[f"missing shard {m}" for m in missing],
            hint="include every -0000N-of-0000M.gguf file ('allow' patterns or 'files')",
        )
    return want


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:
        return None


def _open(path: Path) -> Any:
    from gguf import GGUFReader  # heavy import: only when a model is actually inspected

    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise GgufError(f"cannot read {path}: {e.strerror}") from e
    if magic != GGUF_MAGIC:
        raise GgufError(
            f"{path.name} is not a GGUF file (starts with {magic!r}, expected b'GGUF')",
            hint="the llama.cpp runtime needs .gguf models; convert with llama.cpp's "
            "convert_hf_to_gguf.py or pick a GGUF repo",
        )
    try:
        reader = GGUFReader(path)
    except Exception as e:
        raise GgufError(
            f"{path.name} is a corrupt GGUF file: {e}",
            hint="re-download or re-convert the model; a truncated copy is the usual cause",
        ) from e
    size = path.stat().st_size
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise GgufError(
                f"{path.name} is truncated: tensor {t.name} ends past the end of the file",
                hint="re-download or re-convert the model",
            )
    return reader


def _quantization(reader: Any) -> str:
    from gguf import GGMLQuantizationType, LlamaFileType

    ftype = _field(reader, "general.file_type")
    if isinstance(ftype, int):
        try:
            name = LlamaFileType(ftype).name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    # No (known) file type: the most common type of the 2-D weight tensors.
    counts = Counter(
        GGMLQuantizationType(int(t.tensor_type)).name for t in reader.tensors if len(t.shape) > 1
    )
    return counts.most_common(1)[0][0] if counts else "unknown"


def read_facts(shards: Sequence[Path]) -> GgufFacts:
    """Facts of one model given its files (one, or every shard in order); raises GgufError."""
    if not shards:
        raise GgufError("no GGUF file given")
    readers = [_open(p) for p in shards]
    first = readers[0]
    arch = _field(first, "general.architecture")
    if not isinstance(arch, str):
        raise GgufError(
            f"{shards[0].name} has no general.architecture",
            hint="the file is not a llama.cpp model; re-convert it",
        )

    def arch_int(key: str) -> Optional[int]:
        value = _field(first, f"{arch}.{key}")
        if isinstance(value, list):
            value = max(value) if value else None  # per-layer head counts
        return int(value) if isinstance(value, (int, float)) else None

    split_count = _field(first, "split.count")
    count = int(split_count) if isinstance(split_count, int) else 1
    if count != len(shards):
        raise GgufError(
            f"{shards[0].name} says it has {count} shard(s), {len(shards)} given",
            hint="include every shard of the model",
        )
    return GgufFacts(
        architecture=arch,
        parameters=sum(int(t.n_elements) for r in readers for t in r.tensors),
        quantization=_quantization(first),
        context_length=arch_int("context_length"),
        embedding_length=arch_int("embedding_length"),
        block_count=arch_int("block_count"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        chat_template=_field(first, "tokenizer.chat_template") is not None,
        tensor_count=sum(len(r.tensors) for r in readers),
        split_count=count,
        file_size=sum(p.stat().st_size for p in shards),
    )
