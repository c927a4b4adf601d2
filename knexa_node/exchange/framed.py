"""A :class:`~knexa_node.exchange.driver.FramedStream` over any ``trio.abc.Stream`` (TCP, memory pairs).

Uses the length-prefixed framing of :mod:`knexa_node.wire.framing`. The
libp2p adapter lives with the network layer; this one serves tests,
benchmarks and any plain trio transport.
"""

from __future__ import annotations

import trio

from knexa_node.wire.framing import FrameDecoder, encode_frame

_READ_SIZE = 256 * 1024
_MAX_SEND_FRAME = 1 << 30


class TrioFramedStream:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(max_size=_MAX_SEND_FRAME)

    async def send(self, data: bytes) -> None:
        await self._stream.send_all(encode_frame(data, max_size=_MAX_SEND_FRAME))

    async def receive(self, max_size: int, timeout: float) -> bytes:
        # The bound applies per frame: a peer announcing more than max_size is refused before we buffer it.
        self._decoder.max_size = max_size
        with trio.fail_after(timeout):
            while True:
                frame = self._decoder.next_frame()
                if frame is not None:
                    return frame
                data = await self._stream.receive_some(max(_READ_SIZE, min(self._decoder.missing(), max_size + 4)))
                if not data:
                    raise EOFError("stream closed")
                self._decoder.receive_data(data)

    async def close(self) -> None:
        await self._stream.aclose()
