"""runtime.health: the gate needs /health 200 and one real completion; failures say why."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

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
