"""Inbound DHT streams that cannot hold the DHT's handler slots forever.

py-libp2p 0.8.1's Kademlia server (``KadDHT.handle_stream``) serves at most 12
inbound streams at once, node-wide, and resets every stream beyond that at
once. Each handler loops reading the next request until the peer closes its
side, with no time limit. Its own client closes its streams in a ``finally``
(``PeerRouting._query_peer_for_closest``), but a lookup cancelled from outside
(as knexa's discovery did with a 10 s bound; ``NetParams.lookup_timeout_s``
now lies above the library's own) raises ``Cancelled`` at the first checkpoint
of that close: no FIN is sent. The server's handler
then waits for a request that never comes, holding its slot for the life of
the connection; twelve such streams and the node resets every DHT request
from every peer, for good. The dialer sees "protocol read failed: fail to
read from multiselect communicator, protocol=/ipfs/kad/1.0.0" (the reset
drops the negotiation's answer).

That is what stopped discovery at 10-13% in two runs of the network lab (20
daemons on 2 busy cores, 40 ms links): every member's first request to the
bootstrap node already failed that way, and every one for 150 s after. So a
read on an inbound DHT stream must make progress within ``idle_s``
(go-libp2p-kad-dht resets a stream idle for a minute); past that the handler
resets the stream and frees its slot. Refusals for want of a slot are counted
too, so that the metrics show them.
"""

from __future__ import annotations

from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.kad_dht.kad_dht import PROTOCOL_ID, KadDHT

from knexa_node.net.stats import NetStats

IDLE_REASON = "idle"
BUSY_REASON = "busy"


class DHTStreamIdle(Exception):
    """No bytes of a DHT request arrived within the idle time (the handler resets the stream)."""


class _IdleBoundedStream:
    """A stream whose every read must return within ``idle_s``; everything else is the stream's own."""

    def __init__(self, stream: INetStream, idle_s: float, on_idle: Any) -> None:
        self._stream = stream
        self._idle_s = idle_s
        self._on_idle = on_idle

    async def read(self, n: int | None = None) -> bytes:
        with trio.move_on_after(self._idle_s):
            return await self._stream.read(n)
        self._on_idle()
        raise DHTStreamIdle(f"no DHT request bytes for {self._idle_s:g} s")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def bound_inbound_dht_streams(dht: KadDHT, idle_s: float, stats: NetStats) -> None:
    """Serve ``dht``'s protocol through the idle bound (after the DHT registered its own handler)."""
    key = f"{PROTOCOL_ID} "

    def count_idle() -> None:
        stats.stream_errors[key + IDLE_REASON] += 1

    async def handle(stream: INetStream) -> None:
        limiter = dht._inbound_limiter
        if limiter.borrowed_tokens >= limiter.total_tokens:
            stats.stream_errors[key + BUSY_REASON] += 1  # the DHT resets it below
        await dht.handle_stream(_IdleBoundedStream(stream, idle_s, count_idle))  # type: ignore[arg-type]

    dht.host.set_stream_handler(PROTOCOL_ID, handle)
