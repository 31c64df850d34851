"""A model made at build time from the publisher's weights: the ``convert:`` and ``quantize:`` keys.

Pure: the spec validator calls :func:`parse_derive` for a model entry; the lock asks
:func:`safetensors_entrypoint` which file stands for a safetensors checkpoint. The work
itself (``convert_hf_to_gguf.py``, ``llama-quantize``) is in :mod:`bundler.engine.convert`
and :mod:`bundler.engine.quantize`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

# convert_hf_to_gguf.py --outtype values airlock offers (the script also knows f32, tq1_0,
# tq2_0 and auto; f32 doubles the size for nothing, the ternary types need ternary weights).
OUTTYPES = ("f16", "bf16", "q8_0")
DEFAULT_OUTTYPE = "f16"

# The quantization types of llama-quantize in the pinned llama.cpp (tools/quantize/
# quantize.cpp, QUANT_OPTIONS, llama-cpp-python 0.3.36), in its order. The build checks the
# built tool's own list again before it quantizes (bundler.engine.quantize.tool_types), and
# tests/integration/test_convert.py checks that this list is the built tool's.
QUANT_TYPES = (
    "Q1_0",
    "Q2_0",
    "Q4_0",
    "Q4_1",
    "MXFP4_MOE",
    "Q5_0",
    "Q5_1",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "IQ2_M",
    "IQ1_S",
    "IQ1_M",
    "TQ1_0",
    "TQ2_0",
    "Q2_K",
    "Q2_K_S",
    "IQ3_XXS",
    "IQ3_S",
    "IQ3_M",
    "Q3_K",
    "IQ3_XS",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "IQ4_NL",
    "IQ4_XS",
    "Q4_K",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
    "Q8_0",
    "F16",
    "BF16",
    "F32",
    "COPY",
)
# The GGUF file types llama-quantize takes as input here: unquantized weights only
# (re-quantizing a quantized file loses precision twice).
QUANTIZE_INPUTS = ("F32", "F16", "BF16")

SAFETENSORS_INDEX = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^(?:.*/)?model-\d{5}-of-\d{5}\.safetensors$")

Problem = Callable[[str, str, str], None]


@dataclass(frozen=True)
class ConvertSpec:
    """``convert: {outtype: ...}``: convert the repo's safetensors with convert_hf_to_gguf.py."""

    outtype: str = DEFAULT_OUTTYPE


def parse_derive(
    raw: Mapping[str, Any], where: str, add: Problem
) -> tuple[Optional[ConvertSpec], Optional[str]]:
    """The model entry's ``convert`` and ``quantize``; every problem goes to ``add``."""
    convert: Optional[ConvertSpec] = None
    value = raw.get("convert")
    if value is True or (isinstance(value, Mapping) and not value):
        convert = ConvertSpec()
    elif isinstance(value, Mapping):
        for key in sorted(str(k) for k in value):
            if key != "outtype":
                add(f"{where}convert.{key}", "unknown key", "allowed: outtype")
        outtype = str(value.get("outtype", DEFAULT_OUTTYPE)).lower()
        if outtype not in OUTTYPES:
            add(
                f"{where}convert.outtype",
                f"unknown outtype {value.get('outtype')!r}",
                "one of " + ", ".join(OUTTYPES),
            )
        convert = ConvertSpec(outtype=outtype)
    elif value is not None and value is not False:
        add(f"{where}convert", f"expected a mapping, got {value!r}", "e.g. convert: {outtype: f16}")
    quantize: Optional[str] = None
    q = raw.get("quantize")
    if q is not None:
        text = str(q)
        match = [t for t in QUANT_TYPES if t.lower() == text.lower()]
        if not match:
            close = difflib.get_close_matches(text.upper(), QUANT_TYPES, n=1)
            hint = (f"did you mean '{close[0]}'? " if close else "") + (
                "the pinned llama-quantize supports: " + ", ".join(QUANT_TYPES)
            )
            add(f"{where}quantize", f"unknown quantization type {text!r}", hint)
        else:
            quantize = match[0]
    return convert, quantize


def safetensors_entrypoint(paths: Sequence[str]) -> Optional[str]:
    """The file that stands for a safetensors checkpoint among ``paths`` (None: there is none).

    The index of a sharded checkpoint (``model.safetensors.index.json``) when selected,
    else a single ``*.safetensors`` file.
    """
    top = [p for p in paths if "/" not in p]
    if SAFETENSORS_INDEX in top:
        return SAFETENSORS_INDEX
    single = [p for p in top if p.endswith(".safetensors") and not _SHARD_RE.match(p)]
    if len(single) == 1:
        return single[0]
    return None


def is_checkpoint(entrypoint: str) -> bool:
    """True when a lock's entrypoint is a safetensors checkpoint (converted at build time)."""
    return entrypoint == SAFETENSORS_INDEX or entrypoint.endswith(".safetensors")
