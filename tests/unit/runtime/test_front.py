"""runtime.front: forwarding, the atomic slot switch, in-flight connections, drain."""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import front


class _Slot(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name, self.delay = name, delay

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                time.sleep(self.server.delay)  # type: ignore[attr-defined]
                body = self.server.name.encode()  # type: ignore[attr-defined]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def slots() -> Iterator[tuple[_Slot, _Slot]]:
    a, b = _Slot("a", delay=0.0), _Slot("b")
    yield a, b
    for s in (a, b):
        s.shutdown()
        s.server_close()


def _front(active: Path) -> front.Front:
    f = front.Front(("127.0.0.1", 0), str(active))
    threading.Thread(target=f.serve_forever, daemon=True).start()
    return f


def _get(port: int, path: str = "/") -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    return conn.getresponse().read().decode()


def test_forwards_to_the_active_slot_and_switches_new_connections(
    tmp_path: Path, slots: tuple[_Slot, _Slot]
) -> None:
    a, b = slots
    active = tmp_path / "active-port"
    assert front.set_active(str(active), a.port) is True
    assert front.set_active(str(active), a.port) is False  # idempotent
    f = _front(active)
    try:
        assert [_get(f.address[1]) for _ in range(3)] == ["a", "a", "a"]
        assert front.set_active(str(active), b.port) is True
        assert _get(f.address[1]) == "b"
    finally:
        f.stop()


def test_a_connection_in_flight_finishes_on_the_old_slot(
    tmp_path: Path, slots: tuple[_Slot, _Slot]
) -> None:
    a, b = slots
    a.delay = 1.0
    active = tmp_path / "active-port"
    front.set_active(str(active), a.port)
    f = _front(active)
    try:
        answers: list[str] = []
        slow = threading.Thread(target=lambda: answers.append(_get(f.address[1])))
        slow.start()
        deadline = time.monotonic() + 5
        while front.established(a.port) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert front.established(a.port) >= 1  # the request is on slot a now
        front.set_active(str(active), b.port)
        assert _get(f.address[1]) == "b"  # a new connection goes to b at once
        assert front.drain(a.port, timeout=5) is True  # a's request finished ...
        slow.join(timeout=5)
        assert answers == ["a"]  # ... on a, with a's answer
    finally:
        f.stop()


def test_drain_times_out_while_a_connection_stays_open(
    tmp_path: Path, slots: tuple[_Slot, _Slot]
) -> None:
    a, _ = slots
    held = socket.create_connection(("127.0.0.1", a.port))
    try:
        assert front.established(a.port) >= 1
        assert front.drain(a.port, timeout=0.3) is False
    finally:
        held.close()


def test_rejects_an_active_file_that_is_not_a_port(tmp_path: Path) -> None:
    bad = tmp_path / "active-port"
    bad.write_text("http://x\n")
    with pytest.raises(ValueError):
        front.read_active(str(bad))
    with pytest.raises(ValueError):
        front.set_active(str(bad), 70000)


def test_a_dead_slot_closes_the_client_connection(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound, not listening: connections are refused
        active = tmp_path / "active-port"
        front.set_active(str(active), dead)
        f = _front(active)
        try:
            with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
                _get(f.address[1])
        finally:
            f.stop()
