"""The llama-server command line: argv, environment and the options its --help lists."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Collection, Dict, List, Optional, Tuple

from runtime.components import EngineFacts, ModelFacts
from runtime.errors import UsageError


def server_command(
    engine: EngineFacts,
    model: ModelFacts,
    name: str,
    host: str,
    port: int,
    ctx: int,
    par: int,
    threads: int,
    gpu_layers: int,
    backend: str,
    api_key_file: Optional[str],
    server_flags: Optional[Collection[str]],
) -> Tuple[List[str], Dict[str, str], List[str]]:
    """argv, env and the reasons for the options not passed, paths relative to the release.
    Raises UsageError when the model has no entrypoint and no .gguf file."""
    entry = model.entrypoint
    if not entry:
        paths = (str(f.get("path", "")) for f in model.files)
        files = [p for p in paths if p.endswith(".gguf")]
        if not files:
            raise UsageError(f"model {name} has no entrypoint and no .gguf file in the manifest")
        entry = sorted(files)[0]
    argv = [
        engine.server,
        "--model",
        str(entry),
        "--alias",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--ctx-size",
        str(ctx),
        "--parallel",
        str(par),
        "--threads",
        str(threads),
        "--metrics",
    ]
    if engine.cuda is not None:
        # Without a GPU backend in the bundle the option only earns a warning.
        argv += ["--n-gpu-layers", str(gpu_layers)]
    if api_key_file:
        argv += ["--api-key-file", api_key_file]
    ld = [engine.lib_dir]
    if backend == "cuda" and engine.cuda is not None:
        ld.append(engine.cuda.runtime_dir)
    # The env forms are honoured by every llama-server that knows the option and ignored
    # by older ones, so they are always safe; the flags only when --help lists them.
    # llama.cpp reads each option from an environment variable too; the names moved
    # between versions (LLAMA_ARG_OFFLINE / LLAMA_OFFLINE, LLAMA_ARG_UI=0 /
    # LLAMA_ARG_NO_WEBUI=1). A server honours the names it knows and ignores the others,
    # while an unknown command-line flag makes it exit: so the env forms are always set and
    # the flags only when the server's --help lists them.
    env = {"LD_LIBRARY_PATH": ":".join(ld), "HF_HUB_OFFLINE": "1"}
    env_forms = {
        "--offline": {"LLAMA_ARG_OFFLINE": "1", "LLAMA_OFFLINE": "1"},
        "--no-webui": {"LLAMA_ARG_UI": "0", "LLAMA_ARG_NO_WEBUI": "1"},
    }
    reasons = []
    known = set(server_flags) if server_flags is not None else set(engine.server_flags)
    for flag, what in (("--offline", "never touch the network"), ("--no-webui", "no web UI")):
        if flag in known:
            argv.append(flag)
        else:
            env.update(env_forms[flag])
            reasons.append(
                f"{flag} not passed: this llama-server's --help was not checked or does not "
                f"list it ({what} through the environment instead)"
            )
    if backend == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return argv, env, reasons


def probe_server_flags(server: Path) -> Optional[List[str]]:
    """Options listed by ``llama-server --help`` (runs it once, no network), or None."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(server.parent.parent / "lib")
    try:
        proc = subprocess.run(
            [str(server), "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = proc.stdout + proc.stderr
    flags = set()
    for word in text.replace(",", " ").split():
        if word.startswith("--") and len(word) > 2:
            flags.add(word.split("=", 1)[0])
    return sorted(flags) or None
