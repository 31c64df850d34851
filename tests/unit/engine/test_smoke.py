"""Smoke test driver: argv, log parsing, and refusals with a fake llama-server."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from bundler.engine.smoke import loaded_cpu_backend, server_argv, smoke_test
from bundler.errors import SmokeTestError

FAKE_SERVER = textwrap.dedent(
    """\
    #!{python}
    import http.server, json, sys
    mode = {mode!r}
    args = sys.argv[1:]
    if "--help" in args:
        print("--offline  never download"); sys.exit(0)
    print("load_backend: loaded CPU backend from /x/lib/libggml-cpu-haswell.so", flush=True)
    if mode == "crash":
        print("llama_model_load: error loading model: invalid magic", flush=True); sys.exit(1)
    port = int(args[args.index("--port") + 1])
    assert "--offline" in args
    class H(http.server.BaseHTTPRequestHandler):
        def _send(self, code, doc):
            body = json.dumps(doc).encode()
            self.send_response(code); self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
        def do_GET(self):
            self._send(200, {{"status": "ok"}})
        def do_POST(self):
            if mode == "nogen":
                self._send(500, {{"error": "decode failed"}})
            else:
                self._send(200, {{"content": " hello", "tokens_predicted": 3}})
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


def _engine(tmp_path: Path, mode: str) -> tuple[Path, Path]:
    engine = tmp_path / "engine"
    (engine / "bin").mkdir(parents=True)
    (engine / "lib").mkdir()
    server = engine / "bin" / "llama-server"
    server.write_text(FAKE_SERVER.format(python=sys.executable, mode=mode))
    server.chmod(0o755)
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    return engine, model


def test_server_argv_is_loopback_and_offline(tmp_path: Path) -> None:
    argv = server_argv(tmp_path / "llama-server", tmp_path / "m.gguf", 8123, offline_flag=True)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "8123"
    assert "--offline" in argv
    assert "--offline" not in server_argv(Path("s"), Path("m"), 1, offline_flag=False)


def test_loaded_cpu_backend_from_log() -> None:
    log = "x\nload_backend: loaded CPU backend from /opt/e/lib/libggml-cpu-zen4.so\ny\n"
    assert loaded_cpu_backend(log) == "libggml-cpu-zen4.so"
    assert loaded_cpu_backend("nothing") is None


def test_healthy_server_with_a_completion_passes(tmp_path: Path) -> None:
    engine, model = _engine(tmp_path, "ok")
    result = smoke_test(engine, model, timeout=30)
    assert result.tokens_predicted == 3
    assert result.offline_flag
    assert result.cpu_backend == "libggml-cpu-haswell.so"


def test_server_that_cannot_load_the_model_is_refused_with_its_log(tmp_path: Path) -> None:
    engine, model = _engine(tmp_path, "crash")
    with pytest.raises(SmokeTestError) as info:
        smoke_test(engine, model, timeout=30)
    assert "exited with status 1" in info.value.message
    assert any("invalid magic" in p for p in info.value.problems)


def test_server_that_cannot_generate_is_refused(tmp_path: Path) -> None:
    engine, model = _engine(tmp_path, "nogen")
    with pytest.raises(SmokeTestError, match="HTTP 500"):
        smoke_test(engine, model, timeout=30)


def test_missing_server_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SmokeTestError, match="no llama-server"):
        smoke_test(tmp_path, tmp_path / "m.gguf")
