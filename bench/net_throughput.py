"""One 64 MiB transfer over a /knexa/exchange framed stream vs a plain trio TCP socket, as a ratio.

    .venv/bin/python bench/net_throughput.py [--mib 64] [--repeat 3]

Both ends run in this one process (one CPU core does sender and receiver for
both paths), on 127.0.0.1, so the ratio is fair; absolute MiB/s are lower than
between two processes. Prints the median over ``repeat`` runs of each.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import trio

from knexa_node.net.protocols import EXCHANGE_PROTOCOL
from knexa_node.net.streams import BULK_CHUNK
from knexa_node.testing import swarm


async def libp2p_once(nets, payload: bytes) -> float:
    server, client = nets
    done = trio.Event()

    async def sink(stream, remote):
        size = int((await stream.receive(timeout=10)).decode())
        received = 0
        async for chunk in stream.receive_chunks(size, timeout_per_chunk=30):
            received += len(chunk)
        await stream.send(b"ok")
        done.set()

    server.set_handler(EXCHANGE_PROTOCOL, sink)
    stream = await client.open_request(server.peer_id, EXCHANGE_PROTOCOL)
    start = time.perf_counter()
    await stream.send(str(len(payload)).encode())
    await stream.send_bulk(payload, chunk_size=BULK_CHUNK)
    assert await stream.receive(timeout=60) == b"ok"
    elapsed = time.perf_counter() - start
    await stream.close()
    return elapsed


async def tcp_once(payload: bytes) -> float:
    finished = trio.Event()

    async def handler(stream):
        received = 0
        while received < len(payload):
            data = await stream.receive_some(BULK_CHUNK)
            if not data:
                break
            received += len(data)
        await stream.send_all(b"k")
        finished.set()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        start = time.perf_counter()
        view = memoryview(payload)
        for i in range(0, len(view), BULK_CHUNK):
            await client.send_all(view[i : i + BULK_CHUNK])
        await client.receive_some(1)
        elapsed = time.perf_counter() - start
        await client.aclose()
        nursery.cancel_scope.cancel()
    return elapsed


async def main(mib: int, repeat: int) -> None:
    payload = os.urandom(mib * 1024 * 1024)
    p2p, tcp = [], []
    async with swarm(2) as nets:
        for _ in range(repeat):
            p2p.append(await libp2p_once(nets, payload))
            tcp.append(await tcp_once(payload))
    p2p_rate = mib / statistics.median(p2p)
    tcp_rate = mib / statistics.median(tcp)
    print(f"{mib} MiB: /knexa/exchange (Noise+Yamux, framed) {p2p_rate:.1f} MiB/s, plain trio TCP {tcp_rate:.1f} MiB/s, "
          f"ratio {p2p_rate / tcp_rate:.3f} (median of {repeat})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.mib, args.repeat)
