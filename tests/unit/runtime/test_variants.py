"""runtime.variants: the CPU variant ggml loads on real machine types, scored as ggml does."""

from __future__ import annotations

from typing import List

import pytest

from runtime.components import parse_engine
from runtime.errors import HostError
from runtime.variants import (
    X86_VARIANT_NAMES,
    X86_VARIANTS,
    bundled_variants,
    choose_variant,
    cpu_features,
    variant_score,
)
from tests.unit.runtime.test_selection import ALL_X86, facts


def flags(host: str) -> List[str]:
    return list(facts(host)["cpu"]["flags"])


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("xeon-e5-2670-sandybridge", "sandybridge"),
        ("i7-8700-desktop", "haswell"),
        ("xeon-8375c-icelake", "icelake"),
        ("xeon-6248-v100-driver-470", "cascadelake"),
        ("epyc-a100-driver-550", "haswell"),
        ("container-cgroup2-2cpu-4g", "haswell"),
        ("h200-driver-580", "sapphirerapids"),
    ],
)
def test_best_bundled_variant_mirrors_ggml_scoring(host: str, expected: str) -> None:
    best, why = choose_variant("x86_64", flags(host), ALL_X86)
    assert best == expected
    assert why.startswith(f"cpu variant {expected}: best of the bundled 14 variants this CPU runs")


def test_old_xeon_gets_baseline_from_default_bundle_and_is_told_what_is_missing() -> None:
    best, why = choose_variant("x86_64", flags("xeon-e5-2670-sandybridge"), ["x64", "haswell"])
    assert best == "x64"
    assert why == (
        "cpu variant x64: best of the bundled x64, haswell this CPU runs (needs baseline); "
        "sandybridge would be faster here but is not in the bundle"
    )


def test_bundle_without_a_runnable_variant_is_refused_not_sigill() -> None:
    with pytest.raises(HostError, match="no CPU variant in the bundle runs on this CPU") as e:
        choose_variant("x86_64", flags("xeon-e5-2670-sandybridge"), ["haswell", "skylakex"])
    assert "bundled: haswell, skylakex" in e.value.message
    assert e.value.exit_code == 50


def test_unknown_variant_names_are_ignored_and_named() -> None:
    best, why = choose_variant("x86_64", flags("i7-8700-desktop"), ["x64", "haswell", "zen9"])
    assert best == "haswell"
    assert why.endswith("; ignored unknown variants zen9")


def test_single_cpu_build_has_no_variant() -> None:
    assert choose_variant("x86_64", flags("i7-8700-desktop"), []) == (
        None,
        "cpu variant: the bundle lists no CPU variant modules (single CPU build)",
    )


def test_arm_altra_runs_the_dotprod_fp16_variant_not_sve() -> None:
    arm = ["armv8.0_1", "armv8.2_1", "armv8.2_2", "armv8.2_3", "armv8.6_1"]
    best, _ = choose_variant("aarch64", flags("ampere-altra-arm64"), arm)
    assert best == "armv8.2_2"  # Neoverse-N1: dotprod + fp16, no SVE


def test_avx512_counts_only_with_all_five_subsets() -> None:
    five = ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"]
    assert "AVX512" in cpu_features("x86_64", five)
    assert "AVX512" not in cpu_features("x86_64", five[:-1])  # Knights Landing has no BW


def test_variant_scores_follow_ggml_bits() -> None:
    spr = [
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
        "AVX_VNNI",
    ]
    scores = {v: variant_score("x86_64", v, spr) for v in X86_VARIANTS}
    assert max(scores, key=lambda v: scores[v]) == "sapphirerapids"
    assert scores["zen4"] > scores["icelake"] > scores["skylakex"] > scores["alderlake"]
    assert scores["alderlake"] > scores["haswell"] > scores["sandybridge"] > scores["x64"] == 1
    assert variant_score("x86_64", "haswell", ["AVX", "SSE42"]) == 0
    assert variant_score("x86_64", "bogus", spr) is None


def test_module_files_in_the_bundle_win_over_the_listed_variants() -> None:
    engine = parse_engine({"cpu_variants": ["x64", "haswell", "zen4"], "lib_dir": "engine/lib"})
    paths = ["engine/bin/llama-server", "engine/be/libggml-cpu-x64.so", "engine/lib/libllama.so"]
    assert bundled_variants(engine, paths) == (["x64"], "engine/be")
    assert bundled_variants(engine, ["engine/bin/llama-server"]) == (
        ["x64", "haswell", "zen4"],
        "engine/lib",
    )


def test_x86_variant_names_are_ggmls_list_in_its_order() -> None:
    # ggml/src/CMakeLists.txt, GGML_CPU_ALL_VARIANTS; docs/FORMAT.md lists the same order.
    assert X86_VARIANT_NAMES == (
        "x64",
        "sse42",
        "sandybridge",
        "ivybridge",
        "piledriver",
        "haswell",
        "skylakex",
        "cannonlake",
        "cascadelake",
        "icelake",
        "cooperlake",
        "zen4",
        "alderlake",
        "sapphirerapids",
    )
    assert X86_VARIANT_NAMES == tuple(X86_VARIANTS)
