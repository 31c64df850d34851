"""Host facts for runtime selection: CPU, cores, glibc, memory, cgroup limits, GPUs, disk.

Everything is read from files under a configurable root (``/`` on a real host, a fixture
tree in tests), so the parsers are pure functions of text and the only live calls are
``os.statvfs`` for the install path and, on a real host, ``nvidia-smi`` when it is on
PATH. Nothing here needs a GPU tool or touches the network; a missing file is a missing
fact, never an error. Standard library only: this module runs on target hosts (3.8+).

CLI: ``python3 -m runtime.detect [--root DIR] [--install-path P] [--commands DIR] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from runtime.errors import AirlockError, UsageError
from runtime.libc import libc_facts

FACTS_SCHEMA = 1

# Flags ggml's CPU variant scoring and kernels care about, by their /proc/cpuinfo names.
X86_FLAGS = (
    "sse4_2",
    "avx",
    "f16c",
    "fma",
    "avx2",
    "bmi2",
    "avx512f",
    "avx512cd",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512vbmi",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# aarch64 HWCAP names as /proc/cpuinfo "Features" prints them: asimddp is dotprod,
# fphp/asimdhp the FP16 arithmetic ggml calls FP16_VECTOR_ARITHMETIC.
ARM_FLAGS = ("asimd", "asimddp", "fphp", "asimdhp", "sve", "sve2", "i8mm", "bf16", "sme")

PCI_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel", "0x1a03": "aspeed"}

# A cgroup v1 "no limit" is LONG_MAX rounded down to the page size; anything this large
# is no limit at all.
_UNLIMITED = 1 << 62

# CPU implementer/part codes of common aarch64 server cores (Linux arch/arm64 cputype.h).
_ARM_PARTS = {
    ("0x41", "0xd0c"): "ARM Neoverse-N1",
    ("0x41", "0xd40"): "ARM Neoverse-V1",
    ("0x41", "0xd49"): "ARM Neoverse-N2",
    ("0x41", "0xd4f"): "ARM Neoverse-V2",
    ("0x41", "0xd8e"): "ARM Neoverse-N3",
    ("0xc0", "0xac3"): "Ampere-1",
    ("0xc0", "0xac4"): "Ampere-1a",
}

NVIDIA_SMI_QUERY = "index,pci.bus_id,name,driver_version,memory.total,memory.free,compute_cap"

Facts = Dict[str, Any]
# (argv) -> stdout, or None when the command is absent or failed.
CommandRunner = Callable[[Sequence[str]], Optional[str]]


# --------------------------------------------------------------------------- parsers


def parse_cpu_list(text: str) -> List[int]:
    """Parse a kernel CPU list such as ``0-3,8,10-11`` into sorted CPU numbers."""
    cpus: Set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1))
        else:
            cpus.add(int(part))
    return sorted(cpus)


def parse_cpuinfo(text: str) -> List[Dict[str, str]]:
    """Split /proc/cpuinfo into one key/value dict per processor block."""
    blocks: List[Dict[str, str]] = []
    current: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def parse_meminfo(text: str) -> Dict[str, int]:
    """/proc/meminfo values in bytes (the kernel prints kB, meaning KiB)."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if not fields or not fields[0].isdigit():
            continue
        value = int(fields[0])
        if len(fields) > 1 and fields[1] == "kB":
            value *= 1024
        out[key.strip()] = value
    return out


def parse_proc_cgroup(text: str) -> Dict[str, str]:
    """Map each controller (``memory``, ``cpu``, ...; ``""`` for v2) to its cgroup path."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
            continue
        for c in controllers.split(","):
            out[c] = path
    return out


def parse_cgroup_mounts(text: str) -> List[Tuple[str, str, str, Set[str]]]:
    """cgroup mounts from /proc/self/mountinfo: (fstype, mount root, mount point, options)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf = left.split()
        rf = right.split()
        if len(lf) < 5 or len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append((rf[0], lf[3], lf[4], set(rf[2].split(","))))
    return mounts


