"""Abandoned inbound DHT streams are reset after an idle time, so the DHT keeps answering.

py-libp2p's Kademlia server has 12 handler slots per node and a handler waits
for the next request with no time limit; a lookup cancelled from outside leaves
its stream open without a FIN. Twelve such streams made the bootstrap node of
a 20-daemon lab refuse every DHT request for good (knexa_node.net.dht_streams).
"""

from __future__ import annotations

import pytest
import trio
from libp2p.kad_dht.common import QUERY_TIMEOUT
from libp2p.kad_dht.kad_dht import PROTOCOL_ID
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.utils.varint import encode_uvarint, read_varint_prefixed_bytes_limited

from knexa_node.net.dht_streams import BUSY_REASON, IDLE_REASON
from knexa_node.net.params import NetParams
from knexa_node.testing import loopback_params, swarm, wait_until

IDLE_S = 1.0
SLOTS = 12  # py-libp2p 0.8.1's KadDHT inbound limiter
LOOKUP_ROUNDS_S = 30  # PeerRouting.find_closest_peers_network starts no new round after this


async def closest_from(client, server) -> list[str]:  # type: ignore[no-untyped-def]
    """One FIND_NODE request from ``client`` to ``server`` (for the client's own key)."""
    found = await client.dht.peer_routing._query_peer_for_closest(server.host.get_id(), client.host.get_id().to_bytes())
    return [p.to_base58() for p in found]


@pytest.mark.slow
async def test_abandoned_dht_streams_are_reset_and_the_dht_answers_again():
    # Slow discovery, so that its own lookups do not take the server's slots during the test.
    params = loopback_params(dht_stream_idle_s=IDLE_S, discovery_fast_interval_s=600.0, discovery_interval_s=600.0)
    async with swarm(3, connect="star", params=params) as (server, client, other):
        limiter = server.dht._inbound_limiter
        assert limiter.total_tokens == SLOTS
        await wait_until(lambda: limiter.borrowed_tokens == 0, 10)
        await closest_from(other, server)  # the server adds a peer to its table when it asks
        assert other.peer_id in await closest_from(client, server)

        # Streams opened and left without a request or a FIN, as a cancelled lookup leaves them.
        abandoned = [await client.host.new_stream(server.host.get_id(), [PROTOCOL_ID]) for _ in range(SLOTS)]
        await wait_until(lambda: limiter.borrowed_tokens == SLOTS, 5)
        assert await closest_from(client, server) == []  # every slot taken: the server resets the request

        # Within the idle time the slots come back (without the bound, never), and the metrics say why.
        await wait_until(lambda: limiter.borrowed_tokens == 0, IDLE_S + 5)
        assert server.stats.stream_errors[f"{PROTOCOL_ID} {IDLE_REASON}"] == SLOTS
        assert server.stats.stream_errors[f"{PROTOCOL_ID} {BUSY_REASON}"] >= 1
        assert other.peer_id in await closest_from(client, server)
        with pytest.raises(Exception), trio.fail_after(5):  # the client's end saw the reset
            await abandoned[0].read(1)


@pytest.mark.slow
async def test_a_slow_request_within_the_idle_time_is_answered():
    params = loopback_params(dht_stream_idle_s=IDLE_S, discovery_fast_interval_s=600.0, discovery_interval_s=600.0)
    async with swarm(3, connect="star", params=params) as (server, client, other):
        await closest_from(other, server)  # the server adds a peer to its table when it asks
        # The request arrives in two parts, each within the idle time: the bound is per read, not per stream.
        request = Message(type=Message.MessageType.FIND_NODE, key=client.host.get_id().to_bytes()).SerializeToString()
        framed = encode_uvarint(len(request)) + request
        stream = await client.host.new_stream(server.host.get_id(), [PROTOCOL_ID])
        await stream.write(framed[:3])
        await trio.sleep(IDLE_S * 0.6)
        await stream.write(framed[3:])
        with trio.fail_after(5):
            answer = Message.FromString(await read_varint_prefixed_bytes_limited(stream, 1 << 20))
        await stream.close()
        assert other.host.get_id().to_bytes() in [p.id for p in answer.closerPeers]
        assert server.stats.stream_errors[f"{PROTOCOL_ID} {IDLE_REASON}"] == 0


def test_discovery_lets_a_lookup_end_within_its_own_bounds():
    # Cutting a lookup short abandons its open streams (no FIN): py-libp2p bounds each query by
    # QUERY_TIMEOUT and starts no round after 30 s, so discovery's bound must lie above both.
    assert NetParams().lookup_timeout_s > LOOKUP_ROUNDS_S + QUERY_TIMEOUT
