"""The traffic front: owns the public port and forwards each connection to the active slot.

A host that upgrades without dropping a request runs two server slots on loopback ports and
this small TCP forwarder on the public one. The new release is started and gated on the idle
slot while the old one serves; :func:`set_active` then replaces the one-line active file
atomically, and from the next accepted connection on the front forwards there. A connection
already forwarded stays on the slot it was opened to until either side closes it, so the old
server can be stopped once its connections have drained (:func:`established`).

Standard library only (Python 3.8+), one thread per connection: the front moves bytes and
never parses them, so it adds one loopback hop and nothing else to a request::

    python3 -m runtime.front serve --listen 0.0.0.0:8080 --active-file /var/lib/airlock/active-port
    python3 -m runtime.front set-active --port 18081 --active-file /var/lib/airlock/active-port
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import List, Optional, Sequence, Tuple

from runtime.fsio import atomic_write

BUFFER = 256 * 1024
CONNECT_TIMEOUT = 5.0
_TCP_ESTABLISHED = "01"


def read_active(path: str) -> int:
    """The active slot's port from ``path`` (one decimal line). Raises OSError, ValueError."""
    with open(path, "rb") as f:
        text = f.read(32).decode("ascii").strip()
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"{path}: {text!r} is not a TCP port")
    return port


def set_active(path: str, port: int) -> bool:
    """Point the front at ``port`` (atomic replace); returns whether it changed."""
    if not 0 < port < 65536:
        raise ValueError(f"{port} is not a TCP port")
    try:
        if read_active(path) == port:
            return False
    except (OSError, ValueError):
        pass
    atomic_write(path, f"{port}\n".encode(), mode=0o644)
    return True


def established(port: int, *, proc: str = "/proc") -> int:
    """How many TCP connections to a local ``port`` are established (``/proc/net/tcp{,6}``)."""
    count = 0
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc, "net", name)) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _TCP_ESTABLISHED:
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def drain(port: int, *, timeout: float, proc: str = "/proc") -> bool:
    """Wait until no connection to ``port`` is established; False when ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while established(port, proc=proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


class Front:
    """Accept on ``listen``; forward every connection to 127.0.0.1:<the active file's port>."""

    def __init__(self, listen: Tuple[str, int], active_file: str) -> None:
        self.active_file = active_file
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(512)
        self._stop = threading.Event()
        self._stamp: Optional[Tuple[int, int, int]] = None
        self._port = 0

    @property
    def address(self) -> Tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def active_port(self) -> int:
        """The active port, re-read only when the file was replaced (one stat per connection)."""
        st = os.stat(self.active_file)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._port = read_active(self.active_file)
            self._stamp = stamp
        return self._port

    def serve_forever(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            try:
                port = self.active_port()
            except (OSError, ValueError) as e:
                sys.stderr.write(f"airlock front: no active slot ({e}); connection closed\n")
                client.close()
                continue
            threading.Thread(target=self._forward, args=(client, port), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()

    def _forward(self, client: socket.socket, port: int) -> None:
        client.settimeout(None)
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
        except OSError as e:
            sys.stderr.write(f"airlock front: slot 127.0.0.1:{port} refused ({e})\n")
            client.close()
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _pump(client, upstream)


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides have finished sending; half-closes are passed on."""
    peer = {a: b, b: a}
    open_: List[socket.socket] = [a, b]
    try:
        while open_:
            readable, _, _ = select.select(open_, [], [])
            for s in readable:
                try:
                    data = s.recv(BUFFER)
                except OSError:
                    data = b""
                if data:
                    peer[s].sendall(data)
                    continue
                open_.remove(s)
                try:
                    peer[s].shutdown(socket.SHUT_WR)
                except OSError:
                    open_.clear()  # the other side is gone too
    except OSError:
        pass
    finally:
        a.close()
        b.close()


def _listen_arg(text: str) -> Tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m runtime.front", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="own the public port and forward to the active slot")
    serve.add_argument("--listen", type=_listen_arg, required=True, help="HOST:PORT")
    serve.add_argument("--active-file", required=True)
    setp = sub.add_parser("set-active", help="point the front at a slot's port (atomic)")
    setp.add_argument("--port", type=int, required=True)
    setp.add_argument("--active-file", required=True)
    drainp = sub.add_parser("drain", help="wait until no connection to a port is established")
    drainp.add_argument("--port", type=int, required=True)
    drainp.add_argument("--timeout", type=float, default=30.0)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "set-active":
        print(json.dumps({"changed": set_active(args.active_file, args.port), "port": args.port}))
        return 0
    if args.command == "drain":
        drained = drain(args.port, timeout=args.timeout)
        print(json.dumps({"drained": drained, "port": args.port}))
        return 0
    front = Front(args.listen, args.active_file)
    signal.signal(signal.SIGTERM, lambda *_: front.stop())
    front.serve_forever()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