def parse_cpu_max(text: str) -> Optional[float]:
    """cgroup v2 ``cpu.max`` (``"200000 100000"`` or ``"max 100000"``) as a CPU count."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 else 100000
    return int(fields[0]) / period if period > 0 else None


def parse_limit_bytes(text: str) -> Optional[int]:
    """A memory limit file: ``max`` or a huge v1 value mean no limit."""
    value = text.strip()
    if not value or value == "max":
        return None
    n = int(value)
    return None if n >= _UNLIMITED else n


def parse_nvidia_version(text: str) -> Optional[str]:
    """Driver version from /proc/driver/nvidia/version (``NVRM version: ... 550.54.15 ...``)."""
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            for word in line.split():
                if word[:1].isdigit() and "." in word:
                    return word
    return None


def parse_nvidia_smi(text: str) -> List[Dict[str, Any]]:
    """Rows of ``nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY> --format=csv,noheader,nounits``."""
    rows = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 6:
            continue

        def mib(value: str) -> Optional[int]:
            return int(float(value)) * 1024 * 1024 if value.replace(".", "").isdigit() else None

        cap = fields[6] if len(fields) > 6 and fields[6][:1].isdigit() else None
        rows.append(
            {
                "index": int(fields[0]) if fields[0].isdigit() else None,
                "pci": _normalise_bus_id(fields[1]),
                "name": fields[2],
                "driver_version": fields[3],
                "vram_bytes": mib(fields[4]),
                "vram_free_bytes": mib(fields[5]),
                "compute_cap": cap,
            }
        )
    return rows


def _normalise_bus_id(bus_id: str) -> str:
    # nvidia-smi prints 00000000:41:00.0, sysfs 0000:41:00.0.
    bus_id = bus_id.strip().lower()
    domain, _, rest = bus_id.partition(":")
    if rest and len(domain) > 4:
        return domain[-4:] + ":" + rest
    return bus_id


def _uniq_count(groups: Iterable[object]) -> int:
    return len(set(groups))


# --------------------------------------------------------------------------- reader


class HostReader:
    """Reads text files relative to a root directory; a missing file reads as ``None``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def text(self, rel: str) -> Optional[str]:
        try:
            return self.path(rel).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def listdir(self, rel: str) -> List[str]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except OSError:
            return []


def system_commands(argv: Sequence[str]) -> Optional[str]:
    """Run a diagnostic tool if it is on PATH; absent or failing tools give ``None``."""
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, *argv[1:]], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def no_commands(argv: Sequence[str]) -> Optional[str]:
    """The runner for fixture roots: no tools are present."""
    return None


def recorded_commands(directory: Path) -> CommandRunner:
    """A runner answering from recorded outputs: ``<dir>/<tool>.txt`` for tool argv[0]."""

    def run(argv: Sequence[str]) -> Optional[str]:
        try:
            return (directory / (Path(argv[0]).name + ".txt")).read_text(encoding="utf-8")
        except OSError:
            return None

    return run


# --------------------------------------------------------------------------- facts


