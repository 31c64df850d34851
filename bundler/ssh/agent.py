"""A minimal ssh-agent protocol client: list identities, sign (draft-miller-ssh-agent)."""

from __future__ import annotations

import os
import socket
from typing import Optional

from bundler.errors import KeyFileError
from bundler.ssh.wire import Reader, WireFormatError, string, uint32

SSH_AGENT_FAILURE = 5
SSH2_AGENTC_REQUEST_IDENTITIES = 11
SSH2_AGENT_IDENTITIES_ANSWER = 12
SSH2_AGENTC_SIGN_REQUEST = 13
SSH2_AGENT_SIGN_RESPONSE = 14

# An agent reply larger than this is not an agent talking (OpenSSH caps messages at 256 KiB).
_MAX_REPLY = 256 * 1024
_TIMEOUT_S = 30.0


class AgentClient:
    """Talks to the agent at ``socket_path`` (default ``$SSH_AUTH_SOCK``), one connection a call."""

    def __init__(self, socket_path: Optional[str] = None) -> None:
        path = socket_path or os.environ.get("SSH_AUTH_SOCK")
        if not path:
            raise KeyFileError(
                "no ssh-agent to sign with: SSH_AUTH_SOCK is not set",
                hint="start an agent (eval $(ssh-agent)), add the key with ssh-add, "
                "or pass the private key file instead of an agent key",
            )
        self.socket_path = path

    def identities(self) -> list[tuple[bytes, str]]:
        """Every (public key blob, comment) the agent holds."""
        reply = self._request(bytes([SSH2_AGENTC_REQUEST_IDENTITIES]))
        kind = reply.byte()
        if kind != SSH2_AGENT_IDENTITIES_ANSWER:
            raise self._refused("listing keys", kind)
        try:
            count = reply.uint32()
            found = []
            for _ in range(count):
                blob = reply.string()
                comment = reply.string().decode("utf-8", errors="replace")
                found.append((blob, comment))
        except WireFormatError as e:
            raise self._garbled(e) from e
        return found

    def sign(self, key_blob: bytes, data: bytes, *, flags: int = 0) -> bytes:
        """The agent's signature blob (string algorithm, string signature) over ``data``."""
        request = (
            bytes([SSH2_AGENTC_SIGN_REQUEST]) + string(key_blob) + string(data) + uint32(flags)
        )
        reply = self._request(request)
        kind = reply.byte()
        if kind != SSH2_AGENT_SIGN_RESPONSE:
            raise self._refused("signing", kind)
        try:
            signature = reply.string()
        except WireFormatError as e:
            raise self._garbled(e) from e
        return signature

    def _request(self, payload: bytes) -> Reader:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(_TIMEOUT_S)
                sock.connect(self.socket_path)
                sock.sendall(uint32(len(payload)) + payload)
                length = Reader(_recv_exactly(sock, 4)).uint32()
                if length == 0 or length > _MAX_REPLY:
                    raise KeyFileError(
                        f"the ssh-agent at {self.socket_path} sent a reply of {length} bytes",
                        hint="check that SSH_AUTH_SOCK points at an ssh-agent socket",
                    )
                return Reader(_recv_exactly(sock, length))
        except OSError as e:
            raise KeyFileError(
                f"cannot talk to the ssh-agent at {self.socket_path}: {e}",
                hint="check that the agent is running and SSH_AUTH_SOCK points at its socket "
                "(ssh-add -l should list your key)",
            ) from e

    def _refused(self, what: str, kind: int) -> KeyFileError:
        why = "it answered SSH_AGENT_FAILURE" if kind == SSH_AGENT_FAILURE else f"reply {kind}"
        return KeyFileError(
            f"the ssh-agent at {self.socket_path} refused {what} ({why})",
            hint="the key may need confirmation (ssh-add -c), be locked (ssh-add -X), "
            "or have been removed from the agent; check with ssh-add -l",
        )

    def _garbled(self, e: Exception) -> KeyFileError:
        return KeyFileError(
            f"the ssh-agent at {self.socket_path} sent a malformed reply: {e}",
            hint="check that SSH_AUTH_SOCK points at an ssh-agent socket",
        )


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    left = n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError(f"the agent closed the connection with {left} bytes missing")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
