"""Length-prefixed request/response streams over libp2p (the trio driver of ``wire.framing``).

:class:`FramedStream` wraps one libp2p stream. Every read sits under a
``trio.fail_after`` deadline and a size cap, so a slow or silent peer costs
one task a bounded time and never blocks the daemon.

Bulk payloads (knowledge packages up to 64 MiB and more) go as a sequence of
frames (:meth:`FramedStream.send_chunks` / :meth:`FramedStream.receive_chunks`).
py-libp2p's Yamux fails a *writer* whose reader has not drained its window for
5 s (a hard-coded window-update timeout), so a receiver must keep pulling
chunks promptly: process them as they come or buffer them, never pause
reading for seconds in the middle of a transfer.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterable

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError

from knexa_node.net.errors import StreamClosed, StreamTimeout, describe_failure
from knexa_node.net.params import DEFAULT_MAX_FRAME
from knexa_node.wire import Envelope, Message, WireError, open_envelope
from knexa_node.wire.framing import FrameDecoder

DEFAULT_TIMEOUT_S = 30.0
# Bytes asked of the muxer per read; a frame's surplus stays in the decoder.
_READ_SIZE = 256 * 1024
BULK_CHUNK = 1024 * 1024
# The length prefix of knexa_node.wire.framing (4 bytes, big-endian).
_LENGTH = struct.Struct(">I")


class FramedStream:
    """One libp2p stream carrying length-prefixed frames.

    ``remote_peer_id`` is the authenticated (Noise) peer ID of the other side.
    """

    def __init__(self, raw: INetStream, *, max_frame: int = DEFAULT_MAX_FRAME, write_timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.raw = raw
        self.max_frame = max_frame
        self.write_timeout_s = write_timeout_s
        self.remote_peer_id: str = raw.muxed_conn.peer_id.to_base58()
        self.protocol: str = str(raw.get_protocol() or "")
        self._decoder = FrameDecoder(max_frame)
        self.bytes_sent = 0
        self.bytes_received = 0

    # --- frames -----------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Send one frame (at most ``max_frame`` bytes, else :class:`WireError` ``too-large``)."""
        if len(data) > self.max_frame:
            raise WireError("too-large", f"frame of {len(data)} bytes > limit {self.max_frame}")
        # One copy of a memoryview chunk (encode_frame(bytes(chunk)) made two: 1 MiB each).
        await self._write(b"".join((_LENGTH.pack(len(data)), data)))

    async def receive(self, max_size: int | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> bytes:
        """The next frame; at most ``max_size`` bytes (refused from its length prefix, before reading it).

        Raises :class:`StreamTimeout` if the whole frame is not in within ``timeout``
        seconds, :class:`StreamClosed` if the peer closes first, :class:`WireError`
        (``too-large``) for an oversized frame.
        """
        limit = self.max_frame if max_size is None else min(max_size, self.max_frame)
        self._decoder.max_size = limit
        try:
            with trio.fail_after(timeout):
                while True:
                    frame = self._decoder.next_frame()
                    if frame is not None:
                        return frame
                    await self._read_some()
        except trio.TooSlowError:
            raise StreamTimeout(f"no complete frame from {self.remote_peer_id} within {timeout:g} s") from None

    async def send_envelope(self, envelope: Envelope) -> None:
        await self.send(envelope.to_bytes())

    async def receive_envelope(
        self, *, expect: tuple[type[Message], ...] = (), max_size: int | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> tuple[Envelope, Message]:
        """Receive a frame and open it as a signed envelope (raises :class:`WireError` if invalid)."""
        data = await self.receive(max_size, timeout)
        return open_envelope(data, max_size=len(data) + 1, expect=expect)

    # --- bulk -------------------------------------------------------------------------------

    async def send_chunks(self, chunks: Iterable[bytes]) -> int:
        """Send each chunk as one frame; returns the bytes sent (payload only)."""
        total = 0
        for chunk in chunks:
            await self.send(chunk)
            total += len(chunk)
        return total

    async def send_bulk(self, data: bytes, chunk_size: int = BULK_CHUNK) -> int:
        view = memoryview(data)
        size = min(chunk_size, self.max_frame)
        return await self.send_chunks(view[i : i + size] for i in range(0, len(view), size))  # type: ignore[misc]

    async def receive_chunks(self, total_size: int, *, timeout_per_chunk: float = DEFAULT_TIMEOUT_S) -> AsyncIterator[bytes]:
        """Yield frames until exactly ``total_size`` payload bytes came (more is an error)."""
        received = 0
        while received < total_size:
            chunk = await self.receive(min(self.max_frame, total_size - received), timeout_per_chunk)
            received += len(chunk)
            yield chunk

    async def receive_bulk(self, total_size: int, *, timeout_per_chunk: float = DEFAULT_TIMEOUT_S) -> bytes:
        out = bytearray()
        async for chunk in self.receive_chunks(total_size, timeout_per_chunk=timeout_per_chunk):
            out += chunk
        return bytes(out)

    # --- lifecycle ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close our side (the peer reads EOF after the frames already sent). Never raises."""
        try:
            with trio.move_on_after(5):
                await self.raw.close()
        except (BaseLibp2pError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def reset(self) -> None:
        try:
            with trio.move_on_after(5):
                await self.raw.reset()
        except (BaseLibp2pError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def __aenter__(self) -> FramedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- bytes ------------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        try:
            with trio.fail_after(self.write_timeout_s):
                await self.raw.write(data)
        except trio.TooSlowError:
            raise StreamTimeout(f"write to {self.remote_peer_id} stalled for {self.write_timeout_s:g} s") from None
        except (BaseLibp2pError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamClosed(f"stream to {self.remote_peer_id} failed: {describe_failure(exc, 300)}") from None
        self.bytes_sent += len(data)

    async def _read_some(self) -> None:
        try:
            data = await self.raw.read(max(self._decoder.missing(), _READ_SIZE))
        except EOFError:
            data = b""
        except (BaseLibp2pError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamClosed(f"stream from {self.remote_peer_id} failed: {describe_failure(exc, 300)}") from None
        if not data:
            raise StreamClosed(f"{self.remote_peer_id} closed the stream ({self._decoder.buffered} bytes of a partial frame)")
        self.bytes_received += len(data)
        self._decoder.receive_data(data)


__all__ = ["FramedStream", "StreamClosed", "StreamTimeout", "WireError"]
