"""runtime.command: the llama-server argv, environment and working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import selection as s
from runtime.command import probe_server_flags, server_command
from runtime.components import parse_engine, parse_model
from runtime.errors import UsageError
from tests.unit.runtime.test_selection import CUDA, TINY, facts, manifest, reasons


def test_argv_env_and_cwd_for_the_launcher() -> None:
    d = s.select(facts("build-machine"), manifest(variants=["x64", "haswell"]))
    argv = d["argv"]
    assert argv[0] == "engine/bin/llama-server"
    pairs = dict(zip(argv[1::2], argv[2::2]))
    assert pairs["--model"] == "models/tiny/tiny.gguf"
    assert pairs["--alias"] == "tiny"
    assert pairs["--host"] == "0.0.0.0" and pairs["--port"] == "8080"
    assert "--metrics" in argv
    assert "--n-gpu-layers" not in argv  # no GPU backend in this bundle: only a warning
    # --help was not probed: only the env forms, which older servers ignore.
    assert "--offline" not in argv and "--no-webui" not in argv
    assert d["env"]["HF_HUB_OFFLINE"] == "1"
    # Both spellings llama.cpp has used for the env forms of --offline and --no-webui.
    assert d["env"]["LLAMA_ARG_OFFLINE"] == d["env"]["LLAMA_OFFLINE"] == "1"
    assert d["env"]["LLAMA_ARG_UI"] == "0" and d["env"]["LLAMA_ARG_NO_WEBUI"] == "1"
    assert d["cwd"] == "engine/lib"


def test_flags_listed_by_the_server_are_passed() -> None:
    d = s.select(
        facts("build-machine"),
        manifest(variants=["x64", "haswell"]),
        server_flags=["--offline", "--no-webui", "--metrics"],
    )
    assert d["argv"][-2:] == ["--offline", "--no-webui"]
    assert not reasons(d, "--offline not passed")
    # The flag wins; the env forms would only make llama-server warn.
    assert not {"LLAMA_ARG_OFFLINE", "LLAMA_OFFLINE", "LLAMA_ARG_UI"} & set(d["env"])


def test_cuda_backend_adds_the_cuda_runtime_dir_and_gpu_layers() -> None:
    engine = parse_engine(
        manifest(variants=["x64"], cuda=CUDA)["components"]["engine"]["properties"]
    )
    argv, env, _ = server_command(
        engine,
        parse_model(TINY),
        "tiny",
        "127.0.0.1",
        8080,
        4096,
        1,
        8,
        3,
        "cuda",
        None,
        ["--offline"],
    )
    assert argv[argv.index("--n-gpu-layers") + 1] == "3"
    assert env["LD_LIBRARY_PATH"] == "engine/lib:engine/lib/cuda"
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert "--offline" in argv and "LLAMA_ARG_OFFLINE" not in env


def test_model_without_entrypoint_serves_its_first_gguf_or_is_refused() -> None:
    engine = parse_engine(manifest(variants=["x64"])["components"]["engine"]["properties"])
    files = [{"path": "models/m/b.gguf"}, {"path": "models/m/a.gguf"}, {"path": "models/m/x"}]
    argv, _, _ = server_command(
        engine, parse_model({"files": files}), "m", "h", 1, 512, 1, 1, 0, "cpu", None, None
    )
    assert argv[argv.index("--model") + 1] == "models/m/a.gguf"
    with pytest.raises(UsageError, match=r"model m has no entrypoint and no \.gguf file"):
        server_command(
            engine, parse_model({"files": files[2:]}), "m", "h", 1, 512, 1, 1, 0, "cpu", None, None
        )


def test_probe_reads_the_options_listed_by_help(tmp_path: Path) -> None:
    server = tmp_path / "bin" / "llama-server"
    server.parent.mkdir()
    server.write_text("#!/bin/sh\necho '-m, --model FNAME'\necho '--offline, --ctx-size=N' >&2\n")
    server.chmod(0o755)
    assert probe_server_flags(server) == ["--ctx-size", "--model", "--offline"]
    assert probe_server_flags(tmp_path / "missing") is None
