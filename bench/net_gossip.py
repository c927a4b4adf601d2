"""Gossip propagation from a CPM to N nodes on loopback (in-process hosts): median and p99 latency.

    .venv/bin/python bench/net_gossip.py [N ...] [--messages 50] [--rate 20]

The CPM is a leaf of a star whose hub is the bootstrap (as in a deployment);
each message is a signed RoundOpen padded to ~256 bytes, published at
``rate`` per second. Latency = receipt time - the envelope's signed
timestamp (one process, one clock).
"""

from __future__ import annotations

import argparse
import statistics
import time

import trio

from knexa_node.net.protocols import ROUNDS, topic
from knexa_node.testing import swarm, wait_until
from knexa_node.wire import RoundOpen, seal_envelope

T = topic("test", ROUNDS)


async def run(n: int, messages: int, rate: float) -> None:
    async with swarm(n + 2) as nets:  # hub, CPM, n nodes
        cpm, receivers = nets[1], [nets[0], *nets[2:]][: n]
        latencies: list[float] = []
        counts = {net.peer_id: 0 for net in receivers}
        for net in nets:
            async def on(envelope, message, origin, pid=net.peer_id):
                latencies.append(time.time() - envelope.timestamp)
                counts[pid] += 1
            if net is cpm or net in receivers:
                net.subscribe(T, on)
        await wait_until(lambda: all(net.gossip.topics().get(T, {}).get("mesh", 0) > 0 for net in nets[: n + 2] if net is cpm or net in receivers), 30)
        await trio.sleep(1.5)  # let meshes settle over a heartbeat
        for i in range(messages):
            await cpm.publish(T, seal_envelope(cpm.signer, RoundOpen(round=i, deadline=0.0, policy="x" * 160)).to_bytes())
            await trio.sleep(1 / rate)
        with trio.move_on_after(5):
            await wait_until(lambda: sum(counts.values()) == messages * len(receivers), 5)
        latencies.sort()
        delivered = sum(counts.values()) / (messages * len(receivers))
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
        print(f"N={n}: messages={messages} rate={rate:g}/s delivered={delivered:.1%} "
              f"median={statistics.median(latencies) * 1000:.1f} ms p99={p99 * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="*", type=int, default=[5, 20])
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    for n in args.n:
        trio.run(run, n, args.messages, args.rate)


if __name__ == "__main__":
    main()
