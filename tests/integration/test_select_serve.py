"""The selection drives the real llama-server: its argv, env and cwd serve a generated model,
and ggml loads the CPU variant that runtime.selection predicted for this machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from bundler.demo.tinymodel import write_tiny_model
from bundler.engine import llamacpp, sdist
from bundler.sources.ggufinfo import read_facts
from runtime import selection
from runtime.detect import detect

LLAMA_CPP_PYTHON = "0.3.36"


def _cache() -> Path:
    return Path(os.environ.get("AIRLOCK_CACHE", "~/.cache/airlock")).expanduser()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A release directory laid out as the bundle unpacks it, and its manifest."""
    source = sdist.fetch_sdist(LLAMA_CPP_PYTHON, cache_dir=_cache())
    engine = llamacpp.build_engine(
        source, variants=llamacpp.default_variants(), cuda=None, cache_dir=_cache()
    )
    rel = tmp_path_factory.mktemp("release")
    llamacpp.stage_engine(engine, rel / "engine")
    model = rel / "models" / "tiny" / "tiny.gguf"
    model.parent.mkdir(parents=True)
    shards = write_tiny_model(model)
    props = dict(engine.properties)
    props["server_defaults"] = {
        "port": _free_port(),
        "host": "127.0.0.1",
        "ctx_size": "auto",
        "parallel": "auto",
        "model": "tiny",
        "api_key_file": None,
    }
    files = sorted(str(p.relative_to(rel)) for p in rel.rglob("*") if p.is_file())
    manifest = {
        "components": {
            "engine": {"type": "runtime", "properties": props},
            "models": {
                "type": "model",
                "properties": {
                    "models": [
                        {
                            "name": "tiny",
                            "entrypoint": "models/tiny/tiny.gguf",
                            "files": [
                                {"path": str(p.relative_to(rel)), "size": p.stat().st_size}
                                for p in shards
                            ],
                            "gguf": read_facts(shards).properties(),
                        }
                    ]
                },
            },
        },
        "files": [{"path": f} for f in files],
    }
    return {"dir": rel, "manifest": manifest}


@pytest.fixture(scope="module")
def served(release: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    decision = selection.decide(detect(Path("/")), release["manifest"], release_dir=release["dir"])
    log = release["dir"] / "server.log"
    env = {"PATH": "/usr/bin:/bin", **decision["env"]}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            decision["argv"], cwd=decision["cwd"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{decision['port']}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama-server never became healthy:\n" + log.read_text()[-3000:])
            time.sleep(0.5)
        yield {"decision": decision, "base": base, "log": log, "pid": proc.pid}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_probe_finds_the_offline_and_no_webui_flags_of_this_llama_server(
    served: Dict[str, Any],
) -> None:
    argv = served["decision"]["argv"]
    assert "--offline" in argv and "--no-webui" in argv
    log = served["log"].read_text()
    assert "will be overwritten by command line argument" not in log
    assert "--gpu-layers option will be ignored" not in log


@pytest.mark.slow
def test_selected_command_serves_a_completion_and_metrics(served: Dict[str, Any]) -> None:
    body = json.dumps({"prompt": "hello", "n_predict": 4}).encode()
    req = urllib.request.Request(
        served["base"] + "/completion", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200
        assert "content" in json.loads(r.read())
    with urllib.request.urlopen(served["base"] + "/metrics", timeout=10) as r:
        assert r.status == 200
        assert b"llamacpp:" in r.read()


@pytest.mark.slow
def test_ggml_loads_the_cpu_variant_select_predicted(served: Dict[str, Any]) -> None:
    # ggml dlopens every candidate to score it and keeps only the winner mapped.
    maps = Path(f"/proc/{served['pid']}/maps").read_text()
    loaded = {line.rsplit("/", 1)[-1] for line in maps.splitlines() if "libggml-cpu-" in line}
    assert loaded == {f"libggml-cpu-{served['decision']['cpu_variant']}.so"}
