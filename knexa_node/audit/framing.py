"""Record framing of the append-only files, sans I/O: a file magic, then checksummed frames.

File layout::

    MAGIC (8 bytes) | frame | frame | ...
    frame = length (u32 BE) | crc32 of payload (u32 BE) | payload

The CRC does not protect against tampering (signatures and the hash chain
do); it tells a crash apart from a forgery: a frame that runs past the end
of the file, or a *last* frame whose checksum fails, is a torn tail left by
an interrupted append, while a bad frame followed by more bytes is damage.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

_HEADER = struct.Struct(">II")
FRAME_HEADER_SIZE = _HEADER.size
MAGIC_SIZE = 8
# Entries are small (a receipt envelope and a few metrics); anything bigger is damage.
MAX_FRAME = 64 * 1024


def encode_frame(payload: bytes) -> bytes:
    if not 0 < len(payload) <= MAX_FRAME:
        raise ValueError(f"frame payload of {len(payload)} bytes is outside 1..{MAX_FRAME}")
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class Frame:
    offset: int  # of the frame header in the file
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + FRAME_HEADER_SIZE + len(self.payload)


@dataclass(frozen=True)
class FrameProblem:
    """Why scanning stopped before the end of the file.

    ``reason`` is ``"torn-tail"`` (an interrupted append: only the end of the
    file is affected), ``"corrupt-frame"`` (damage with bytes after it) or
    ``"not-this-format"`` (wrong magic).
    """

    reason: str
    offset: int
    detail: str


@dataclass(frozen=True)
class Scan:
    frames: list[Frame]
    end: int  # offset just after the last good frame
    size: int  # bytes scanned
    problem: FrameProblem | None


def scan_frames(data: bytes, magic: bytes) -> Scan:
    """Split ``data`` into frames after ``magic``; stop at the first problem and say why."""
    if len(magic) != MAGIC_SIZE:
        raise ValueError(f"a frame magic is {MAGIC_SIZE} bytes, not {len(magic)}")
    size = len(data)
    if size < MAGIC_SIZE:
        if magic.startswith(bytes(data)):
            return Scan([], 0, size, FrameProblem("torn-tail", 0, f"file has {size} bytes, shorter than its magic"))
        return Scan([], 0, size, FrameProblem("not-this-format", 0, "file does not start with the expected magic"))
    if bytes(data[:MAGIC_SIZE]) != magic:
        return Scan([], 0, size, FrameProblem("not-this-format", 0, "file does not start with the expected magic"))
    frames: list[Frame] = []
    view = memoryview(data)
    offset = MAGIC_SIZE
    while offset < size:
        remaining = size - offset
        if remaining < FRAME_HEADER_SIZE:
            return Scan(frames, offset, size, FrameProblem("torn-tail", offset, f"{remaining} trailing bytes, less than a frame header"))
        length, crc = _HEADER.unpack_from(view, offset)
        if not 0 < length <= MAX_FRAME:
            # A crash on some file systems leaves the appended region zero-filled.
            if not any(view[offset:]):
                return Scan(frames, offset, size, FrameProblem("torn-tail", offset, f"{remaining} trailing zero bytes"))
            return Scan(frames, offset, size, FrameProblem("corrupt-frame", offset, f"frame length {length} outside 1..{MAX_FRAME}"))
        if length > remaining - FRAME_HEADER_SIZE:
            return Scan(frames, offset, size, FrameProblem(
                "torn-tail", offset, f"frame of {length} bytes runs past the end of the file ({remaining - FRAME_HEADER_SIZE} present)"))
        payload = bytes(view[offset + FRAME_HEADER_SIZE : offset + FRAME_HEADER_SIZE + length])
        if zlib.crc32(payload) != crc:
            reason = "torn-tail" if offset + FRAME_HEADER_SIZE + length == size else "corrupt-frame"
            return Scan(frames, offset, size, FrameProblem(reason, offset, "frame checksum does not match its bytes"))
        frames.append(Frame(offset, payload))
        offset += FRAME_HEADER_SIZE + length
    return Scan(frames, offset, size, None)