def _cpu_facts(r: HostReader, warnings: List[str]) -> Dict[str, Any]:
    blocks = [b for b in parse_cpuinfo(r.text("/proc/cpuinfo") or "") if "processor" in b]
    first = blocks[0] if blocks else {}
    flags_raw = (first.get("flags") or first.get("Features") or "").split()
    machine = _machine(r, first)
    relevant = X86_FLAGS if machine == "x86_64" else ARM_FLAGS if machine == "aarch64" else ()
    flags = sorted(f for f in set(flags_raw) if f in relevant)
    if not blocks:
        warnings.append("/proc/cpuinfo is missing or empty: CPU flags and cores are unknown")

    logical_all = [int(b["processor"]) for b in blocks if b["processor"].isdigit()]
    online_text = r.text("/sys/devices/system/cpu/online")
    online = parse_cpu_list(online_text) if online_text else logical_all
    allowed = _allowed_cpus(r)
    usable = [c for c in online if allowed is None or c in allowed]

    # Physical cores among the CPUs this process may use: sysfs thread siblings first
    # (exact, also on ARM), then cpuinfo's (physical id, core id), else one per CPU.
    siblings: List[Tuple[int, ...]] = []
    for cpu in usable:
        sib = r.text(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        if sib is None:
            siblings = []
            break
        siblings.append(tuple(parse_cpu_list(sib)))
    by_proc = {int(b["processor"]): b for b in blocks if b["processor"].isdigit()}
    if siblings:
        physical = _uniq_count(siblings)
        source = "sysfs thread_siblings_list"
    elif all("core id" in by_proc.get(c, {}) for c in usable) and usable:
        physical = _uniq_count(
            (by_proc[c].get("physical id", "0"), by_proc[c]["core id"]) for c in usable
        )
        source = "/proc/cpuinfo core id"
    else:
        physical = len(usable)
        source = "one core per logical CPU (no topology found)"
    sockets = _uniq_count(b.get("physical id", "0") for b in blocks) if blocks else 0

    if machine == "aarch64":
        key = (first.get("CPU implementer", "").lower(), first.get("CPU part", "").lower())
        model = _ARM_PARTS.get(key) or "ARM implementer {} part {}".format(*key)
        vendor = "ARM" if key[0] == "0x41" else "implementer " + key[0]
    else:
        model = first.get("model name", "unknown")
        vendor = first.get("vendor_id", "unknown")
    return {
        "arch": machine,
        "vendor": vendor,
        "model": model,
        "flags": flags,
        "logical": len(logical_all),
        "online": len(online),
        "usable_cpus": usable,
        "usable": len(usable),
        "physical_cores": physical,
        "physical_cores_source": source,
        "sockets": sockets,
    }


def _machine(r: HostReader, first: Dict[str, str]) -> str:
    # Fixture roots say what they are; on a real host the kernel does.
    if "flags" in first and "vendor_id" in first:
        return "x86_64"
    if "Features" in first and "CPU implementer" in first:
        return "aarch64"
    if r.root == Path("/"):
        return platform.machine()
    return "unknown"


def _allowed_cpus(r: HostReader) -> Optional[Set[int]]:
    status = r.text("/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return set(parse_cpu_list(line.split(":", 1)[1]))
    return None


def _numa_facts(r: HostReader) -> Dict[str, Any]:
    nodes = {}
    for name in r.listdir("/sys/devices/system/node"):
        if name.startswith("node") and name[4:].isdigit():
            cpus = r.text(f"/sys/devices/system/node/{name}/cpulist")
            nodes[name[4:]] = (cpus or "").strip()
    return {"nodes": len(nodes) or 1, "node_cpus": nodes}


def _memory_facts(r: HostReader, warnings: List[str]) -> Dict[str, Any]:
    info = parse_meminfo(r.text("/proc/meminfo") or "")
    if "MemTotal" not in info:
        warnings.append("/proc/meminfo is missing: memory is unknown")
    avail = info.get("MemAvailable")
    if avail is None and "MemFree" in info:
        # Kernels before 3.14 have no MemAvailable.
        avail = info["MemFree"] + info.get("Cached", 0) + info.get("Buffers", 0)
    return {"total_bytes": info.get("MemTotal"), "available_bytes": avail}


def _cgroup_dirs(r: HostReader, mount_point: str, mount_root: str, path: str) -> List[str]:
    """The cgroup's directory and its ancestors up to the mount, leaf first."""
    rel = path
    if mount_root not in ("/", "") and (rel == mount_root or rel.startswith(mount_root + "/")):
        rel = rel[len(mount_root) :]
    parts = [p for p in rel.split("/") if p]
    dirs = []
    for i in range(len(parts), -1, -1):
        d = "/".join([mount_point.rstrip("/"), *parts[:i]])
        if r.path(d).is_dir():
            dirs.append(d)
    return dirs


def _cgroup_facts(r: HostReader) -> Dict[str, Any]:
    paths = parse_proc_cgroup(r.text("/proc/self/cgroup") or "")
    mounts = parse_cgroup_mounts(r.text("/proc/self/mountinfo") or "")
    out: Dict[str, Any] = {
        "version": None,
        "cpu_limit": None,
        "cpu_limit_source": None,
        "memory_limit_bytes": None,
        "memory_limit_source": None,
    }
    if not paths:
        return out
    v1 = [p for p in paths if p]
    out["version"] = 1 if any(c in paths for c in ("memory", "cpu")) else 2 if "" in paths else 1

    def mount_for(controller: Optional[str]) -> Tuple[str, str]:
        for fstype, root, point, opts in mounts:
            if controller is None and fstype == "cgroup2":
                return point, root
            if controller is not None and fstype == "cgroup" and controller in opts:
                return point, root
        if controller is None:
            unified = "/sys/fs/cgroup/unified"
            return (
                unified
                if r.path(unified + "/cgroup.controllers").exists() and v1
                else "/sys/fs/cgroup"
            ), "/"
        return "/sys/fs/cgroup/" + controller, "/"

    def tighten(kind: str, value: Optional[float], source: str) -> None:
        key = kind + ("_limit_bytes" if kind == "memory" else "_limit")
        if value is None:
            return
        if out[key] is None or value < out[key]:
            out[key] = int(value) if kind == "memory" else value
            out[kind + "_limit_source"] = source

    # Limits apply along the whole hierarchy: the tightest ancestor wins.
    if "" in paths:
        point, root = mount_for(None)
        for d in _cgroup_dirs(r, point, root, paths[""]):
            cpu = r.text(d + "/cpu.max")
            if cpu is not None:
                tighten("cpu", parse_cpu_max(cpu), d + "/cpu.max")
            mem = r.text(d + "/memory.max")
            if mem is not None:
                tighten("memory", parse_limit_bytes(mem), d + "/memory.max")
    if "memory" in paths:
        point, root = mount_for("memory")
        for d in _cgroup_dirs(r, point, root, paths["memory"]):
            mem = r.text(d + "/memory.limit_in_bytes")
            if mem is not None:
                tighten("memory", parse_limit_bytes(mem), d + "/memory.limit_in_bytes")
    if "cpu" in paths:
        point, root = mount_for("cpu")
        for d in _cgroup_dirs(r, point, root, paths["cpu"]):
            quota = r.text(d + "/cpu.cfs_quota_us")
            period = r.text(d + "/cpu.cfs_period_us")
            if quota and period and int(quota) > 0 and int(period) > 0:
                tighten("cpu", int(quota) / int(period), d + "/cpu.cfs_quota_us")
    return out


def _gpu_facts(
    r: HostReader, run: CommandRunner, warnings: List[str]
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    gpus: List[Dict[str, Any]] = []
    for dev in r.listdir("/sys/bus/pci/devices"):
        base = "/sys/bus/pci/devices/" + dev
        cls = (r.text(base + "/class") or "").strip().lower()
        if not cls.startswith("0x03"):
            continue
        vendor_id = (r.text(base + "/vendor") or "").strip().lower()
        gpu: Dict[str, Any] = {
            "pci": dev.lower(),
            "vendor": PCI_VENDORS.get(vendor_id, "unknown"),
            "vendor_id": vendor_id,
            "device_id": (r.text(base + "/device") or "").strip().lower(),
            "class": cls,
            "name": None,
            "vram_bytes": None,
            "vram_free_bytes": None,
            "compute_cap": None,
        }
        vram = r.text(base + "/mem_info_vram_total")  # amdgpu exports this
        if vram is not None and vram.strip().isdigit():
            gpu["vram_bytes"] = int(vram.strip())
        gpus.append(gpu)

    nvidia: Dict[str, Any] = {"driver_version": None, "driver_source": None, "nvidia_smi": False}
    version_text = r.text("/proc/driver/nvidia/version")
    if version_text:
        nvidia["driver_version"] = parse_nvidia_version(version_text)
        nvidia["driver_source"] = "/proc/driver/nvidia/version"
    if any(g["vendor"] == "nvidia" for g in gpus) or nvidia["driver_version"]:
        smi = run(
            ["nvidia-smi", "--query-gpu=" + NVIDIA_SMI_QUERY, "--format=csv,noheader,nounits"]
        )
        if smi is None:
            # Drivers before ~510 reject the compute_cap field and print nothing.
            older = NVIDIA_SMI_QUERY.replace(",compute_cap", "")
            smi = run(["nvidia-smi", "--query-gpu=" + older, "--format=csv,noheader,nounits"])
        if smi is None:
            warnings.append(
                "nvidia-smi not available: GPU names and VRAM are unknown "
                "(the driver version comes from /proc/driver/nvidia/version)"
            )
        else:
            nvidia["nvidia_smi"] = True
            for row in parse_nvidia_smi(smi):
                match = [g for g in gpus if g["pci"] == row["pci"]]
                if match:
                    gpu = match[0]
                else:
                    # nvidia-smi sees a GPU sysfs did not show (e.g. a container): keep it.
                    gpu = {
                        "pci": row["pci"],
                        "vendor": "nvidia",
                        "vendor_id": "0x10de",
                        "device_id": None,
                        "class": None,
                    }
                    gpus.append(gpu)
                for k in ("name", "vram_bytes", "vram_free_bytes", "compute_cap"):
                    gpu[k] = row[k]
                if nvidia["driver_version"] is None and row["driver_version"]:
                    nvidia["driver_version"] = row["driver_version"]
                    nvidia["driver_source"] = "nvidia-smi"
    return gpus, nvidia


def disk_facts(install_path: Optional[Path], warnings: List[str]) -> Optional[Dict[str, Any]]:
    """Free and total bytes of the filesystem ``install_path`` is (or will be) on; None,
    with a line in ``warnings``, when it cannot be measured."""
    if install_path is None:
        return None
    # The install path may not exist yet: measure the filesystem it will be created on.
    probe = install_path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError as e:
        warnings.append(f"cannot measure free disk at {install_path}: {e}")
        return None
    return {
        "path": str(install_path),
        "measured_at": str(probe),
        "free_bytes": st.f_bavail * st.f_frsize,
        "total_bytes": st.f_blocks * st.f_frsize,
    }


def detect(
    root: Path = Path("/"),
    install_path: Optional[Path] = None,
    *,
    run: Optional[CommandRunner] = None,
) -> Facts:
    """Collect the host's facts as a JSON-ready dict (schema in docs/SELECTION.md).

    ``root`` is where /proc and /sys are read from; ``run`` answers tool invocations
    (default: real tools on a real root, none on a fixture root). Never raises for a
    missing fact: absent files give ``None`` values and a line in ``warnings``.
    """
    root = Path(root)
    if run is None:
        run = system_commands if root == Path("/") else no_commands
    r = HostReader(root)
    warnings: List[str] = []
    gpus, nvidia = _gpu_facts(r, run, warnings)
    facts: Facts = {
        "schema": FACTS_SCHEMA,
        "root": str(root),
        "kernel": (r.text("/proc/sys/kernel/osrelease") or "").strip() or None,
        "python": platform.python_version() if root == Path("/") else None,
        "cpu": _cpu_facts(r, warnings),
        "libc": libc_facts(root, live=root == Path("/"), warnings=warnings),
        "numa": _numa_facts(r),
        "memory": _memory_facts(r, warnings),
        "cgroup": _cgroup_facts(r),
        "gpus": gpus,
        "nvidia": nvidia,
        "disk": disk_facts(install_path, warnings),
        "warnings": warnings,
    }
    return facts


# --------------------------------------------------------------------------- CLI


def _gib(n: Optional[int]) -> str:
    return "unknown" if n is None else "%.1f GiB" % (n / 2**30)


def render(facts: Facts) -> str:
    """A short human summary of the facts."""
    cpu = facts["cpu"]
    cg = facts["cgroup"]
    lines = [
        "cpu:     {} ({}, {})".format(cpu["model"], cpu["vendor"], cpu["arch"]),
        f"cores:   {cpu['physical_cores']} physical, {cpu['logical']} logical, "
        f"{cpu['usable']} usable",
        "flags:   " + (" ".join(cpu["flags"]) or "none of interest"),
        f"numa:    {facts['numa']['nodes']} node(s)",
        "libc:    glibc {}, libstdc++ {}".format(
            facts["libc"]["glibc"] or "not found",
            "GLIBCXX_" + facts["libc"]["glibcxx"] if facts["libc"]["glibcxx"] else "not found",
        ),
        "memory:  {} total, {} available".format(
            _gib(facts["memory"]["total_bytes"]), _gib(facts["memory"]["available_bytes"])
        ),
        "cgroup:  v{}, cpu limit {}, memory limit {}".format(
            cg["version"] or "-",
            cg["cpu_limit"] if cg["cpu_limit"] is not None else "none",
            _gib(cg["memory_limit_bytes"]) if cg["memory_limit_bytes"] is not None else "none",
        ),
    ]
    for g in facts["gpus"]:
        lines.append(
            "gpu:     {} {} {}{}".format(
                g["pci"],
                g["vendor"],
                g.get("name") or g.get("device_id"),
                ", " + _gib(g["vram_bytes"]) if g.get("vram_bytes") else "",
            )
        )
    if facts["nvidia"]["driver_version"]:
        lines.append("nvidia:  driver {}".format(facts["nvidia"]["driver_version"]))
    if facts["disk"]:
        lines.append(
            "disk:    {} free at {}".format(
                _gib(facts["disk"]["free_bytes"]), facts["disk"]["path"]
            )
        )
    lines.extend("warning: " + w for w in facts["warnings"])
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m runtime.detect", description="Print this host's facts for airlock."
    )
    parser.add_argument(
        "--root", type=Path, default=Path("/"), help="read /proc and /sys under DIR (fixture trees)"
    )
    parser.add_argument(
        "--install-path",
        type=Path,
        default=None,
        help="measure free disk where the release will be installed",
    )
    parser.add_argument(
        "--commands",
        type=Path,
        default=None,
        help="answer tool calls (nvidia-smi) from DIR/<tool>.txt",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        if not args.root.is_dir():
            raise UsageError(
                f"--root {args.root} is not a directory",
                hint="pass / or a fixture tree that contains proc/ and sys/",
            )
        run = recorded_commands(args.commands) if args.commands else None
        facts = detect(args.root, args.install_path, run=run)
    except AirlockError as e:
        print(e.render(), file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=True))
    else:
        print(render(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
