"""One 64 MiB transfer over a /knexa/exchange framed stream vs plain trio TCP, between two processes.

    .venv/bin/python bench/net_throughput.py [--mib 64] [--repeat 3] [--chunk-kib 1024]
    sudo .venv/bin/python bench/net_throughput.py --lab-rate-mbit 100 [--lab-delay-ms 40]

With ``--lab-rate-mbit`` the two sides run in two network-lab namespaces
(integration/netlab.py) whose links are limited to that rate (tbf, or netem
with the delay where the kernel has it), and the figure to read is the
transfer's time against the link's own limit (64 MiB at 100 Mbit/s: 5.4 s).

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


def _host() -> str:
    """The address to listen on: the lab namespace's own (``KNEXA_BENCH_HOST``), else loopback."""
    return os.environ.get("KNEXA_BENCH_HOST", "127.0.0.1")


async def receiver() -> None:
    net = Network(Signer.generate(), loopback_params(listen=(f"/ip4/{_host()}/tcp/0",)))

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
        (listener,) = await nursery.start(functools.partial(trio.serve_tcp, tcp_sink, 0, host=_host()))
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


async def tcp_once(host: str, port: int, payload: bytes, chunk: int) -> float:
    stream = await trio.open_tcp_stream(host, port)
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


async def sender(mib: int, repeat: int, chunk: int, receiver_argv: list[str] | None = None) -> None:
    argv = receiver_argv or [sys.executable, str(Path(__file__).resolve()), "_receiver"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        info = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        receiver_host = multiaddr.Multiaddr(info["addr"].split("/p2p/")[0]).value_for_protocol("ip4")
        payload = os.urandom(mib * 1024 * 1024)
        client = Network(Signer.generate(), loopback_params(listen=(f"/ip4/{_host()}/tcp/0",)))
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
                tcp.append(await tcp_once(receiver_host, info["tcp_port"], payload, chunk))
            nursery.cancel_scope.cancel()
        p2p_rate, tcp_rate = mib / statistics.median(p2p), mib / statistics.median(tcp)
        print(f"  /knexa/exchange median {statistics.median(p2p):.2f} s, plain TCP {statistics.median(tcp):.2f} s per transfer")
        print(f"{mib} MiB between two processes, chunks of {chunk // 1024} KiB: /knexa/exchange (Noise+Yamux, framed) "
              f"{p2p_rate:.1f} MiB/s, plain trio TCP {tcp_rate:.1f} MiB/s, ratio {p2p_rate / tcp_rate:.3f} "
              f"(median of {repeat}; runs {', '.join(f'{mib / t:.0f}' for t in p2p)} vs {', '.join(f'{mib / t:.0f}' for t in tcp)} MiB/s); {load()}")
        # CPU seconds do not depend on how loaded the machine is: the rate each side could reach with a core of its own.
        print(f"  /knexa/exchange CPU per transfer: sender {statistics.median(cpu_send):.2f} s, receiver {statistics.median(cpu_recv):.2f} s "
              f"-> CPU-bound ceiling {mib / max(statistics.median(cpu_send), statistics.median(cpu_recv)):.0f} MiB/s")
    finally:
        proc.kill()
        proc.wait()


def in_lab(args: argparse.Namespace) -> int:
    """Sender and receiver in two lab namespaces over shaped links; this process only builds the lab."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
    from netlab import Lab, LinkShape, unavailable_reason  # noqa: PLC0415 - a test tool, only in this mode

    reason = unavailable_reason()
    if reason:
        print(reason)
        return 2
    shape = LinkShape(delay_ms=args.lab_delay_ms, rate_mbit=args.lab_rate_mbit)
    with Lab(["send", "recv"], shape=shape) as lab:
        ideal = args.mib * 8 * 1024 * 1024 / (args.lab_rate_mbit * 1e6)
        print(f"lab: links {args.lab_rate_mbit:g} Mbit/s, delay {args.lab_delay_ms:g} ms; degraded: {lab.degraded}; "
              f"the link's own limit for {args.mib} MiB: {ideal:.1f} s", flush=True)
        script = str(Path(__file__).resolve())
        receiver_argv = lab.exec_argv("recv", ["env", f"KNEXA_BENCH_HOST={lab.address('recv')}", sys.executable, script,
                                               "_receiver"])
        sender_argv = lab.exec_argv("send", ["env", f"KNEXA_BENCH_HOST={lab.address('send')}", sys.executable, script,
                                             "_sender", str(args.mib), str(args.repeat), str(args.chunk_kib * 1024),
                                             json.dumps(receiver_argv)])
        return subprocess.run(sender_argv, timeout=1800).returncode


if __name__ == "__main__":
    if sys.argv[1:2] == ["_receiver"]:
        trio.run(receiver)
    elif sys.argv[1:2] == ["_sender"]:  # inside a lab namespace: mib repeat chunk receiver-argv (JSON)
        trio.run(sender, int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5]))
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--mib", type=int, default=64)
        parser.add_argument("--repeat", type=int, default=3)
        parser.add_argument("--chunk-kib", type=int, default=BULK_CHUNK // 1024)
        parser.add_argument("--lab-rate-mbit", type=float, default=0.0, help="run in two lab namespaces at this link rate")
        parser.add_argument("--lab-delay-ms", type=float, default=0.0, help="one-way delay per link (netem, else the lab's user-space delay line)")
        args = parser.parse_args()
        if args.lab_rate_mbit > 0:
            raise SystemExit(in_lab(args))
        trio.run(sender, args.mib, args.repeat, args.chunk_kib * 1024)
