"""Smoke test before signing: the freshly built llama-server must serve the bundle's model.

The server runs offline on a free loopback port with the engine's own libraries; ``/health``
must answer 200 and one short completion must come back. An engine that cannot serve its
model raises :class:`SmokeTestError` with the server log's tail, so it is never signed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler.engine.buildcache import log_tail
from bundler.errors import SmokeTestError

__all__ = ["SmokeResult", "free_port", "loaded_cpu_backend", "server_argv", "smoke_test"]

_LOADED_RE = re.compile(r"loaded CPU backend from (\S+)")


@dataclass(frozen=True)
class SmokeResult:
    """What the smoke test saw: port, timings, the loaded CPU module, the completion."""

    port: int
    ready_seconds: float
    completion_seconds: float
    tokens_predicted: int
    content: str
    cpu_backend: str | None
    offline_flag: bool
    log_tail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "ready_seconds": round(self.ready_seconds, 3),
            "completion_seconds": round(self.completion_seconds, 3),
            "tokens_predicted": self.tokens_predicted,
            "cpu_backend": self.cpu_backend,
            "offline_flag": self.offline_flag,
        }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loaded_cpu_backend(log: str) -> str | None:
    """The CPU module file name ggml loaded, from llama-server's log (or None)."""
    found = _LOADED_RE.findall(log)
    return Path(found[-1]).name if found else None


def server_argv(
    server: Path,
    model: Path,
    port: int,
    *,
    offline_flag: bool,
    threads: int = 2,
    no_webui_flag: bool = True,
    log_verbosity_flag: bool = False,
) -> list[str]:
    """The llama-server command line for the smoke test (pure)."""
    argv = [
        str(server),
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ctx-size",
        "256",
        "--parallel",
        "1",
        "--threads",
        str(threads),
    ]
    if no_webui_flag:
        argv.append("--no-webui")
    if log_verbosity_flag:
        # level 4 logs which CPU variant module ggml loaded ("load_backend: loaded ...")
        argv += ["--log-verbosity", "4"]
    if offline_flag:
        argv.append("--offline")
    return argv


def server_env(engine_dir: Path) -> dict[str, str]:
    """Offline, no inherited LLAMA_ARG_* or LD_LIBRARY_PATH (the run path must suffice)."""
    del engine_dir
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLAMA_ARG_") and k != "LD_LIBRARY_PATH"
    }
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "LLAMA_OFFLINE": "1",
        }
    )
    return env


def _help_text(server: Path, env: dict[str, str], cwd: Path) -> str:
    try:
        out = subprocess.run(
            [str(server), "--help"],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def smoke_test(engine_dir: Path, model_path: Path, *, timeout: float = 120) -> SmokeResult:
    """Serve ``model_path`` with ``engine_dir/bin/llama-server``; check health and a completion.

    ``engine_dir`` is a staged engine (``bin/llama-server``, ``lib/``). The server runs
    with ``lib/`` as its working directory, where ggml finds its CPU modules.

    Raises:
        SmokeTestError: the server does not start, never becomes healthy within
            ``timeout`` seconds, or the completion fails; the message carries the log tail.
    """
    # absolute: the server runs with lib/ as its working directory
    engine_dir, model_path = engine_dir.absolute(), model_path.absolute()
    server = engine_dir / "bin" / "llama-server"
    lib = engine_dir / "lib"
    if not server.is_file():
        raise SmokeTestError(
            f"no llama-server at {server}", hint="stage the engine before the smoke test"
        )
    if not model_path.is_file():
        raise SmokeTestError(f"no model file at {model_path}", hint="stage the models first")
    env = server_env(engine_dir)
    # --offline exists in this llama.cpp; HF_HUB_OFFLINE/LLAMA_OFFLINE cover older ones.
    helptext = _help_text(server, env, lib)
    offline = "--offline" in helptext
    port = free_port()
    argv = server_argv(
        server,
        model_path,
        port,
        offline_flag=offline,
        no_webui_flag="--no-webui" in helptext,
        log_verbosity_flag="--log-verbosity" in helptext,
    )
    with tempfile.TemporaryDirectory(prefix="airlock-smoke-") as tmp:
        log_path = Path(tmp) / "llama-server.log"
        with open(log_path, "wb") as log:
            start = time.monotonic()
            proc = subprocess.Popen(
                argv,
                cwd=lib,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                _wait_healthy(proc, port, start + timeout, log_path)
                ready = time.monotonic() - start
                t0 = time.monotonic()
                doc = _complete(port, deadline=start + timeout + 60)
                took = time.monotonic() - t0
            except SmokeTestError as exc:
                _stop(proc)
                exc.problems = (*exc.problems, *log_tail(log_path).splitlines())
                raise
            finally:
                _stop(proc)
        text = log_path.read_text(errors="replace")
    content = str(doc.get("content", ""))
    predicted = int(doc.get("tokens_predicted", 0) or 0)
    if predicted < 1:
        raise SmokeTestError(
            f"llama-server answered the completion with no tokens ({model_path.name})",
            hint="the model loads but cannot generate: check it is a text-generation GGUF",
            problems=text.splitlines()[-40:],
        )
    return SmokeResult(
        port=port,
        ready_seconds=ready,
        completion_seconds=took,
        tokens_predicted=predicted,
        content=content,
        cpu_backend=loaded_cpu_backend(text),
        offline_flag=offline,
        log_tail="\n".join(text.splitlines()[-40:]),
    )


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, deadline: float, log: Path) -> None:
    url = f"http://127.0.0.1:{port}/health"
    last = "no answer"
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            raise SmokeTestError(
                f"llama-server exited with status {rc} before it was healthy",
                hint="the runtime cannot load this model; see the server log below",
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except OSError as e:
            last = str(e)
        time.sleep(0.25)
    raise SmokeTestError(
        f"llama-server did not report healthy on port {port} in time (last: {last})",
        hint="a large model may need a longer smoke-test timeout; see the server log below",
    )


def _complete(port: int, *, deadline: float) -> dict[str, Any]:
    body = json.dumps({"prompt": "Hello", "n_predict": 8, "temperature": 0}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/completion",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 - loopback
            req, timeout=max(5.0, deadline - time.monotonic())
        ) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise SmokeTestError(
            f"the completion request failed with HTTP {e.code}: {detail}",
            hint="the server is up but cannot generate with this model",
        ) from e
    except (OSError, ValueError) as e:
        raise SmokeTestError(
            f"the completion request failed: {e}",
            hint="the server is up but cannot generate with this model",
        ) from e
    if not isinstance(doc, dict):
        raise SmokeTestError("the completion answer is not a JSON object")
    return doc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
