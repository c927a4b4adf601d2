"""Yamux receive credit comes back in batches (knexa_node.net.yamux_credit), and never stalls a sender."""

import struct

import trio
from libp2p.stream_muxer.yamux import yamux

from knexa_node.net.protocols import EXCHANGE_PROTOCOL
from knexa_node.testing import swarm


def _count_window_updates(monkeypatch) -> list[int]:
    """Increments of every WINDOW_UPDATE frame any Yamux connection of this process writes."""
    increments: list[int] = []
    write_frame = yamux.Yamux._write_frame

    async def counting(self, data: bytes) -> None:
        _, kind, flags, _, length = struct.unpack(yamux.YAMUX_HEADER_FORMAT, data[: yamux.HEADER_SIZE])
        if kind == yamux.TYPE_WINDOW_UPDATE and flags == 0:  # not a stream's SYN, ACK, FIN or RST
            increments.append(length)
        await write_frame(self, data)

    monkeypatch.setattr(yamux.Yamux, "_write_frame", counting)
    return increments


async def test_small_messages_are_not_each_answered_with_a_window_update(monkeypatch):
    async with swarm(2) as (server, client):
        got = []

        async def sink(stream, remote):
            for _ in range(300):
                got.append(await stream.receive(timeout=30))
            await stream.send(b"done")

        server.set_handler(EXCHANGE_PROTOCOL, sink)
        stream = await client.open_request(server.peer_id, EXCHANGE_PROTOCOL)
        increments = _count_window_updates(monkeypatch)
        for i in range(300):  # ~300 KiB in all: more than the initial 256 KiB window
            await stream.send(bytes([i % 256]) * 1000)
            await trio.sleep(0)  # let the reader read each message on its own, as gossip does
        assert await stream.receive(timeout=30) == b"done"
        await stream.close()
        assert len(got) == 300 and got[-1] == bytes([299 % 256]) * 1000
        # py-libp2p alone sends one per read (300); credit for half a window at a time is ~1-3.
        assert 1 <= len(increments) <= 10, increments
        assert min(increments) >= 128 * 1024


async def test_a_slow_reader_of_many_windows_still_gets_everything():
    # 4 MiB through a 256 KiB initial window, read in small bites with pauses: if credit
    # were withheld the sender would block for good and the deadline below would fire.
    payload = bytes(range(256)) * (16 * 1024)
    async with swarm(2) as (server, client):
        received = bytearray()

        async def sink(stream, remote):
            async for chunk in stream.receive_chunks(len(payload), timeout_per_chunk=10):
                received.extend(chunk)
                await trio.sleep(0.001)
            await stream.send(b"done")

        server.set_handler(EXCHANGE_PROTOCOL, sink)
        stream = await client.open_request(server.peer_id, EXCHANGE_PROTOCOL)
        with trio.fail_after(60):
            await stream.send_bulk(payload, chunk_size=16 * 1024)
            assert await stream.receive(timeout=30) == b"done"
        await stream.close()
        assert bytes(received) == payload
