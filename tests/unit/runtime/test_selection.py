"""runtime.selection: decisions for real machine types, with their reasons, and refusals.

The parts have their own tests (test_variants, test_backend, test_fit, test_command,
test_overrides); the helpers here (fixture host facts, manifests, models) serve them all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from runtime import selection as s
from runtime.detect import detect, recorded_commands
from runtime.errors import HostError, UsageError
from runtime.variants import X86_VARIANTS

HOSTS = Path(__file__).resolve().parents[2] / "fixtures" / "hosts"

GIB = 1024**3

ALL_X86 = list(X86_VARIANTS)

TINY = {
    "name": "tiny",
    "entrypoint": "models/tiny/tiny.gguf",
    "files": [{"path": "models/tiny/tiny.gguf", "size": 500_000}],
    "gguf": {
        "architecture": "llama",
        "parameters": 123,
        "quantization": "F16",
        "context_length": 2048,
        "embedding_length": 64,
        "block_count": 2,
        "head_count": 4,
        "head_count_kv": 4,
        "file_size": 500_000,
    },
}
# Mistral-7B-Instruct Q4_K_M: 32 layers, 4096 wide, 8 KV heads of 32.

MISTRAL = {
    "name": "mistral-7b",
    "entrypoint": "models/mistral-7b/mistral-7b.Q4_K_M.gguf",
    "files": [{"path": "models/mistral-7b/mistral-7b.Q4_K_M.gguf", "size": 4_368_439_584}],
    "gguf": {
        "architecture": "llama",
        "parameters": 7_241_732_096,
        "quantization": "Q4_K_M",
        "context_length": 32768,
        "embedding_length": 4096,
        "block_count": 32,
        "head_count": 32,
        "head_count_kv": 8,
        "file_size": 4_368_439_584,
    },
}

CUDA = {
    "architectures": ["70", "80", "90"],
    "cuda_version": "12.4",
    "min_driver": "525.60.13",
    "module": "engine/lib/libggml-cuda.so",
    "runtime_dir": "engine/lib/cuda",
}


def manifest(
    *,
    variants: List[str],
    cuda: Optional[Dict[str, Any]] = None,
    models: Optional[List[Dict[str, Any]]] = None,
    arch: str = "x86_64",
    defaults: Optional[Dict[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    models = models or [TINY]
    files = [{"path": "engine/bin/llama-server"}, {"path": "engine/lib/libllama.so"}]
    files += [{"path": f"engine/lib/libggml-cpu-{v}.so"} for v in variants]
    if cuda:
        files.append({"path": cuda["module"]})
    for m in models:
        files += m["files"]
    engine = {
        "cpu_variants": variants,
        "cuda": cuda,
        "arch": arch,
        "server": "engine/bin/llama-server",
        "lib_dir": "engine/lib",
        "backend_dir": "engine/lib",
        "server_defaults": defaults
        or {
            "port": 8080,
            "host": "0.0.0.0",
            "ctx_size": "auto",
            "parallel": "auto",
            "model": models[0]["name"],
            "api_key_file": None,
        },
        **(extra or {}),
    }
    return {
        "components": {
            "engine": {"type": "runtime", "properties": engine},
            "models": {"type": "model", "properties": {"models": models}},
        },
        "files": sorted(files, key=lambda f: f["path"]),
    }


def facts(name: str, *, smi: bool = True) -> Dict[str, Any]:
    commands = HOSTS / name / "commands"
    run = recorded_commands(commands) if smi and commands.is_dir() else None
    return detect(HOSTS / name / "root", run=run)


def reasons(decision: Dict[str, Any], prefix: str) -> List[str]:
    return [r for r in decision["reasons"] if r.startswith(prefix)]


# --------------------------------------------------------------------------- arch


def test_x86_bundle_on_arm_host_is_refused() -> None:
    with pytest.raises(HostError, match="built for x86_64 but this host is aarch64") as e:
        s.select(facts("ampere-altra-arm64"), manifest(variants=["x64", "haswell"]))
    assert e.value.exit_code == 50


def test_arm_bundle_on_altra_picks_dotprod_fp16_variant() -> None:
    arm = ["armv8.0_1", "armv8.2_1", "armv8.2_2", "armv8.2_3", "armv8.6_1"]
    d = s.select(facts("ampere-altra-arm64"), manifest(variants=arm, arch="aarch64"))
    assert d["cpu_variant"] == "armv8.2_2"  # Neoverse-N1: dotprod + fp16, no SVE
    assert d["threads"] == 80


# --------------------------------------------------------------------------- backend


CUDA13_SM90 = {
    "architectures": ["90"],
    "cuda_version": "13.0",
    "min_driver": "580.65.06",
    "module": "engine/lib/libggml-cuda.so",
    "runtime_dir": "engine/lib/cuda",
}


def test_real_h200_host_runs_a_cuda13_sm90_module_fully_offloaded() -> None:
    d = s.select(
        facts("h200-driver-580"),
        manifest(variants=["x64", "haswell"], cuda=CUDA13_SM90, models=[MISTRAL]),
    )
    assert d["backend"] == "cuda"
    assert d["gpu_layers"] == 33
    assert reasons(d, "gpu layers 33:") == [
        "gpu layers 33: all 32 blocks and the output layer on the GPU (125.8 GiB usable VRAM)"
    ]
    (why,) = reasons(d, "backend cuda:")
    assert "NVIDIA H200, driver 580.159.04 >= 580.65.06 required by CUDA 13.0" in why
    assert d["env"]["LD_LIBRARY_PATH"] == "engine/lib:engine/lib/cuda"
    assert d["cpu_variant"] == "haswell"
    assert reasons(d, "cpu variant haswell")[0].endswith(
        "sapphirerapids would be faster here but is not in the bundle"
    )


def test_real_h200_host_with_a_driver_too_old_for_cuda13_falls_back_to_cpu() -> None:
    f = facts("h200-driver-580")
    f["nvidia"]["driver_version"] = "575.57.08"
    d = s.select(f, manifest(variants=["x64", "haswell"], cuda=CUDA13_SM90, models=[MISTRAL]))
    assert d["backend"] == "cpu" and d["env"]["CUDA_VISIBLE_DEVICES"] == ""
    (why,) = reasons(d, "backend cpu:")
    assert "NVIDIA driver 575.57.08 is older than 580.65.06 required by the CUDA 13.0 module" in why


def test_a100_with_current_driver_runs_cuda_fully_offloaded() -> None:
    d = s.select(
        facts("epyc-a100-driver-550"), manifest(variants=ALL_X86, cuda=CUDA, models=[MISTRAL])
    )
    assert d["backend"] == "cuda"
    assert d["gpu_layers"] == 33  # 32 blocks + the output layer
    (why,) = reasons(d, "backend cuda:")
    assert "NVIDIA A100 80GB PCIe, driver 550.54.15 >= 525.60.13" in why
    assert d["env"]["LD_LIBRARY_PATH"] == "engine/lib:engine/lib/cuda"
    assert "CUDA_VISIBLE_DEVICES" not in d["env"]
    assert d["argv"][d["argv"].index("--n-gpu-layers") + 1] == "33"


def test_old_driver_falls_back_to_cpu_with_the_versions_in_the_reason() -> None:
    d = s.select(facts("xeon-6248-v100-driver-470"), manifest(variants=ALL_X86, cuda=CUDA))
    assert d["backend"] == "cpu"
    assert d["gpu_layers"] == 0
    assert reasons(d, "backend cpu:") == [
        "backend cpu: NVIDIA driver 470.82.01 is older than 525.60.13 required by the "
        "CUDA 12.4 module"
    ]
    assert d["env"]["LD_LIBRARY_PATH"] == "engine/lib"
    assert d["env"]["CUDA_VISIBLE_DEVICES"] == ""


def test_operator_backend_cpu_override_is_honoured_and_reported() -> None:
    d = s.select(
        facts("epyc-a100-driver-550"), manifest(variants=ALL_X86, cuda=CUDA), {"backend": "cpu"}
    )
    assert d["backend"] == "cpu"
    assert "backend cpu: operator override backend=cpu" in d["reasons"]
    assert d["overrides"] == {"backend": "cpu"}


# --------------------------------------------------------------------------- threads


def test_threads_are_physical_cores_not_smt_siblings() -> None:
    assert s.select(facts("i7-8700-desktop"), manifest(variants=ALL_X86))["threads"] == 6
    assert s.select(facts("xeon-e5-2670-sandybridge"), manifest(variants=ALL_X86))["threads"] == 16


def test_container_cpu_quota_caps_threads() -> None:
    d = s.select(facts("container-cgroup2-2cpu-4g"), manifest(variants=ALL_X86))
    assert d["threads"] == 2
    assert reasons(d, "threads 2:") == [
        "threads 2: cgroup CPU limit 2 (cpu.max) is below 16 physical cores"
    ]
    assert d["argv"][d["argv"].index("--threads") + 1] == "2"


def test_threads_override_is_honoured() -> None:
    d = s.select(facts("i7-8700-desktop"), manifest(variants=ALL_X86), {"threads": 3})
    assert d["threads"] == 3
    assert "threads 3: operator override" in d["reasons"]


# --------------------------------------------------------------------------- model and paths


def test_api_key_file_and_named_model() -> None:
    other = dict(
        TINY,
        name="other",
        entrypoint="models/other/o.gguf",
        files=[{"path": "models/other/o.gguf", "size": 1000}],
    )
    defaults = {
        "port": 9000,
        "host": "127.0.0.1",
        "model": "other",
        "api_key_file": "/etc/airlock/api-key",
    }
    d = s.select(
        facts("build-machine"), manifest(variants=["x64"], models=[TINY, other], defaults=defaults)
    )
    assert d["model"] == "other"
    assert "--api-key-file" in d["argv"]
    assert d["port"] == 9000
    with pytest.raises(UsageError, match="model 'nope' is not in the bundle"):
        s.select(facts("build-machine"), manifest(variants=["x64"]), {"model": "nope"})


def test_resolve_makes_paths_absolute() -> None:
    d = s.select(facts("epyc-a100-driver-550"), manifest(variants=ALL_X86, cuda=CUDA))
    r = s.resolve(d, Path("/opt/airlock/releases/1.0.0"))
    assert r["argv"][0] == "/opt/airlock/releases/1.0.0/engine/bin/llama-server"
    assert r["argv"][r["argv"].index("--model") + 1] == (
        "/opt/airlock/releases/1.0.0/models/tiny/tiny.gguf"
    )
    assert r["env"]["LD_LIBRARY_PATH"] == (
        "/opt/airlock/releases/1.0.0/engine/lib:/opt/airlock/releases/1.0.0/engine/lib/cuda"
    )
    assert r["cwd"] == "/opt/airlock/releases/1.0.0/engine/lib"


def test_resolve_of_a_relative_release_dir_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the launcher joins relative paths to the release dir again: they must be absolute here
    monkeypatch.chdir(tmp_path)
    d = s.select(facts("epyc-a100-driver-550"), manifest(variants=ALL_X86, cuda=CUDA))
    r = s.resolve(d, Path("carry/release"))
    base = str(tmp_path / "carry" / "release")
    assert r["argv"][0] == base + "/engine/bin/llama-server"
    assert r["cwd"] == base + "/engine/lib"
    assert all(p.startswith(base) for p in r["env"]["LD_LIBRARY_PATH"].split(":"))


def test_manifest_without_engine_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"no components\.engine\.properties"):
        s.select(facts("build-machine"), {"components": {}})


# --------------------------------------------------------------------------- CLI


def test_cli_prints_decision_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f.json").write_text(json.dumps(facts("container-cgroup2-2cpu-4g")))
    (tmp_path / "m.json").write_text(json.dumps(manifest(variants=ALL_X86)))
    rc = s.main(
        [
            "--facts",
            str(tmp_path / "f.json"),
            "--manifest",
            str(tmp_path / "m.json"),
            "--overrides",
            '{"parallel": 1}',
            "--json",
        ]
    )
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["parallel"] == 1 and d["threads"] == 2 and d["backend"] == "cpu"


def test_cli_refusal_exits_50_with_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f.json").write_text(json.dumps(facts("container-cgroup2-2cpu-4g")))
    (tmp_path / "m.json").write_text(json.dumps(manifest(variants=ALL_X86, models=[MISTRAL])))
    rc = s.main(
        ["--facts", str(tmp_path / "f.json"), "--manifest", str(tmp_path / "m.json"), "--json"]
    )
    assert rc == 50
    out = capsys.readouterr()
    assert json.loads(out.out)["exit_code"] == 50
    assert "error: model mistral-7b needs" in out.err


def test_cli_detect_on_this_host_with_release_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A stand-in llama-server whose --help lists --offline: the probe must pick it up.
    release = tmp_path / "rel"
    (release / "engine/bin").mkdir(parents=True)
    server = release / "engine/bin/llama-server"
    server.write_text("#!/bin/sh\necho '--offline   offline mode'\necho '--metrics'\n")
    server.chmod(0o755)
    (tmp_path / "m.json").write_text(json.dumps(manifest(variants=["x64"])))
    rc = s.main(
        [
            "--detect",
            "--manifest",
            str(tmp_path / "m.json"),
            "--release-dir",
            str(release),
            "--json",
        ]
    )
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["argv"][0] == str(server)
    assert "--offline" in d["argv"] and "--no-webui" not in d["argv"]
    assert d["cpu_variant"] == "x64"
