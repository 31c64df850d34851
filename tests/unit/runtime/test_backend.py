"""runtime.backend: CUDA only when GPU, driver, module and architecture all allow it."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import pytest

from runtime.backend import choose_backend
from runtime.components import parse_engine
from runtime.errors import HostError
from tests.unit.runtime.test_selection import ALL_X86, CUDA, GIB, facts, manifest


def backend(
    host_facts: Dict[str, Any], m: Dict[str, Any], forced: Optional[str] = None
) -> Tuple[str, str, List[Dict[str, Any]]]:
    engine = parse_engine(m["components"]["engine"]["properties"])
    return choose_backend(host_facts, engine, [f["path"] for f in m["files"]], forced)


def test_a100_with_current_driver_gets_cuda_and_names_the_gpu() -> None:
    chosen, why, gpus = backend(
        facts("epyc-a100-driver-550"), manifest(variants=ALL_X86, cuda=CUDA)
    )
    assert chosen == "cuda"
    assert why == (
        "backend cuda: NVIDIA A100 80GB PCIe, driver 550.54.15 >= 525.60.13 required by CUDA 12.4"
    )
    assert [g["vendor"] for g in gpus] == ["nvidia"]


def test_old_driver_falls_back_to_cpu_with_the_versions_in_the_reason() -> None:
    chosen, why, gpus = backend(
        facts("xeon-6248-v100-driver-470"), manifest(variants=ALL_X86, cuda=CUDA)
    )
    assert (chosen, gpus) == ("cpu", [])
    assert why == (
        "backend cpu: NVIDIA driver 470.82.01 is older than 525.60.13 required by the "
        "CUDA 12.4 module"
    )


def test_gpu_without_cuda_module_in_bundle_uses_cpu() -> None:
    chosen, why, _ = backend(facts("epyc-a100-driver-550"), manifest(variants=ALL_X86))
    assert chosen == "cpu"
    assert why == "backend cpu: 1 NVIDIA GPU(s) present but the bundle has no CUDA module"


def test_cuda_property_without_module_file_uses_cpu() -> None:
    m = manifest(variants=ALL_X86, cuda=CUDA)
    m["files"] = [f for f in m["files"] if f["path"] != CUDA["module"]]
    chosen, why, _ = backend(facts("epyc-a100-driver-550"), m)
    assert chosen == "cpu"
    assert "is not in the bundle's files" in why


def test_gpu_older_than_bundled_architectures_uses_cpu() -> None:
    cuda = dict(CUDA, architectures=["89", "90"])
    chosen, why, _ = backend(facts("epyc-a100-driver-550"), manifest(variants=ALL_X86, cuda=cuda))
    assert chosen == "cpu"
    assert "compute capability 8.0 is below the bundle's CUDA architectures 89, 90" in why


def test_no_nvidia_gpu_uses_cpu() -> None:
    chosen, why, _ = backend(facts("i7-8700-desktop"), manifest(variants=ALL_X86, cuda=CUDA))
    assert chosen == "cpu"
    assert why == "backend cpu: no NVIDIA GPU found (PCI class 0x03, vendor 0x10de)"


def test_amd_gpu_is_named_in_the_cpu_reason() -> None:
    f = facts("i7-8700-desktop")
    f["gpus"].append(
        {
            "pci": "0000:03:00.0",
            "vendor": "amd",
            "vendor_id": "0x1002",
            "device_id": "0x744c",
            "class": "0x030000",
            "vram_bytes": 24 * GIB,
        }
    )
    chosen, why, _ = backend(f, manifest(variants=ALL_X86, cuda=CUDA))
    assert chosen == "cpu"
    assert "the AMD GPU at 0000:03:00.0 needs a ROCm/Vulkan backend" in why


def test_operator_backend_cpu_override_wins_over_a_usable_gpu() -> None:
    chosen, why, _ = backend(
        facts("epyc-a100-driver-550"), manifest(variants=ALL_X86, cuda=CUDA), "cpu"
    )
    assert (chosen, why) == ("cpu", "backend cpu: operator override backend=cpu")


def test_forcing_cuda_on_an_old_driver_is_a_host_error() -> None:
    with pytest.raises(HostError, match="backend=cuda was requested but NVIDIA driver") as e:
        backend(facts("xeon-6248-v100-driver-470"), manifest(variants=ALL_X86, cuda=CUDA), "cuda")
    assert e.value.exit_code == 50


def test_driver_versions_compare_numerically_not_as_text() -> None:
    f = facts("epyc-a100-driver-550")
    f["nvidia"]["driver_version"] = "525.105.17"  # "105" < "60" as text
    chosen, _, _ = backend(f, manifest(variants=ALL_X86, cuda=CUDA))
    assert chosen == "cuda"
