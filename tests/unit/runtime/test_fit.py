"""runtime.fit: what a model needs on the host and the GPU, and the plan that fits."""

from __future__ import annotations

import copy

import pytest

from runtime import selection as s
from runtime.components import parse_model
from runtime.errors import HostError
from runtime.fit import MIB, ModelShape, context_plans, effective_memory, gpu_offload
from tests.unit.runtime.test_selection import (
    ALL_X86,
    CUDA,
    GIB,
    MISTRAL,
    TINY,
    facts,
    manifest,
    reasons,
)


def test_auto_plans_halve_slots_then_per_slot_context_down_to_512() -> None:
    plans = context_plans(ModelShape(parse_model(MISTRAL)), None, None)
    assert plans == [(16384, 4), (8192, 2), (4096, 1), (2048, 1), (1024, 1), (512, 1)]
    # A model trained on less than 4096 tokens never gets more per slot.
    assert context_plans(ModelShape(parse_model(TINY)), None, 2)[0] == (4096, 2)
    # A fixed ctx_size is kept and split into as many trained-context slots as fit (max 4).
    assert context_plans(ModelShape(parse_model(MISTRAL)), 8192, None) == [(8192, 2)]


def test_kv_cache_counts_only_the_kv_heads() -> None:
    # Mistral: 8 of 32 heads carry K and V, so 1024 wide, f16: 2 x 32 x ctx x 1024 x 2.
    assert ModelShape(parse_model(MISTRAL)).kv_bytes(4096) == 2 * 32 * 4096 * 1024 * 2
    assert ModelShape(parse_model(MISTRAL)).host_overhead() == 256 * MIB + int(4_368_439_584 * 0.05)


def test_effective_memory_is_the_lower_of_memavailable_and_the_cgroup_limit() -> None:
    f = facts("container-cgroup2-2cpu-4g")
    assert effective_memory(f) == (4 * GIB, "cgroup memory.max")
    f["cgroup"]["memory_limit_bytes"] = 1 << 50
    assert effective_memory(f)[1] == "MemAvailable"
    with pytest.raises(HostError, match="memory is unknown"):
        effective_memory({"memory": {}, "cgroup": {}})


def test_tiny_model_gets_four_slots_of_its_trained_context() -> None:
    d = s.select(facts("container-cgroup2-2cpu-4g"), manifest(variants=ALL_X86))
    assert (d["ctx_size"], d["parallel"]) == (8192, 4)
    assert d["memory"]["effective_source"] == "cgroup memory.max"
    assert d["memory"]["effective_bytes"] == 4 * GIB


def test_model_that_cannot_fit_the_cgroup_is_refused_with_the_numbers() -> None:
    with pytest.raises(HostError) as e:
        s.select(facts("container-cgroup2-2cpu-4g"), manifest(variants=ALL_X86, models=[MISTRAL]))
    msg = e.value.message
    assert msg.startswith(
        "model mistral-7b needs 4.6 GiB (4.1 GiB weights + 0.1 GiB KV cache "
        "at ctx 512 + 0.5 GiB overhead)"
    )
    assert msg.endswith("but only 3.6 GiB is usable (90% of 4.0 GiB, limited by cgroup memory.max)")
    assert e.value.exit_code == 50
    assert "ship a smaller quantization" in (e.value.hint or "")


def test_context_and_slots_shrink_until_the_model_fits() -> None:
    f = facts("container-cgroup2-2cpu-4g")
    f["cgroup"]["memory_limit_bytes"] = 6 * GIB
    d = s.select(f, manifest(variants=ALL_X86, models=[MISTRAL]))
    # 4 x 4096 needs 2 GiB of KV and does not fit in 5.4 GiB; 1 x 4096 does.
    assert (d["ctx_size"], d["parallel"]) == (4096, 1)
    assert d["memory"]["kv_bytes"] == 2 * 32 * 4096 * 1024 * 2
    assert d["memory"]["need_bytes"] <= d["memory"]["usable_bytes"]


