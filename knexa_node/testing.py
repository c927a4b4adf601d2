"""Test helpers for every room: real libp2p hosts on 127.0.0.1, and in-memory peers for the pure cores.

    async with swarm(3) as nets:            # nets[0] is the hub every other node dialed
        await nets[1].publish(...)
        await wait_until(lambda: ..., timeout=5)

Hosts listen on port 0 of loopback, use throw-away identities (or the
``signers`` given) and a fast discovery interval. No mocks: these are the same
:class:`~knexa_node.net.network.Network` objects the daemon runs.

For code above the network that must run in milliseconds (under
``trio.testing.MockClock``): :func:`framed_stream_pair` (two connected
in-memory :class:`~knexa_node.net.streams.FramedStream` look-alikes),
:class:`MemoryNetwork` (the request, handler and gossip parts of a
``Network``, between peers of one :class:`MemoryNetwork.Hub`) and
:class:`FakeClock` (a ``clock()`` that moves only when told).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, Literal

import trio

from knexa_node.crypto import Signer
from knexa_node.net.errors import PeerUnreachable, StreamClosed, StreamTimeout
from knexa_node.net.network import Network
from knexa_node.net.params import NetParams
from knexa_node.net.stats import NetStats
from knexa_node.wire import Envelope, Message, WireError, open_envelope

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


class FakeClock:
    """``clock()`` for code that takes one (``time.time`` in production): it moves only by :meth:`advance`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.now += seconds


class MemoryFramedStream:
    """One end of :func:`framed_stream_pair`: whole frames, the errors and counters of a ``FramedStream``."""

    def __init__(self, send: trio.MemorySendChannel[bytes], receive: trio.MemoryReceiveChannel[bytes],
                 remote_peer_id: str, max_frame: int) -> None:
        self._send, self._receive = send, receive
        self.remote_peer_id, self.max_frame = remote_peer_id, max_frame
        self.bytes_sent = self.bytes_received = 0

    async def send(self, data: bytes) -> None:
        if len(data) > self.max_frame:
            raise WireError("too-large", f"frame of {len(data)} bytes > limit {self.max_frame}")
        try:
            await self._send.send(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise StreamClosed(f"stream to {self.remote_peer_id} is closed") from None
        self.bytes_sent += len(data) + 4

    async def receive(self, max_size: int | None = None, timeout: float = 30.0) -> bytes:
        try:
            with trio.fail_after(timeout):
                data = await self._receive.receive()
        except trio.TooSlowError:
            raise StreamTimeout(f"no complete frame from {self.remote_peer_id} within {timeout:g} s") from None
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StreamClosed(f"{self.remote_peer_id} closed the stream") from None
        if max_size is not None and len(data) > max_size:
            raise WireError("too-large", f"frame of {len(data)} bytes > {max_size}")
        self.bytes_received += len(data) + 4
        return data

    async def close(self) -> None:
        await self._send.aclose()


def framed_stream_pair(a: str = "peer-a", b: str = "peer-b", *,
                       max_frame: int = 64 * 1024 * 1024) -> tuple[MemoryFramedStream, MemoryFramedStream]:
    """Two connected in-memory framed streams: the first is ``a``'s end (its remote is ``b``), the second ``b``'s."""
    a_to_b_send, a_to_b_receive = trio.open_memory_channel[bytes](math.inf)
    b_to_a_send, b_to_a_receive = trio.open_memory_channel[bytes](math.inf)
    return (MemoryFramedStream(a_to_b_send, b_to_a_receive, b, max_frame),
            MemoryFramedStream(b_to_a_send, a_to_b_receive, a, max_frame))


GossipHandler = Callable[[Envelope, Message, str], Awaitable[None]]
StreamHandler = Callable[[Any, str], Awaitable[None]]


class MemoryNetwork:
    """The parts of :class:`~knexa_node.net.network.Network` that roles use, between the peers of one hub.

    Requests run the remote peer's handler over a :func:`framed_stream_pair`
    in the hub's nursery; gossip is delivered to every other subscriber, in
    publication order, after :func:`~knexa_node.wire.open_envelope` (as the real
    network's validator does).
    """

    class Hub:
        def __init__(self, nursery: trio.Nursery) -> None:
            self.nursery = nursery
            self.peers: dict[str, MemoryNetwork] = {}

    def __init__(self, hub: MemoryNetwork.Hub, signer: Signer) -> None:
        self.hub, self.signer, self.peer_id = hub, signer, signer.peer_id
        self.stats = NetStats()
        self.handlers: dict[str, StreamHandler] = {}
        self.topics: dict[str, list[GossipHandler]] = {}
        hub.peers[self.peer_id] = self

    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        self.topics.setdefault(topic, []).append(handler)

    async def publish(self, topic: str, envelope_bytes: bytes) -> None:
        envelope, message = open_envelope(envelope_bytes)
        self.stats.messages_out[topic] += 1
        for peer in list(self.hub.peers.values()):
            if peer is not self:
                for handler in peer.topics.get(topic, []):
                    await handler(envelope, message, self.peer_id)

    def set_handler(self, protocol: str, handler: StreamHandler, *, max_frame: int | None = None) -> None:
        self.handlers[protocol] = handler

    async def open_request(self, peer_id: str, protocol: str, *, timeout: float | None = None,
                           max_frame: int | None = None) -> MemoryFramedStream:
        remote = self.hub.peers.get(peer_id)
        if remote is None or protocol not in remote.handlers:
            raise PeerUnreachable(f"{peer_id[:16]} does not serve {protocol} here")
        mine, theirs = framed_stream_pair(self.peer_id, peer_id)
        self.stats.streams_out[protocol] += 1
        self.hub.nursery.start_soon(remote.handlers[protocol], theirs, self.peer_id)
        return mine

    async def request(self, peer_id: str, protocol: str, payload: bytes, *, timeout: float = 30.0,
                      max_size: int | None = None) -> bytes:
        stream = await self.open_request(peer_id, protocol, timeout=timeout)
        try:
            await stream.send(payload)
            return await stream.receive(max_size, timeout)
        finally:
            await stream.close()

    def dialable_addrs(self) -> list[str]:
        return [f"/memory/{self.peer_id}"]
