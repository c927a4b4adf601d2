"""One 64 MiB transfer over a /knexa/exchange framed stream vs plain trio TCP, between two processes.

    .venv/bin/python bench/net_throughput.py [--mib 64] [--repeat 3] [--chunk-kib 1024]

This process sends; a child process receives on both paths (a knexa
:class:`~knexa_node.net.network.Network` serving ``/knexa/exchange/1.0.0`` with
the framed-chunk reader the exchange uses, and a plain trio TCP listener), all
on 127.0.0.1. The two paths alternate ``repeat`` times in one run, so the
ratio of their medians is measured under the same machine load; the load
average is printed beside it. A transfer ends when the receiver has every
byte and has answered.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import multiaddr
import trio
from libp2p.peer.id import ID

from knexa_node.crypto import Signer
from knexa_node.net.network import Network
from knexa_node.net.protocols import EXCHANGE_PROTOCOL
from knexa_node.net.streams import BULK_CHUNK, FramedStream
from knexa_node.testing import loopback_params


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- receiver (child process) -----------------------------------------------------------------------


async def receiver() -> None:
    net = Network(Signer.generate(), loopback_params())

    async def sink(stream: FramedStream, remote: str) -> None:
        size = int((await stream.receive(timeout=30)).decode())
        cpu0 = cpu_s()
        received = 0
        async for chunk in stream.receive_chunks(size, timeout_per_chunk=30):
            received += len(chunk)
        await stream.send(json.dumps({"received": received, "cpu_s": cpu_s() - cpu0}).encode())

    async def tcp_sink(stream: trio.SocketStream) -> None:
        header = b""
        while len(header) < 8:
            header += await stream.receive_some(8 - len(header))
        size, received = int.from_bytes(header, "big"), 0
        while received < size:
            data = await stream.receive_some(BULK_CHUNK)
            if not data:
                return
            received += len(data)
        await stream.send_all(b"k")

    net.set_handler(EXCHANGE_PROTOCOL, sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.serve)
        (listener,) = await nursery.start(functools.partial(trio.serve_tcp, tcp_sink, 0, host="127.0.0.1"))
        sys.stdout.write(json.dumps({"addr": net.dialable_addrs()[0], "tcp_port": listener.socket.getsockname()[1]}) + "\n")
        sys.stdout.flush()
        await trio.sleep_forever()


# --- sender (this process) ------------------------------------------------------------------------


async def p2p_once(client: Network, server_id: str, payload: bytes, chunk: int) -> tuple[float, float, float]:
    """Wall seconds, sender CPU seconds, receiver CPU seconds."""
    stream = await client.open_request(server_id, EXCHANGE_PROTOCOL)
    start, cpu0 = time.perf_counter(), cpu_s()
    await stream.send(str(len(payload)).encode())
    await stream.send_bulk(payload, chunk_size=chunk)
    answer = json.loads(await stream.receive(timeout=120))
    elapsed, cpu = time.perf_counter() - start, cpu_s() - cpu0
    if answer["received"] != len(payload):
        raise RuntimeError(f"receiver got {answer['received']} bytes")
    await stream.close()
    return elapsed, cpu, answer["cpu_s"]


async def tcp_once(port: int, payload: bytes, chunk: int) -> float:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    start = time.perf_counter()
    await stream.send_all(len(payload).to_bytes(8, "big"))
    view = memoryview(payload)
    for i in range(0, len(view), chunk):
        await stream.send_all(view[i : i + chunk])
    if await stream.receive_some(1) != b"k":
        raise RuntimeError("receiver did not confirm")
    elapsed = time.perf_counter() - start
    await stream.aclose()
    return elapsed


async def sender(mib: int, repeat: int, chunk: int) -> None:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_receiver"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        info = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        payload = os.urandom(mib * 1024 * 1024)
        client = Network(Signer.generate(), loopback_params())
        server_id = info["addr"].split("/p2p/")[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(client.serve)
            client.host.get_peerstore().add_addrs(ID.from_base58(server_id), [multiaddr.Multiaddr(info["addr"].split("/p2p/")[0])], 10**9)
            p2p, tcp, cpu_send, cpu_recv = [], [], [], []
            for _ in range(repeat):
                elapsed, sent_cpu, recv_cpu = await p2p_once(client, server_id, payload, chunk)
                p2p.append(elapsed)
                cpu_send.append(sent_cpu)
                cpu_recv.append(recv_cpu)
                tcp.append(await tcp_once(info["tcp_port"], payload, chunk))
            nursery.cancel_scope.cancel()
        p2p_rate, tcp_rate = mib / statistics.median(p2p), mib / statistics.median(tcp)
        print(f"{mib} MiB between two processes, chunks of {chunk // 1024} KiB: /knexa/exchange (Noise+Yamux, framed) "
              f"{p2p_rate:.1f} MiB/s, plain trio TCP {tcp_rate:.1f} MiB/s, ratio {p2p_rate / tcp_rate:.3f} "
              f"(median of {repeat}; runs {', '.join(f'{mib / t:.0f}' for t in p2p)} vs {', '.join(f'{mib / t:.0f}' for t in tcp)} MiB/s); {load()}")
        # CPU seconds do not depend on how loaded the machine is: the rate each side could reach with a core of its own.
        print(f"  /knexa/exchange CPU per transfer: sender {statistics.median(cpu_send):.2f} s, receiver {statistics.median(cpu_recv):.2f} s "
              f"-> CPU-bound ceiling {mib / max(statistics.median(cpu_send), statistics.median(cpu_recv)):.0f} MiB/s")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["_receiver"]:
        trio.run(receiver)
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--mib", type=int, default=64)
        parser.add_argument("--repeat", type=int, default=3)
        parser.add_argument("--chunk-kib", type=int, default=BULK_CHUNK // 1024)
        args = parser.parse_args()
        trio.run(sender, args.mib, args.repeat, args.chunk_kib * 1024)
