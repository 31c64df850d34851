"""ggml's CPU backend variants: which modules a CPU can run and the one ggml loads there."""

from __future__ import annotations

from typing import Collection, Dict, List, Optional, Sequence, Tuple

from runtime.components import EngineFacts
from runtime.errors import HostError

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
X86_VARIANT_NAMES: Tuple[str, ...] = tuple(X86_VARIANTS)
"""Every x86 variant name in ggml's order, written once: the bundler's spec validation
(``engine.cpu_variants``) and its llama.cpp build (one CMake target each) use this list."""
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


def variant_tables(
    arch: str,
) -> Tuple[Dict[str, Tuple[str, ...]], Dict[str, int], Dict[str, Tuple[str, ...]]]:
    """(variants and their features, score bits, feature -> cpuinfo flags) for ``arch``."""
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


def bundled_variants(engine: EngineFacts, paths: Sequence[str]) -> Tuple[List[str], str]:
    """Variant names and the directory their modules are in (relative to the release):
    the ``libggml-cpu-*.so`` files of the bundle, else the engine's listed variants."""
    found = []
    module_dir = engine.backend_dir
    for p in paths:
        name = p.rsplit("/", 1)[-1]
        if name.startswith("libggml-cpu-") and name.endswith(".so"):
            found.append(name[len("libggml-cpu-") : -3])
            module_dir = p.rsplit("/", 1)[0]
    return (found or list(engine.cpu_variants)), module_dir
