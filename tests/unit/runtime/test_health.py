"""runtime.health: the gate needs /health 200 and one real completion; failures say why."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import health
from runtime.errors import InstallError


class _Server(http.server.BaseHTTPRequestHandler):
    completion_status = 200

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(200, {"status": "ok"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = {"choices": [{"text": " Paris"}], "usage": {"completion_tokens": 2}}
        self._reply(self.completion_status, body)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_health_and_completion_pass_against_a_serving_server(server: str) -> None:
    health.wait_healthy(server, timeout=5)
    assert health.check_completion(server, timeout=5) == " Paris"


def test_health_gate_fails_when_the_server_dies(server: str) -> None:
    with pytest.raises(InstallError, match="exited before it became healthy"):
        health.wait_healthy("http://127.0.0.1:9", timeout=5, alive=lambda: False)


def test_health_gate_times_out_with_the_last_error() -> None:
    with pytest.raises(InstallError, match="did not answer 200"):
        health.wait_healthy("http://127.0.0.1:9", timeout=0.6)


def test_health_gate_fails_on_a_broken_completion(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Server, "completion_status", 500)
    with pytest.raises(InstallError, match="completion failed"):
        health.check_completion(server, timeout=5)


class _KeyedServer(_Server):
    """A server started with --api-key-file: a completion without the key gets 401."""

    def do_POST(self) -> None:
        if self.headers.get("Authorization") != "Bearer s3cret":
            self.rfile.read(int(self.headers["Content-Length"]))
            self._reply(401, {"error": "invalid api key"})
            return
        super().do_POST()


def test_release_health_sends_the_api_key_the_site_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runtime import release

    base = tmp_path
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeyedServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        (base / "key").write_text("s3cret\n")
        (base / "etc" / "releases").mkdir(parents=True)
        env = base / "etc" / "releases" / "1.0.env"
        env.write_text(f"AIRLOCK_ARGV=bin/s\nAIRLOCK_HEALTH_URL={url}\n")
        layout = ["--root", str(base), "--config", str(base / "etc"), "--state", str(base)]
        args = [*layout, "health", "--version", "1.0", "--completion", "--timeout", "3"]
        assert release.main(args) != 0  # no key configured: the server refuses
        capsys.readouterr()
        env.write_text(env.read_text() + f"AIRLOCK_API_KEY_FILE={base / 'key'}\n")
        assert release.main(args) == 0
        assert json.loads(capsys.readouterr().out)["completion"] == " Paris"
    finally:
        httpd.shutdown()
