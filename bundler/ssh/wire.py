"""The SSH wire encoding (RFC 4251 section 5): uint32 and length-prefixed strings."""

from __future__ import annotations

import struct


class WireFormatError(ValueError):
    """Bytes are not a well-formed SSH wire encoding (callers wrap it in an AirlockError)."""


def uint32(value: int) -> bytes:
    return struct.pack(">I", value)


def string(value: bytes) -> bytes:
    """An SSH ``string``: uint32 length, then the bytes."""
    return struct.pack(">I", len(value)) + value


class Reader:
    """Reads SSH wire fields from a byte buffer, front to back."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def raw(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise WireFormatError(
                f"truncated: wanted {n} bytes at offset {self._pos} of {len(self._data)}"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def byte(self) -> int:
        return self.raw(1)[0]

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self.raw(4))[0]
        return value

    def string(self) -> bytes:
        return self.raw(self.uint32())

    def text(self) -> str:
        try:
            return self.string().decode("utf-8")
        except UnicodeDecodeError as e:
            raise WireFormatError(f"a text field is not UTF-8: {e}") from e

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def rest(self) -> bytes:
        return self.raw(self.remaining)

    def expect_end(self, what: str) -> None:
        if self.remaining:
            raise WireFormatError(f"{self.remaining} unexpected trailing bytes after {what}")
