"""Test helpers for every room: real libp2p hosts on 127.0.0.1, already connected.

    async with swarm(3) as nets:            # nets[0] is the hub every other node dialed
        await nets[1].publish(...)
        await wait_until(lambda: ..., timeout=5)

Hosts listen on port 0 of loopback, use throw-away identities (or the
``signers`` given) and a fast discovery interval. No mocks: these are the same
:class:`~knexa_node.net.network.Network` objects the daemon runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Literal

import trio

from knexa_node.crypto import Signer
from knexa_node.net.network import Network
from knexa_node.net.params import NetParams

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def loopback_params(**overrides: object) -> NetParams:
    """NetParams for loopback tests: port 0, quick discovery and backoff."""
    base = NetParams(listen=(LOOPBACK,), consortium="test", discovery_interval_s=2.0,
                     discovery_fast_interval_s=0.3, backoff_min_s=0.1, backoff_max_s=1.0, dial_timeout_s=5.0)
    return replace(base, **overrides)  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; ``trio.TooSlowError`` after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)


@asynccontextmanager
async def swarm(
    n: int,
    *,
    connect: Literal["star", "mesh", "none"] = "star",
    signers: Sequence[Signer] | None = None,
    params: NetParams | None = None,
    timeout: float = 20.0,
) -> AsyncIterator[list[Network]]:
    """``n`` running networks on loopback.

    ``star``: every node dials node 0 (as nodes that know one bootstrap peer);
    ``mesh``: every pair is connected; ``none``: no dial. Returns once those
    connections are up (gossip meshes form one heartbeat later: wait for them
    with :func:`wait_until` on ``net.gossip.topics()`` if a test needs them).
    """
    base = params or loopback_params()
    signers = list(signers) if signers is not None else [Signer.generate() for _ in range(n)]
    if len(signers) != n:
        raise ValueError("need one signer per node")
    async with trio.open_nursery() as nursery:
        nets: list[Network] = []
        try:
            with trio.fail_after(timeout):
                for signer in signers:
                    nets.append(await nursery.start(Network(signer, base).serve))
                if connect != "none":
                    pairs = [(i, 0) for i in range(1, n)] if connect == "star" else [(i, j) for i in range(n) for j in range(i)]
                    for i, j in pairs:
                        nets[i].host.get_peerstore().add_addrs(nets[j].host.get_id(), nets[j].host.get_addrs(), 10**9)
                        await nets[i].connect(nets[j].peer_id)
                        await nets[i].dht.add_peer(nets[j].host.get_id(), skip_server_mode_check=True)
            yield nets
        finally:
            nursery.cancel_scope.cancel()
