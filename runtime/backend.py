"""CPU or CUDA: the CUDA backend only when the GPU, its driver and the bundled module allow it."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from runtime.errors import HostError


def _version_tuple(v: str) -> Tuple[int, ...]:
    out = []
    for part in v.strip().split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def choose_backend(
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