def test_ctx_override_is_honoured_and_a_too_large_one_refused() -> None:
    f = facts("container-cgroup2-2cpu-4g")
    d = s.select(f, manifest(variants=ALL_X86), {"ctx_size": 1024, "parallel": 2})
    assert (d["ctx_size"], d["parallel"]) == (1024, 2)
    assert "ctx 1024, 2 slot(s): operator override" in d["reasons"]
    f["cgroup"]["memory_limit_bytes"] = 8 * GIB
    with pytest.raises(HostError, match="KV cache at ctx 131072"):
        s.select(f, manifest(variants=ALL_X86, models=[MISTRAL]), {"ctx_size": 131072})


def test_bundle_default_ctx_and_slots_are_used_and_overridable() -> None:
    f = facts("container-cgroup2-2cpu-4g")
    defaults = {"port": 9000, "host": "0.0.0.0", "ctx_size": 256, "parallel": 1, "model": "tiny"}
    d = s.select(f, manifest(variants=ALL_X86, defaults=defaults))
    assert (d["ctx_size"], d["parallel"], d["port"]) == (256, 1, 9000)
    assert "ctx 256, 1 slot(s): bundle default" in d["reasons"]
    d = s.select(f, manifest(variants=ALL_X86, defaults=defaults), {"ctx_size": 512})
    assert (d["ctx_size"], d["parallel"]) == (512, 1)
    assert "ctx 512, 1 slot(s): operator override" in d["reasons"]


def test_memory_available_is_used_when_no_cgroup_limit() -> None:
    d = s.select(facts("i7-8700-desktop"), manifest(variants=ALL_X86, models=[MISTRAL]))
    assert d["memory"]["effective_source"] == "MemAvailable"
    assert (d["ctx_size"], d["parallel"]) == (16384, 4)


def test_vram_unknown_without_nvidia_smi_offloads_all_and_says_so() -> None:
    d = s.select(
        facts("epyc-a100-driver-550", smi=False),
        manifest(variants=ALL_X86, cuda=CUDA, models=[MISTRAL]),
    )
    assert d["backend"] == "cuda"
    assert d["gpu_layers"] == 33
    assert reasons(d, "gpu layers 33:") == [
        "gpu layers 33: VRAM unknown (no nvidia-smi), all 32 blocks and the output layer on the GPU"
    ]


def test_model_larger_than_vram_is_partially_offloaded() -> None:
    f = facts("xeon-6248-v100-driver-470")
    f["nvidia"]["driver_version"] = "535.104.05"
    big = copy.deepcopy(MISTRAL)
    big["name"] = "big"
    big["gguf"].update(file_size=30 * GIB, block_count=60)
    d = s.select(f, manifest(variants=ALL_X86, cuda=CUDA, models=[big]))
    assert d["backend"] == "cuda"
    assert 0 < d["gpu_layers"] < 60
    n = d["gpu_layers"]
    assert reasons(d, f"gpu layers {n}:") == [
        f"gpu layers {n}: {n} of 60 blocks on the GPU, the other {60 - n} and the output layer "
        "on the CPU (14.2 GiB usable VRAM)"
    ]
    # The layers left on the host are counted against host memory.
    assert d["memory"]["host_weights_bytes"] < 30 * GIB


def test_gpu_layers_reason_counts_blocks_and_the_output_layer_apart() -> None:
    # --n-gpu-layers 33 on a 32-block model: every block and the output layer.
    mistral = ModelShape(parse_model(MISTRAL))
    assert gpu_offload(mistral, 32, forced=False, vram=80 * GIB, vram_usable=72 * GIB) == (
        33,
        "gpu layers 33: all 32 blocks and the output layer on the GPU (72.0 GiB usable VRAM)",
    )
    assert gpu_offload(mistral, 32, forced=True, vram=0, vram_usable=0) == (
        33,
        "gpu layers 33: operator override, all 32 blocks and the output layer on the GPU",
    )
    assert gpu_offload(mistral, 0, forced=False, vram=GIB, vram_usable=GIB // 2) == (
        0,
        "backend cpu: not even one layer fits in 0.5 GiB of usable VRAM",
    )
