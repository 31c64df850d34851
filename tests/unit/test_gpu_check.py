"""tests/gpu/cuda_host_check.py's pure parts, on real llama-server logs of the CUDA bundle.

``h200-run/`` holds what the check wrote on a real NVIDIA H200 host (driver 580.159.04);
``no-gpu-server.log`` is the same engine serving on this build machine, which has no GPU.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path
from types import ModuleType

from runtime.settings import parse_env_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"


def _check_module() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "gpu" / "cuda_host_check.py"
    spec = importlib.util.spec_from_file_location("cuda_host_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("cuda_host_check", module)
    spec.loader.exec_module(module)
    return module


check = _check_module()


def test_h200_log_shows_the_device_and_every_layer_offloaded() -> None:
    ev = check.log_evidence((FIXTURES / "h200-run" / "server.log").read_text())
    assert ev["cuda_devices"] == 1
    assert ev["layers_offloaded"] == [3, 3]
    assert any("NVIDIA H200" in line for line in ev["device_lines"])
    assert any("CUDA : ARCHS = 900 | NO_VMM = 1" in line for line in ev["device_lines"])
    assert [b.split(":")[1].split("buffer")[0].split()[-1] for b in ev["cuda_buffers"]] == [
        "model",
        "KV",
        "compute",
    ]


def test_same_engine_without_a_gpu_shows_no_device_and_no_offload() -> None:
    ev = check.log_evidence((FIXTURES / "no-gpu-server.log").read_text())
    assert ev["cuda_devices"] == 0
    assert ev["layers_offloaded"] is None and ev["cuda_buffers"] == []


def test_recorded_h200_decision_chose_cuda_for_every_layer() -> None:
    decision = json.loads((FIXTURES / "h200-run" / "decision.json").read_text())
    assert decision["backend"] == "cuda" and decision["gpu_layers"] == 3
    argv = decision["argv"]
    assert argv[argv.index("--n-gpu-layers") + 1] == "3"
    assert decision["env"]["LD_LIBRARY_PATH"].endswith("engine/lib/cuda")


def test_settings_render_like_the_install_template() -> None:
    decision = {
        "argv": ["/r/engine/bin/llama-server", "--model", "/r/models/m model.gguf"],
        "cwd": "/r/engine/lib",
        "host": "0.0.0.0",
        "port": 8080,
        "env": {"LD_LIBRARY_PATH": "/r/engine/lib:/r/engine/lib/cuda"},
    }
    text = check.render_env(decision, "1.0.0")
    settings = parse_env_file(text)  # what the service's launcher reads
    argv = shlex.split(settings["AIRLOCK_ARGV"])
    assert argv[:3] == decision["argv"]
    assert argv[3:] == ["--log-verbosity", "4"]
    assert settings["AIRLOCK_HEALTH_URL"] == "http://127.0.0.1:8080"
    assert settings["LD_LIBRARY_PATH"] == "/r/engine/lib:/r/engine/lib/cuda"
    assert settings["HF_HUB_OFFLINE"] == "1"
