"""runtime.detect: facts from fixture trees of real machine types, and from this host."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import pytest

from runtime import detect as d

HOSTS = Path(__file__).resolve().parents[2] / "fixtures" / "hosts"


def facts_of(name: str, *, smi: bool = True) -> dict:
    commands = HOSTS / name / "commands"
    run = d.recorded_commands(commands) if smi and commands.is_dir() else None
    return d.detect(HOSTS / name / "root", run=run)


def test_old_xeon_without_avx2_has_avx_only() -> None:
    f = facts_of("xeon-e5-2670-sandybridge")
    assert f["cpu"]["arch"] == "x86_64"
    assert f["cpu"]["flags"] == ["avx", "sse4_2"]
    assert f["cpu"]["logical"] == 32
    assert f["cpu"]["physical_cores"] == 16
    assert f["cpu"]["sockets"] == 2
    assert f["numa"]["nodes"] == 2
    assert f["numa"]["node_cpus"]["1"] == "8-15,24-31"
    assert f["cgroup"]["version"] == 1
    assert f["cgroup"]["memory_limit_bytes"] is None  # v1 "unlimited" is LONG_MAX
    # The ASPEED BMC is a display device, not a compute GPU; it is reported as such.
    assert [(g["vendor"], g["class"]) for g in f["gpus"]] == [("aspeed", "0x030000")]


def test_desktop_has_avx2_but_no_avx512_and_counts_smt_siblings_once() -> None:
    f = facts_of("i7-8700-desktop")
    assert {"avx2", "fma", "f16c", "bmi2"} <= set(f["cpu"]["flags"])
    assert not [x for x in f["cpu"]["flags"] if x.startswith("avx512")]
    assert (f["cpu"]["physical_cores"], f["cpu"]["logical"]) == (6, 12)
    assert f["cpu"]["physical_cores_source"] == "sysfs thread_siblings_list"


def test_icelake_server_reports_the_avx512_family() -> None:
    f = facts_of("xeon-8375c-icelake")
    assert {
        "avx512f",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512cd",
        "avx512vbmi",
        "avx512_vnni",
    } <= set(f["cpu"]["flags"])
    assert "avx512_bf16" not in f["cpu"]["flags"]
    assert "amx_tile" not in f["cpu"]["flags"]


def test_arm64_server_reports_asimd_dotprod_and_model_from_part_number() -> None:
    f = facts_of("ampere-altra-arm64")
    assert f["cpu"]["arch"] == "aarch64"
    assert f["cpu"]["model"] == "ARM Neoverse-N1"
    assert f["cpu"]["flags"] == ["asimd", "asimddp", "asimdhp", "fphp"]
    assert f["cpu"]["physical_cores"] == f["cpu"]["logical"] == 80


def test_nvidia_server_merges_sysfs_and_nvidia_smi() -> None:
    f = facts_of("epyc-a100-driver-550")
    nvidia = [g for g in f["gpus"] if g["vendor"] == "nvidia"]
    assert len(nvidia) == 1
    gpu = nvidia[0]
    assert gpu["pci"] == "0000:41:00.0"
    assert gpu["device_id"] == "0x20b5"
    assert gpu["name"] == "NVIDIA A100 80GB PCIe"
    assert gpu["vram_bytes"] == 81920 * 1024 * 1024
    assert gpu["compute_cap"] == "8.0"
    assert f["nvidia"] == {
        "driver_version": "550.54.15",
        "driver_source": "/proc/driver/nvidia/version",
        "nvidia_smi": True,
    }


def test_missing_nvidia_smi_is_fine_driver_comes_from_proc() -> None:
    f = facts_of("epyc-a100-driver-550", smi=False)
    gpu = next(g for g in f["gpus"] if g["vendor"] == "nvidia")
    assert gpu["vram_bytes"] is None and gpu["name"] is None
    assert f["nvidia"]["driver_version"] == "550.54.15"
    assert f["nvidia"]["nvidia_smi"] is False
    assert any("nvidia-smi not available" in w for w in f["warnings"])


def test_old_nvidia_smi_without_compute_cap_field_is_retried() -> None:
    calls = []

    def run(argv: Sequence[str]) -> Optional[str]:
        calls.append(list(argv))
        if "compute_cap" in argv[1]:
            return None  # 470-series nvidia-smi: "Field compute_cap is not a valid field"
        return "0, 00000000:3B:00.0, Tesla V100-PCIE-16GB, 470.82.01, 16160, 16155\n"

    f = d.detect(HOSTS / "xeon-6248-v100-driver-470" / "root", run=run)
    assert len(calls) == 2
    gpu = next(g for g in f["gpus"] if g["vendor"] == "nvidia")
    assert gpu["name"] == "Tesla V100-PCIE-16GB"
    assert gpu["compute_cap"] is None
    assert f["nvidia"]["driver_version"] == "470.82.01"


def test_container_cgroup_v2_limits_cpu_and_memory() -> None:
    f = facts_of("container-cgroup2-2cpu-4g")
    assert f["cgroup"]["version"] == 2
    assert f["cgroup"]["cpu_limit"] == 2.0
    assert f["cgroup"]["cpu_limit_source"] == "/sys/fs/cgroup/cpu.max"
    assert f["cgroup"]["memory_limit_bytes"] == 4 * 1024**3
    # /proc/meminfo in a container shows the node's memory, not the limit.
    assert f["memory"]["total_bytes"] == 128 * 1024**3


def _tree(tmp_path: Path, files: dict) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_cgroup_v2_tightest_ancestor_limit_wins(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/kubepods.slice/pod1/ctr\n",
            "proc/self/mountinfo": "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            "sys/fs/cgroup/kubepods.slice/memory.max": "max\n",
            "sys/fs/cgroup/kubepods.slice/pod1/memory.max": "2147483648\n",
            "sys/fs/cgroup/kubepods.slice/pod1/cpu.max": "150000 100000\n",
            "sys/fs/cgroup/kubepods.slice/pod1/ctr/memory.max": "max\n",
            "sys/fs/cgroup/kubepods.slice/pod1/ctr/cpu.max": "max 100000\n",
        },
    )
    cg = d.detect(root)["cgroup"]
    assert cg["memory_limit_bytes"] == 2 * 1024**3
    assert cg["memory_limit_source"] == "/sys/fs/cgroup/kubepods.slice/pod1/memory.max"
    assert cg["cpu_limit"] == 1.5


def test_cgroup_v1_quota_and_memory_limit(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
            "proc/self/mountinfo": (
                "32 31 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
                "33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
            ),
            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "3221225472\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    cg = d.detect(root)["cgroup"]
    assert cg["version"] == 1
    assert cg["memory_limit_bytes"] == 3 * 1024**3
    assert cg["cpu_limit"] == 3.0


def test_cgroup_v1_mount_root_inside_container_is_stripped(tmp_path: Path) -> None:
    # Docker without a cgroup namespace: /proc/self/cgroup names the host path, the mount
    # root is that same path, and the files sit at the mount point itself.
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/docker/abc\n",
            "proc/self/mountinfo": (
                "40 31 0:29 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
            ),
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "1073741824\n",
        },
    )
    assert d.detect(root)["cgroup"]["memory_limit_bytes"] == 1024**3


def test_empty_root_gives_warnings_not_errors(tmp_path: Path) -> None:
    f = d.detect(tmp_path)
    assert f["cpu"]["flags"] == []
    assert f["memory"]["total_bytes"] is None
    assert f["gpus"] == []
    assert any("/proc/cpuinfo" in w for w in f["warnings"])
    assert any("/proc/meminfo" in w for w in f["warnings"])


def test_fixture_root_never_runs_real_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(argv: Sequence[str]) -> Optional[str]:
        raise AssertionError("ran " + argv[0])

    monkeypatch.setattr(d, "system_commands", boom)
    f = d.detect(HOSTS / "epyc-a100-driver-550" / "root")
    assert f["nvidia"]["nvidia_smi"] is False


def test_disk_is_measured_on_the_nearest_existing_parent(tmp_path: Path) -> None:
    target = tmp_path / "opt" / "airlock" / "releases"
    f = d.detect(HOSTS / "i7-8700-desktop" / "root", install_path=target)
    assert f["disk"]["path"] == str(target)
    assert f["disk"]["measured_at"] == str(tmp_path)
    st = os.statvfs(tmp_path)
    assert f["disk"]["total_bytes"] == st.f_blocks * st.f_frsize


def test_this_host_is_detected_for_real() -> None:
    f = d.detect(Path("/"))
    assert f["cpu"]["logical"] == os.cpu_count()
    assert f["cpu"]["usable"] == len(os.sched_getaffinity(0))
    assert f["memory"]["total_bytes"] > 0
    assert f["python"]


def test_build_machine_fixture_is_a_real_capture() -> None:
    f = facts_of("build-machine")
    assert f["cpu"]["arch"] == "x86_64"
    assert f["cpu"]["logical"] >= 1
    assert f["memory"]["total_bytes"] > 0


def test_parsers() -> None:
    assert d.parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert d.parse_cpu_max("max 100000") is None
    assert d.parse_cpu_max("50000 100000") == 0.5
    assert d.parse_limit_bytes("max") is None
    assert d.parse_limit_bytes("9223372036854771712") is None
    assert (
        d.parse_nvidia_version(
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build\n"
        )
        == "550.54.15"
    )


def test_cli_json_with_recorded_commands(capsys: pytest.CaptureFixture[str]) -> None:
    host = HOSTS / "epyc-a100-driver-550"
    rc = d.main(["--root", str(host / "root"), "--commands", str(host / "commands"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == d.FACTS_SCHEMA
    assert out["nvidia"]["nvidia_smi"] is True


def test_cli_rejects_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = d.main(["--root", str(tmp_path / "nope")])
    assert rc == 2
    assert "is not a directory" in capsys.readouterr().err


def test_h200_host_captured_for_real_reports_gpu_driver_and_cgroup_v2() -> None:
    # tests/fixtures/hosts/h200-driver-580: captured with capture.py on a real H200 machine
    f = facts_of("h200-driver-580")
    (gpu,) = [g for g in f["gpus"] if g["vendor"] == "nvidia"]
    assert (gpu["name"], gpu["compute_cap"], gpu["device_id"]) == ("NVIDIA H200", "9.0", "0x2335")
    assert gpu["vram_bytes"] == 143771 * 1024 * 1024
    assert f["nvidia"] == {
        "driver_version": "580.159.04",
        "driver_source": "/proc/driver/nvidia/version",
        "nvidia_smi": True,
    }
    assert f["cgroup"]["version"] == 2
    assert f["cpu"]["usable"] == 16 and "amx_tile" in f["cpu"]["flags"]
