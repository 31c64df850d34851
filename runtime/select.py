"""Runtime selection: backend, CPU variant, threads, context and slots, llama-server argv/env.

``select(facts, manifest)`` is pure: it takes the host facts from ``runtime.detect`` and
the verified bundle manifest (a dict) and returns the decision document, every decision
with a one-line reason for the install report. A model that cannot fit raises
``HostError`` (exit 50) with the numbers. The rules are explained in docs/SELECTION.md.
Standard library only: this module runs on target hosts (3.8+).

CLI: ``python3 -m runtime.select (--facts F.json | --detect) --manifest M.json
[--overrides JSON] [--release-dir DIR] [--json]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Sequence, Tuple

from runtime.errors import AirlockError, HostError, UsageError

DECISION_SCHEMA = 1
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

OVERRIDE_KEYS = (
    "backend",
    "ctx_size",
    "parallel",
    "threads",
    "gpu_layers",
    "host",
    "port",
    "model",
    "api_key_file",
)

# ggml's CPU backend variants (ggml/src/CMakeLists.txt, GGML_CPU_ALL_VARIANTS) and the
# features each is compiled for. ggml scores every variant module whose features the CPU
# has (cpu-feats.cpp: one bit per feature) and loads the highest score.
X86_VARIANTS: Dict[str, Tuple[str, ...]] = {
    "x64": (),
    "sse42": ("SSE42",),
    "sandybridge": ("SSE42", "AVX"),
    "ivybridge": ("SSE42", "AVX", "F16C"),
    "piledriver": ("SSE42", "AVX", "F16C", "FMA"),
    "haswell": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"),
    "skylakex": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"),
    "cannonlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI"),
    "cascadelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI"),
    "icelake": (
        "SSE42",
        "AVX",
        "F16C",
        "FMA",
        "AVX2",
        "BMI2",
        "AVX512",
        "AVX512_VBMI",
        "AVX512_VNNI",
    ),
    "cooperlake": (
        "SSE42",
        "AVX",
        "F16C",
        "FMA",
        "AVX2",
        "BMI2",
        "AVX512",
        "AVX512_VNNI",
        "AVX512_BF16",
    ),
    "zen4": (
        "SSE42",
        "AVX",
        "F16C",
        "FMA",
        "AVX2",
        "BMI2",
        "AVX512",
        "AVX512_VBMI",
        "AVX512_VNNI",
        "AVX512_BF16",
    ),
    "alderlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"),
    "sapphirerapids": (
        "SSE42",
        "AVX",
        "F16C",
        "FMA",
        "AVX2",
        "BMI2",
        "AVX512",
        "AVX512_VBMI",
        "AVX512_VNNI",
        "AVX512_BF16",
        "AMX_TILE",
        "AMX_INT8",
    ),
}
X86_SCORE_BITS = {
    "FMA": 1,
    "F16C": 1 << 1,
    "SSE42": 1 << 2,
    "BMI2": 1 << 3,
    "AVX": 1 << 4,
    "AVX2": 1 << 5,
    "AVX_VNNI": 1 << 6,
    "AVX512": 1 << 7,
    "AVX512_VBMI": 1 << 8,
    "AVX512_BF16": 1 << 9,
    "AVX512_VNNI": 1 << 10,
    "AMX_INT8": 1 << 11,
    "AMX_TILE": 0,
}
# ggml feature -> /proc/cpuinfo flags that must all be present.
X86_FEATURE_FLAGS: Dict[str, Tuple[str, ...]] = {
    "SSE42": ("sse4_2",),
    "AVX": ("avx",),
    "F16C": ("f16c",),
    "FMA": ("fma",),
    "AVX2": ("avx2",),
    "BMI2": ("bmi2",),
    "AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "AVX512_VBMI": ("avx512vbmi",),
    "AVX512_VNNI": ("avx512_vnni",),
    "AVX512_BF16": ("avx512_bf16",),
    "AVX_VNNI": ("avx_vnni",),
    "AMX_TILE": ("amx_tile",),
    "AMX_INT8": ("amx_int8",),
}
ARM_VARIANTS: Dict[str, Tuple[str, ...]] = {
    "armv8.0_1": (),
    "armv8.2_1": ("DOTPROD",),
    "armv8.2_2": ("DOTPROD", "FP16"),
    "armv8.2_3": ("DOTPROD", "FP16", "SVE"),
    "armv8.6_1": ("DOTPROD", "FP16", "SVE", "MATMUL_INT8"),
    "armv8.6_2": ("DOTPROD", "FP16", "SVE", "MATMUL_INT8", "SVE2"),
    "armv9.2_1": ("DOTPROD", "FP16", "SVE", "MATMUL_INT8", "SME"),
    "armv9.2_2": ("DOTPROD", "FP16", "SVE", "MATMUL_INT8", "SVE2", "SME"),
}
ARM_SCORE_BITS = {
    "DOTPROD": 1 << 1,
    "FP16": 1 << 2,
    "SVE": 1 << 3,
    "MATMUL_INT8": 1 << 4,
    "SVE2": 1 << 5,
    "SME": 1 << 6,
}
ARM_FEATURE_FLAGS: Dict[str, Tuple[str, ...]] = {
    "DOTPROD": ("asimddp",),
    "FP16": ("fphp",),
    "SVE": ("sve",),
    "MATMUL_INT8": ("i8mm",),
    "SVE2": ("sve2",),
    "SME": ("sme",),
}

Decision = Dict[str, Any]


def _gib(n: float) -> str:
    return "%.1f GiB" % (n / GIB)


def _version_tuple(v: str) -> Tuple[int, ...]:
    out = []
    for part in v.strip().split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


# --------------------------------------------------------------------------- CPU variant


def variant_tables(
    arch: str,
) -> Tuple[Dict[str, Tuple[str, ...]], Dict[str, int], Dict[str, Tuple[str, ...]]]:
    if arch == "aarch64":
        return ARM_VARIANTS, ARM_SCORE_BITS, ARM_FEATURE_FLAGS
    return X86_VARIANTS, X86_SCORE_BITS, X86_FEATURE_FLAGS


def cpu_features(arch: str, flags: Collection[str]) -> List[str]:
    """The ggml feature names a CPU with these /proc/cpuinfo flags has."""
    _, _, feature_flags = variant_tables(arch)
    have = set(flags)
    return sorted(f for f, need in feature_flags.items() if all(n in have for n in need))


def variant_score(arch: str, variant: str, features: Collection[str]) -> Optional[int]:
    """ggml's score for ``variant`` on a CPU with ``features``: 0 when it cannot run there,
    ``None`` for a variant name ggml does not know."""
    variants, bits, _ = variant_tables(arch)
    if variant not in variants:
        return None
    score = 1
    for feature in variants[variant]:
        if feature not in features:
            return 0
        score += bits[feature]
    return score


def choose_variant(
    arch: str, flags: Collection[str], bundled: Sequence[str]
) -> Tuple[Optional[str], str]:
    """The bundled variant ggml will load on this CPU, and why. Raises HostError when none
    of the bundled variants can run here (ggml would find no CPU backend)."""
    if not bundled:
        return None, "cpu variant: the bundle lists no CPU variant modules (single CPU build)"
    features = cpu_features(arch, flags)
    scored = []
    unknown = []
    for name in bundled:
        s = variant_score(arch, name, features)
        if s is None:
            unknown.append(name)
        elif s > 0:
            scored.append((s, name))
    if not scored:
        raise HostError(
            "no CPU variant in the bundle runs on this CPU (bundled: {}; CPU has: {})".format(
                ", ".join(bundled), " ".join(features) or "none of the tracked features"
            ),
            hint="rebuild the bundle with the baseline variant (x64 on x86_64, armv8.0_1 on "
            "aarch64) in engine.cpu_variants",
        )
    scored.sort()
    best = scored[-1][1]
    variants, _, _ = variant_tables(arch)
    needs = " ".join(variants[best]).lower() or "baseline"
    faster = sorted(
        (variant_score(arch, n, features) or 0, n) for n in variants if n not in bundled
    )
    better = [n for s, n in faster if s > scored[-1][0]]
    listed = ", ".join(bundled) if len(bundled) <= 4 else f"{len(bundled)} variants"
    reason = f"cpu variant {best}: best of the bundled {listed} this CPU runs (needs {needs})"
    if better:
        reason += f"; {better[-1]} would be faster here but is not in the bundle"
    if unknown:
        reason += "; ignored unknown variants {}".format(", ".join(unknown))
    return best, reason


# --------------------------------------------------------------------------- manifest


def _engine(manifest: Dict[str, Any]) -> Dict[str, Any]:
    try:
        props = manifest["components"]["engine"]["properties"]
    except (KeyError, TypeError):
        raise UsageError(
            "the manifest has no components.engine.properties",
            hint="pass the bundle's airlock/manifest.json (a bundle built by airlock build)",
        ) from None
    if not isinstance(props, dict):
        raise UsageError("components.engine.properties in the manifest is not an object")
    return props


def _model(manifest: Dict[str, Any], wanted: Optional[str]) -> Dict[str, Any]:
    try:
        models = manifest["components"]["models"]["properties"]["models"]
    except (KeyError, TypeError):
        models = None
    if not models:
        raise UsageError(
            "the manifest lists no models (components.models.properties.models)",
            hint="pass the bundle's airlock/manifest.json",
        )
    if wanted is None:
        return dict(models[0])
    for m in models:
        if m.get("name") == wanted:
            return dict(m)
    raise UsageError(
        f"model {wanted!r} is not in the bundle",
        hint="choose one of: {}".format(", ".join(str(m.get("name")) for m in models)),
    )


def _manifest_paths(manifest: Dict[str, Any]) -> List[str]:
    return [str(f.get("path")) for f in manifest.get("files") or [] if isinstance(f, dict)]


def _bundled_variants(engine: Dict[str, Any], paths: Sequence[str]) -> Tuple[List[str], str]:
    """Variant names and the directory their modules are in (relative to the release)."""
    found = []
    module_dir = str(engine.get("backend_dir") or engine.get("lib_dir") or "engine/lib")
    for p in paths:
        name = p.rsplit("/", 1)[-1]
        if name.startswith("libggml-cpu-") and name.endswith(".so"):
            found.append(name[len("libggml-cpu-") : -3])
            module_dir = p.rsplit("/", 1)[0]
    listed = [str(v) for v in engine.get("cpu_variants") or []]
    return (found or listed), module_dir


# --------------------------------------------------------------------------- backend


def _choose_backend(
    facts: Dict[str, Any], engine: Dict[str, Any], paths: Sequence[str], forced: Optional[str]
) -> Tuple[str, str, List[Dict[str, Any]]]:
    """("cpu"|"cuda", reason, usable NVIDIA GPUs)."""
    if forced == "cpu":
        return "cpu", "backend cpu: operator override backend=cpu", []
    cuda = engine.get("cuda")
    nvidia = [g for g in facts.get("gpus") or [] if g.get("vendor") == "nvidia"]
    driver = (facts.get("nvidia") or {}).get("driver_version")
    problem = None
    if not cuda:
        problem = "the bundle has no CUDA module"
        if nvidia:
            problem = f"{len(nvidia)} NVIDIA GPU(s) present but the bundle has no CUDA module"
    elif not nvidia:
        problem = "no NVIDIA GPU found (PCI class 0x03, vendor 0x10de)"
        amd = [g for g in facts.get("gpus") or [] if g.get("vendor") == "amd"]
        if amd:
            problem += (
                "; the AMD GPU at {} needs a ROCm/Vulkan backend, which airlock does "
                "not bundle".format(amd[0].get("pci"))
            )
    elif cuda.get("module") and paths and cuda["module"] not in paths:
        problem = "the CUDA module {} is not in the bundle's files".format(cuda["module"])
    elif not driver:
        problem = "NVIDIA GPU present but no NVIDIA driver is loaded (/proc/driver/nvidia/version)"
    else:
        need = str(cuda.get("min_driver") or "0")
        if _version_tuple(driver) < _version_tuple(need):
            problem = "NVIDIA driver {} is older than {} required by the CUDA {} module".format(
                driver,
                need,
                cuda.get("cuda_version", "?"),
            )
    usable = nvidia
    if problem is None and cuda is not None:
        archs = [a for a in cuda.get("architectures") or [] if str(a).isdigit()]
        if archs:
            lowest = min(int(a) for a in archs)
            usable = [
                g
                for g in nvidia
                if not g.get("compute_cap") or int(float(g["compute_cap"]) * 10) >= lowest
            ]
            if not usable:
                problem = (
                    "GPU compute capability {} is below the bundle's CUDA architectures {}".format(
                        ", ".join(str(g.get("compute_cap")) for g in nvidia),
                        ", ".join(str(a) for a in archs),
                    )
                )
    if problem is not None:
        if forced == "cuda":
            raise HostError(
                "backend=cuda was requested but " + problem,
                hint="remove the backend override or fix the driver/GPU",
            )
        return "cpu", "backend cpu: " + problem, []
    assert cuda is not None
    names = ", ".join(str(g.get("name") or g.get("device_id")) for g in usable)
    return (
        "cuda",
        "backend cuda: {}, driver {} >= {} required by CUDA {}".format(
            names, driver, cuda.get("min_driver"), cuda.get("cuda_version", "?")
        ),
        usable,
    )


# --------------------------------------------------------------------------- memory


class _Model:
    def __init__(self, m: Dict[str, Any]) -> None:
        g = m.get("gguf") or {}
        self.name = str(m.get("name") or "model")
        self.weights = int(
            g.get("file_size") or sum(int(f.get("size") or 0) for f in m.get("files") or [])
        )
        self.n_layer = int(g.get("block_count") or 1)
        self.n_embd = int(g.get("embedding_length") or 0)
        n_head = int(g.get("head_count") or 1)
        n_head_kv = int(g.get("head_count_kv") or n_head)
        self.n_embd_kv = self.n_embd * n_head_kv // max(n_head, 1)
        self.ctx_train = int(g.get("context_length") or AUTO_SLOT_CTX)
        self.quant = g.get("quantization")

    def kv_bytes(self, ctx: int, layers: Optional[int] = None) -> int:
        n = self.n_layer if layers is None else layers
        return 2 * n * ctx * self.n_embd_kv * KV_BYTES_PER_ELEMENT

    def host_overhead(self) -> int:
        return HOST_OVERHEAD_BYTES + int(self.weights * HOST_OVERHEAD_SHARE)


def _effective_memory(facts: Dict[str, Any]) -> Tuple[int, str]:
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


def _plans(
    model: _Model, ctx_fixed: Optional[int], par_fixed: Optional[int]
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
    plans = [(slot * par, par)]
    while True:
        if par_fixed is None and par > 1:
            par //= 2
        elif slot > floor:
            slot = max(floor, slot // 2)
        else:
            break
        plans.append((slot * par, par))
    return plans


def _fixed(ov: Dict[str, Any], defaults: Dict[str, Any], key: str) -> Optional[int]:
    """A fixed value for ``key``: the operator's override, else the bundle's integer default."""
    if ov.get(key) is not None:
        return int(ov[key])
    value = defaults.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


# --------------------------------------------------------------------------- select


def select(
    facts: Dict[str, Any],
    manifest: Dict[str, Any],
    overrides: Optional[Dict[str, Any]] = None,
    *,
    server_flags: Optional[Collection[str]] = None,
) -> Decision:
    """Decide how this host runs the bundle's model.

    ``server_flags``: options the bundled llama-server accepts (from ``--help``), or
    ``None`` when unknown. Raises UsageError for bad overrides or a manifest without an
    engine/model, HostError when the host cannot run the bundle (wrong architecture, no
    usable CPU variant, model does not fit). Returns the decision document.
    """
    ov = _check_overrides(overrides or {})
    engine = _engine(manifest)
    paths = _manifest_paths(manifest)
    defaults = dict(engine.get("server_defaults") or {})
    model_meta = _model(manifest, ov.get("model") or defaults.get("model"))
    model = _Model(model_meta)
    reasons: List[str] = []
    cpu = facts.get("cpu") or {}
    arch = str(cpu.get("arch") or "unknown")

    engine_arch = engine.get("arch")
    if engine_arch and arch != "unknown" and engine_arch != arch:
        raise HostError(
            f"the bundle's engine is built for {engine_arch} but this host is {arch}",
            hint=f"build a bundle for {arch} (airlock build on or for that architecture)",
        )
    reasons.append(
        f"model {model.name}: {_gib(model.weights)}"
        + (f" {model.quant}" if model.quant else "")
        + f" weights, {model.n_layer} layers, trained context {model.ctx_train}"
    )

    variants, module_dir = _bundled_variants(engine, paths)
    variant, why = choose_variant(arch, cpu.get("flags") or [], variants)
    reasons.append(why)

    backend, why, gpus = _choose_backend(facts, engine, paths, ov.get("backend"))
    reasons.append(why)

    threads, why = _threads(facts, ov.get("threads"))
    reasons.append(why)

    effective, source = _effective_memory(facts)
    usable = int(effective * MEMORY_SHARE)
    vram = sum(int(g.get("vram_free_bytes") or g.get("vram_bytes") or 0) for g in gpus)
    vram_usable = int(vram * MEMORY_SHARE)

    # The operator's override wins over the bundle's spec default; "auto" (or no default)
    # lets the memory planner choose.
    ctx_fixed = _fixed(ov, defaults, "ctx_size")
    par_fixed = _fixed(ov, defaults, "parallel")
    plans = _plans(model, ctx_fixed, par_fixed)
    chosen = None
    for ctx, par in plans:
        layers_gpu = 0
        if backend == "cuda":
            layers_gpu = _gpu_layers_fitting(model, ctx, vram_usable, vram_known=vram > 0)
            if ov.get("gpu_layers") is not None:
                layers_gpu = min(int(ov["gpu_layers"]), model.n_layer)
        host_layers = model.n_layer - layers_gpu
        host_weights = model.weights * host_layers // model.n_layer
        host_kv = model.kv_bytes(ctx, host_layers)
        need = host_weights + host_kv + model.host_overhead()
        if need <= usable:
            chosen = (ctx, par, layers_gpu, host_weights, host_kv, need)
            break
    if chosen is None:
        ctx, par = plans[-1]
        kv = model.kv_bytes(ctx)
        need = model.weights + kv + model.host_overhead()
        raise HostError(
            f"model {model.name} needs {_gib(need)} ({_gib(model.weights)} weights + "
            f"{_gib(kv)} KV cache at ctx {ctx} + {_gib(model.host_overhead())} overhead) "
            f"but only {_gib(usable)} is usable ({int(MEMORY_SHARE * 100)}% of "
            f"{_gib(effective)}, limited by {source})",
            hint=f"free memory or raise the limit ({source}), lower ctx_size, or ship a smaller "
            "quantization of the model",
        )
    ctx, par, layers_gpu, host_weights, host_kv, need = chosen
    if ctx_fixed is not None or par_fixed is not None:
        origin = (
            "operator override"
            if ov.get("ctx_size") is not None or ov.get("parallel") is not None
            else "bundle default"
        )
        both = ctx_fixed is not None and par_fixed is not None
        reasons.append(
            f"ctx {ctx}, {par} slot(s): {origin}" + ("" if both else " (the other one auto)")
        )
    else:
        reasons.append(
            f"ctx {ctx} = {par} slot(s) x {ctx // par} tokens: largest plan that fits "
            f"{_gib(usable)} usable memory ({source})"
        )
    reasons.append(
        f"memory: needs {_gib(need)} on the host ({_gib(host_weights)} weights + "
        f"{_gib(host_kv)} KV cache + {_gib(model.host_overhead())} overhead) "
        f"of {_gib(usable)} usable"
    )
    gpu_layers = 0
    if backend == "cuda":
        if layers_gpu <= 0:
            backend = "cpu"
            reasons.append(
                f"backend cpu: not even one layer fits in {_gib(vram_usable)} of usable VRAM"
            )
        else:
            gpu_layers = model.n_layer + 1 if layers_gpu >= model.n_layer else layers_gpu
            if ov.get("gpu_layers") is not None:
                reasons.append(f"gpu layers {gpu_layers}: operator override")
            elif vram == 0:
                reasons.append(
                    f"gpu layers {gpu_layers} (all): VRAM unknown (no nvidia-smi), "
                    "offloading everything"
                )
            else:
                reasons.append(
                    f"gpu layers {min(gpu_layers, model.n_layer)} of {model.n_layer}: "
                    f"{_gib(vram_usable)} usable VRAM"
                )

    host = str(ov.get("host") or defaults.get("host") or "127.0.0.1")
    port = int(ov.get("port") or defaults.get("port") or 8080)
    argv, env, flag_reasons = _command(
        engine,
        model_meta,
        model.name,
        host,
        port,
        ctx,
        par,
        threads,
        gpu_layers,
        backend,
        ov.get("api_key_file") or defaults.get("api_key_file"),
        server_flags,
    )
    reasons.extend(flag_reasons)
    cwd = "."
    server_dir = str(engine.get("server") or "engine/bin/llama-server").rsplit("/", 1)[0]
    if variants and module_dir != server_dir:
        # ggml looks for backend modules next to the executable and in the working
        # directory only (ggml-backend-reg.cpp), never on LD_LIBRARY_PATH.
        cwd = module_dir
        reasons.append(
            f"working directory {module_dir}: ggml loads CPU variant modules from the "
            "executable's directory or the working directory"
        )
    return {
        "schema": DECISION_SCHEMA,
        "model": model.name,
        "backend": backend,
        "gpu_layers": gpu_layers,
        "cpu_variant": variant,
        "threads": threads,
        "ctx_size": ctx,
        "parallel": par,
        "host": host,
        "port": port,
        "argv": argv,
        "env": env,
        "cwd": cwd,
        "reasons": reasons,
        "overrides": ov,
        "memory": {
            "effective_bytes": effective,
            "effective_source": source,
            "usable_bytes": usable,
            "share": MEMORY_SHARE,
            "weights_bytes": model.weights,
            "host_weights_bytes": host_weights,
            "kv_bytes": host_kv,
            "overhead_bytes": model.host_overhead(),
            "need_bytes": need,
            "vram_bytes": vram or None,
            "vram_usable_bytes": vram_usable or None,
        },
    }


def _check_overrides(ov: Dict[str, Any]) -> Dict[str, Any]:
    problems = []
    out: Dict[str, Any] = {}
    for key, value in ov.items():
        if value is None:
            continue
        if key not in OVERRIDE_KEYS:
            problems.append(
                "unknown override {!r} (known: {})".format(key, ", ".join(OVERRIDE_KEYS))
            )
        elif key == "backend":
            if value not in ("auto", "cpu", "cuda"):
                problems.append(f"backend must be auto, cpu or cuda, not {value!r}")
            elif value != "auto":
                out[key] = value
        elif key in ("host", "model", "api_key_file"):
            out[key] = str(value)
        else:
            if isinstance(value, str) and value == "auto":
                continue
            try:
                n = int(value)
            except (TypeError, ValueError):
                n = -1
            if isinstance(value, bool) or n < (0 if key == "gpu_layers" else 1):
                problems.append(f"{key} must be a positive integer or 'auto', not {value!r}")
            else:
                out[key] = n
    if problems:
        raise UsageError(
            "invalid runtime overrides",
            problems=problems,
            hint="fix airlock_runtime_overrides (or --overrides)",
        )
    return out


def _threads(facts: Dict[str, Any], forced: Optional[int]) -> Tuple[int, str]:
    cpu = facts.get("cpu") or {}
    cg = facts.get("cgroup") or {}
    if forced is not None:
        return forced, f"threads {forced}: operator override"
    cores = int(cpu.get("physical_cores") or 0) or int(cpu.get("usable") or 0) or 1
    why = f"threads {cores}: physical cores usable by this process"
    limit = cg.get("cpu_limit")
    if limit is not None:
        capped = max(1, math.floor(float(limit) + 1e-9))
        if capped < cores:
            src = str(cg.get("cpu_limit_source") or "cgroup")
            label = "cpu.max" if src.endswith("cpu.max") else "cpu.cfs_quota_us"
            return capped, (
                f"threads {capped}: cgroup CPU limit {float(limit):g} ({label}) is below "
                f"{cores} physical cores"
            )
    return cores, why


def _gpu_layers_fitting(model: _Model, ctx: int, vram_usable: int, *, vram_known: bool) -> int:
    if not vram_known:
        return model.n_layer
    per_layer = model.weights // model.n_layer + model.kv_bytes(ctx, 1)
    room = vram_usable - GPU_OVERHEAD_BYTES
    if room <= 0 or per_layer <= 0:
        return 0
    return min(model.n_layer, room // per_layer)


def _command(
    engine: Dict[str, Any],
    model_meta: Dict[str, Any],
    name: str,
    host: str,
    port: int,
    ctx: int,
    par: int,
    threads: int,
    gpu_layers: int,
    backend: str,
    api_key_file: Optional[str],
    server_flags: Optional[Collection[str]],
) -> Tuple[List[str], Dict[str, str], List[str]]:
    server = str(engine.get("server") or "engine/bin/llama-server")
    entry = model_meta.get("entrypoint")
    if not entry:
        files = [
            f.get("path")
            for f in model_meta.get("files") or []
            if str(f.get("path", "")).endswith(".gguf")
        ]
        if not files:
            raise UsageError(f"model {name} has no entrypoint and no .gguf file in the manifest")
        entry = sorted(files)[0]
    argv = [
        server,
        "--model",
        str(entry),
        "--alias",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--ctx-size",
        str(ctx),
        "--parallel",
        str(par),
        "--threads",
        str(threads),
        "--metrics",
    ]
    if engine.get("cuda"):
        # Without a GPU backend in the bundle the option only earns a warning.
        argv += ["--n-gpu-layers", str(gpu_layers)]
    if api_key_file:
        argv += ["--api-key-file", api_key_file]
    lib_dir = str(engine.get("lib_dir") or "engine/lib")
    ld = [lib_dir]
    if backend == "cuda":
        ld.append(str((engine.get("cuda") or {}).get("runtime_dir") or lib_dir + "/cuda"))
    # The env forms are honoured by every llama-server that knows the option and ignored
    # by older ones, so they are always safe; the flags only when --help lists them.
    # llama.cpp reads each option from an environment variable too; the names moved
    # between versions (LLAMA_ARG_OFFLINE / LLAMA_OFFLINE, LLAMA_ARG_UI=0 /
    # LLAMA_ARG_NO_WEBUI=1). A server honours the names it knows and ignores the others,
    # while an unknown command-line flag makes it exit: so the env forms are always set and
    # the flags only when the server's --help lists them.
    env = {"LD_LIBRARY_PATH": ":".join(ld), "HF_HUB_OFFLINE": "1"}
    env_forms = {
        "--offline": {"LLAMA_ARG_OFFLINE": "1", "LLAMA_OFFLINE": "1"},
        "--no-webui": {"LLAMA_ARG_UI": "0", "LLAMA_ARG_NO_WEBUI": "1"},
    }
    reasons = []
    known = (
        set(server_flags)
        if server_flags is not None
        else set(str(f) for f in engine.get("server_flags") or [])
    )
    for flag, what in (("--offline", "never touch the network"), ("--no-webui", "no web UI")):
        if flag in known:
            argv.append(flag)
        else:
            env.update(env_forms[flag])
            reasons.append(
                f"{flag} not passed: this llama-server's --help was not checked or does not "
                f"list it ({what} through the environment instead)"
            )
    if backend == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return argv, env, reasons


def resolve(decision: Decision, release_dir: Path) -> Decision:
    """The decision with argv, env and cwd paths made absolute under ``release_dir``."""
    base = Path(os.path.abspath(release_dir))
    out = dict(decision)
    argv = list(decision["argv"])
    argv[0] = str(base / argv[0])
    for i, a in enumerate(argv[:-1]):
        if a == "--model":
            argv[i + 1] = str(base / argv[i + 1])
    out["argv"] = argv
    env = dict(decision["env"])
    env["LD_LIBRARY_PATH"] = ":".join(str(base / p) for p in env["LD_LIBRARY_PATH"].split(":"))
    out["env"] = env
    out["cwd"] = str(base / decision["cwd"])
    return out


def probe_server_flags(server: Path) -> Optional[List[str]]:
    """Options listed by ``llama-server --help`` (runs it once, no network), or None."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(server.parent.parent / "lib")
    try:
        proc = subprocess.run(
            [str(server), "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = proc.stdout + proc.stderr
    flags = set()
    for word in text.replace(",", " ").split():
        if word.startswith("--") and len(word) > 2:
            flags.add(word.split("=", 1)[0])
    return sorted(flags) or None


# --------------------------------------------------------------------------- CLI


def render(decision: Decision) -> str:
    lines = [
        f"backend:   {decision['backend']} (gpu layers {decision['gpu_layers']})",
        f"variant:   {decision['cpu_variant'] or '-'}",
        f"threads:   {decision['threads']}",
        f"context:   {decision['ctx_size']} ({decision['parallel']} slots)",
        "command:   {}".format(" ".join(decision["argv"])),
        "env:       {}".format(
            " ".join("{}={}".format(*kv) for kv in sorted(decision["env"].items()))
        ),
        "cwd:       {}".format(decision["cwd"]),
    ]
    lines.extend("reason:    " + r for r in decision["reasons"])
    return "\n".join(lines)


def _load_json(path: Path, what: str) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read the {what} {path}: {e.strerror}") from e
    except ValueError as e:
        raise UsageError(f"the {what} {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"the {what} {path} is not a JSON object")
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m runtime.select",
        description="Choose backend, threads, context and llama-server arguments for this host.",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--facts", type=Path, help="facts JSON from python3 -m runtime.detect")
    src.add_argument("--detect", action="store_true", help="detect this host's facts now")
    parser.add_argument("--manifest", type=Path, required=True, help="the bundle manifest")
    parser.add_argument(
        "--overrides", default=None, help='JSON object, e.g. {"ctx_size": 4096, "backend": "cpu"}'
    )
    parser.add_argument(
        "--release-dir",
        type=Path,
        default=None,
        help="installed release: absolute paths, and probe llama-server --help",
    )
    parser.add_argument(
        "--install-path", type=Path, default=None, help="with --detect: measure free disk here"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        decision = run_cli(args)
    except AirlockError as e:
        if args.json:
            print(
                json.dumps(
                    {
                        "error": e.message,
                        "problems": list(e.problems),
                        "hint": e.hint,
                        "exit_code": e.exit_code,
                    },
                    indent=2,
                    sort_keys=True,
                )
            )
        print(e.render(), file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(decision, indent=2, sort_keys=True))
    else:
        print(render(decision))
    return 0


def run_cli(args: argparse.Namespace) -> Decision:
    """The CLI's work, with the I/O at this edge: read, detect, probe, select, resolve."""
    from runtime.detect import detect

    facts = (
        detect(Path("/"), args.install_path)
        if args.detect
        else _load_json(args.facts, "facts file")
    )
    manifest = _load_json(args.manifest, "manifest")
    overrides: Dict[str, Any] = {}
    if args.overrides:
        try:
            overrides = json.loads(args.overrides)
        except ValueError as e:
            raise UsageError(f"--overrides is not valid JSON: {e}") from e
        if not isinstance(overrides, dict):
            raise UsageError("--overrides must be a JSON object")
    return decide(facts, manifest, overrides, release_dir=args.release_dir)


def decide(
    facts: Dict[str, Any],
    manifest: Dict[str, Any],
    overrides: Optional[Dict[str, Any]] = None,
    *,
    release_dir: Optional[Path] = None,
) -> Decision:
    """``select`` with the I/O edge the CLI and the Ansible module share: with a release
    directory, probe its llama-server's ``--help`` and make every path absolute."""
    flags = None
    if release_dir is not None:
        server = Path(release_dir) / str(
            _engine(manifest).get("server") or "engine/bin/llama-server"
        )
        if server.exists():
            flags = probe_server_flags(server)
    decision = select(facts, manifest, overrides, server_flags=flags)
    if release_dir is not None:
        decision = resolve(decision, Path(release_dir))
    return decision


if __name__ == "__main__":
    sys.exit(main())
