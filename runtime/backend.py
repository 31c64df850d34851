"""CPU or CUDA: the CUDA backend only when the GPU, its driver and the bundled module allow it."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from runtime.components import CudaFacts, EngineFacts
from runtime.errors import HostError


def _version_tuple(v: str) -> Tuple[int, ...]:
    out = []
    for part in v.strip().split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _cuda_version(cuda: CudaFacts) -> str:
    return "?" if cuda.cuda_version is None else cuda.cuda_version


def choose_backend(
    facts: Dict[str, Any], engine: EngineFacts, paths: Sequence[str], forced: Optional[str]
) -> Tuple[str, str, List[Dict[str, Any]]]:
    """("cpu"|"cuda", reason, usable NVIDIA GPUs). Raises HostError when ``forced`` is
    "cuda" and the host or the bundle cannot run CUDA."""
    if forced == "cpu":
        return "cpu", "backend cpu: operator override backend=cpu", []
    cuda = engine.cuda
    nvidia = [g for g in facts.get("gpus") or [] if g.get("vendor") == "nvidia"]
    driver = (facts.get("nvidia") or {}).get("driver_version")
    problem = None
    if cuda is None:
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
    elif cuda.module and paths and cuda.module not in paths:
        problem = f"the CUDA module {cuda.module} is not in the bundle's files"
    elif not driver:
        problem = "NVIDIA GPU present but no NVIDIA driver is loaded (/proc/driver/nvidia/version)"
    else:
        need = cuda.min_driver or "0"
        if _version_tuple(driver) < _version_tuple(need):
            version = _cuda_version(cuda)
            problem = (
                f"NVIDIA driver {driver} is older than {need} required by the CUDA {version} module"
            )
    usable = nvidia
    if problem is None and cuda is not None:
        archs = [a for a in cuda.architectures if a.isdigit()]
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
                        ", ".join(archs),
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
        f"backend cuda: {names}, driver {driver} >= {cuda.min_driver} required by CUDA "
        + _cuda_version(cuda),
        usable,
    )
