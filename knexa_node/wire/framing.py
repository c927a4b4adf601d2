"""Length-prefixed frames (4-byte big-endian length, then the bytes), sans I/O.

Feed received bytes into :class:`FrameDecoder` and pull complete frames out;
the trio driver in :mod:`knexa_node.net` only moves bytes.
"""

from __future__ import annotations

import struct

from knexa_node.wire.errors import WireError

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


def encode_frame(payload: bytes, *, max_size: int) -> bytes:
    if len(payload) > max_size:
        raise WireError("too-large", f"frame of {len(payload)} bytes > limit {max_size}")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Accumulates bytes; yields whole frames; refuses a length over ``max_size`` at once."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame, or None if more bytes are needed."""
        if len(self._buffer) < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self.max_size:
            raise WireError("too-large", f"frame announces {length} bytes > limit {self.max_size}")
        if len(self._buffer) < HEADER_SIZE + length:
            return None
        frame = bytes(self._buffer[HEADER_SIZE : HEADER_SIZE + length])
        del self._buffer[: HEADER_SIZE + length]
        return frame

    def missing(self) -> int:
        """How many more bytes the current frame needs (at least 1 while incomplete)."""
        if len(self._buffer) < HEADER_SIZE:
            return HEADER_SIZE - len(self._buffer)
        (length,) = _HEADER.unpack_from(self._buffer)
        return max(HEADER_SIZE + length - len(self._buffer), 0)

    @property
    def buffered(self) -> int:
        return len(self._buffer)
