"""The memory model: what a model needs on the host and the GPU, and the plan that fits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from runtime.components import ModelFacts
from runtime.errors import HostError

GIB = 1024**3
MIB = 1024**2

# Share of the effective memory (and VRAM) a decision may plan to use: the rest is the
# safety margin for the page cache, the OS and estimation error.
MEMORY_SHARE = 0.9
# Fixed host overhead of a llama-server process (code, compute buffers of small models,
# HTTP slots) plus a share of the weights for the compute buffers of larger ones.
HOST_OVERHEAD_BYTES = 256 * MIB
HOST_OVERHEAD_SHARE = 0.05
# CUDA context and compute buffers on the GPU.
GPU_OVERHEAD_BYTES = 512 * MIB
# "auto" context: per-slot context up to this, and up to this many slots, halved until
# the model fits; never below MIN_SLOT_CTX per slot.
AUTO_SLOT_CTX = 4096
AUTO_PARALLEL = 4
MIN_SLOT_CTX = 512
KV_BYTES_PER_ELEMENT = 2  # f16 K and V caches, llama.cpp's default


def gib(n: float) -> str:
    """``n`` bytes as "4.1 GiB", the unit of every memory reason."""
    return "%.1f GiB" % (n / GIB)


class ModelShape:
    """The sizes of a bundled model that memory planning needs, from its gguf facts.

    A fact the manifest lacks (0 or None) takes the value that plans conservatively: one
    block, the files' total size as the weights, AUTO_SLOT_CTX as the trained context.
    """

    def __init__(self, m: ModelFacts) -> None:
        g = m.gguf
        self.name = m.name or "model"
        self.weights = int(g.file_size or sum(int(f.get("size") or 0) for f in m.files))
        self.n_layer = g.block_count or 1
        self.n_embd = g.embedding_length or 0
        n_head = g.head_count or 1
        n_head_kv = g.head_count_kv or n_head
        self.n_embd_kv = self.n_embd * n_head_kv // max(n_head, 1)
        self.ctx_train = g.context_length or AUTO_SLOT_CTX
        self.quant = g.quantization

    def kv_bytes(self, ctx: int, layers: Optional[int] = None) -> int:
        n = self.n_layer if layers is None else layers
        return 2 * n * ctx * self.n_embd_kv * KV_BYTES_PER_ELEMENT

    def host_overhead(self) -> int:
        return HOST_OVERHEAD_BYTES + int(self.weights * HOST_OVERHEAD_SHARE)


def effective_memory(facts: Dict[str, Any]) -> Tuple[int, str]:
    """The memory this host lets llama-server use and where that limit comes from:
    MemAvailable (or MemTotal) or the cgroup limit, whichever is lower."""
    mem = facts.get("memory") or {}
    cg = facts.get("cgroup") or {}
    candidates = []
    if mem.get("available_bytes") is not None:
        candidates.append((int(mem["available_bytes"]), "MemAvailable"))
    elif mem.get("total_bytes") is not None:
        candidates.append((int(mem["total_bytes"]), "MemTotal"))
    if cg.get("memory_limit_bytes") is not None:
        src = cg.get("memory_limit_source") or ""
        label = "cgroup memory.max" if src.endswith("memory.max") else "cgroup memory limit"
        candidates.append((int(cg["memory_limit_bytes"]), label))
    if not candidates:
        raise HostError(
            "this host's memory is unknown (no /proc/meminfo)",
            hint="run detection on the host itself, not in a restricted sandbox",
        )
    return min(candidates)


def context_plans(
    model: ModelShape, ctx_fixed: Optional[int], par_fixed: Optional[int]
) -> List[Tuple[int, int]]:
    """(ctx_size, parallel) candidates, most generous first."""
    if ctx_fixed is not None:
        if par_fixed is not None:
            return [(ctx_fixed, par_fixed)]
        slot = min(model.ctx_train, AUTO_SLOT_CTX)
        return [(ctx_fixed, max(1, min(AUTO_PARALLEL, ctx_fixed // max(slot, 1))))]
    floor = min(MIN_SLOT_CTX, model.ctx_train)
    slot = min(model.ctx_train, AUTO_SLOT_CTX)
    par = par_fixed or AUTO_PARALLEL
    out = [(slot * par, par)]
    while True:
        if par_fixed is None and par > 1:
            par //= 2
        elif slot > floor:
            slot = max(floor, slot // 2)
        else:
            break
        out.append((slot * par, par))
    return out


def gpu_layers_fitting(model: ModelShape, ctx: int, vram_usable: int, *, vram_known: bool) -> int:
    """Transformer blocks that fit in ``vram_usable`` at context ``ctx`` (all when unknown)."""
    if not vram_known:
        return model.n_layer
    per_layer = model.weights // model.n_layer + model.kv_bytes(ctx, 1)
    room = vram_usable - GPU_OVERHEAD_BYTES
    if room <= 0 or per_layer <= 0:
        return 0
    return min(model.n_layer, room // per_layer)


@dataclass(frozen=True)
class Fit:
    """The plan taken: context, slots, blocks on the GPU and the host memory it needs."""

    ctx: int
    parallel: int
    layers_gpu: int
    host_weights: int
    host_kv: int
    need: int


def fit_plan(
    model: ModelShape,
    candidates: List[Tuple[int, int]],
    *,
    usable: int,
    effective: int,
    source: str,
    cuda: bool,
    vram_usable: int,
    vram_known: bool,
    gpu_layers_forced: Optional[int],
) -> Fit:
    """The first (most generous) of ``candidates`` whose host part fits in ``usable``
    bytes; with ``cuda`` the blocks that fit in VRAM (or the forced count) are not counted
    on the host. Raises HostError with the numbers when not even the last one fits."""
    for ctx, par in candidates:
        layers_gpu = 0
        if cuda:
            layers_gpu = gpu_layers_fitting(model, ctx, vram_usable, vram_known=vram_known)
            if gpu_layers_forced is not None:
                layers_gpu = min(gpu_layers_forced, model.n_layer)
        host_layers = model.n_layer - layers_gpu
        host_weights = model.weights * host_layers // model.n_layer
        host_kv = model.kv_bytes(ctx, host_layers)
        need = host_weights + host_kv + model.host_overhead()
        if need <= usable:
            return Fit(ctx, par, layers_gpu, host_weights, host_kv, need)
    ctx, par = candidates[-1]
    kv = model.kv_bytes(ctx)
    need = model.weights + kv + model.host_overhead()
    raise HostError(
        f"model {model.name} needs {gib(need)} ({gib(model.weights)} weights + "
        f"{gib(kv)} KV cache at ctx {ctx} + {gib(model.host_overhead())} overhead) "
        f"but only {gib(usable)} is usable ({int(MEMORY_SHARE * 100)}% of "
        f"{gib(effective)}, limited by {source})",
        hint=f"free memory or raise the limit ({source}), lower ctx_size, or ship a smaller "
        "quantization of the model",
    )


def _placement(gpu_layers: int, n_layer: int) -> str:
    # --n-gpu-layers counts the output layer as one more layer: llama.cpp offloads the
    # last N blocks, and the output layer only when N exceeds the block count.
    if gpu_layers > n_layer:
        return f"all {n_layer} blocks and the output layer on the GPU"
    return (
        f"{gpu_layers} of {n_layer} blocks on the GPU, the other {n_layer - gpu_layers} "
        "and the output layer on the CPU"
    )


def gpu_offload(
    model: ModelShape, layers_gpu: int, *, forced: bool, vram: int, vram_usable: int
) -> Tuple[int, str]:
    """llama-server's ``--n-gpu-layers`` for ``layers_gpu`` blocks on the GPU, and why: one
    more than the blocks when all of them fit (the output layer too); 0 when none fits,
    and the reason is then the CPU fallback's."""
    if layers_gpu <= 0:
        return 0, f"backend cpu: not even one layer fits in {gib(vram_usable)} of usable VRAM"
    gpu_layers = model.n_layer + 1 if layers_gpu >= model.n_layer else layers_gpu
    placement = _placement(gpu_layers, model.n_layer)
    if forced:
        return gpu_layers, f"gpu layers {gpu_layers}: operator override, {placement}"
    if vram == 0:
        return gpu_layers, f"gpu layers {gpu_layers}: VRAM unknown (no nvidia-smi), {placement}"
    return gpu_layers, f"gpu layers {gpu_layers}: {placement} ({gib(vram_usable)} usable VRAM)"
