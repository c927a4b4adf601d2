"""Tunables of the network layer, with the defaults we chose and why.

:class:`NetParams` is built from ``config.toml`` (:meth:`NetParams.from_config`)
or directly in tests; everything the host, gossip and discovery modules need
is here so that no module reaches into the config file on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from knexa_node.config import Config

# One frame on a request/response stream; bulk payloads go in chunks of at most this.
DEFAULT_MAX_FRAME = 4 * 1024 * 1024


@dataclass(frozen=True)
class GossipParams:
    """GossipSub parameters, set explicitly (py-libp2p 0.8.1 defaults are not the spec's)."""

    # D, D_lo, D_hi of the GossipSub spec (its defaults are 6, 5, 12). Smaller here:
    # py-libp2p spends ~0.5-1 ms of CPU per gossip RPC sent or received (Noise, Yamux,
    # protobuf, trio scheduling), and every mesh link beyond what delivery needs is one
    # duplicate per message per node. With flood publishing (below) the first hop reaches
    # every connected peer anyway. Measured at 20 processes, 2 msg/s, once the mesh held
    # still (docs/netlab.md, "A mesh that holds still"; with the batched Yamux credit, as
    # now), two runs each: D=3/2/4 3.5-3.6 copies per receiver, 7.2-7.3 ms
    # CPU per message per node, p99 47-48 ms; D=4/3/5 4.1-4.4 copies, 8.4-9.0 ms, p99
    # 52-53 ms. Three mesh paths per node are still left around a lost link, besides the
    # flood-published first hop and IHAVE to lazy_degree others. D=2/1/3 (session 11, one
    # run): 5.5 ms against 6.3-6.6, but some nodes got a message by the first hop alone.
    degree: int = 3
    degree_low: int = 2
    degree_high: int = 4
    # The spec's 1 s (py-libp2p defaults to 120 s, which leaves meshes empty for minutes).
    heartbeat_s: float = 1.0
    # D_lazy: peers outside the mesh told at each heartbeat which messages we hold (IHAVE), so
    # that one which missed a message asks for it (IWANT). The spec's 6 (py-libp2p: at least
    # 6) cost 3 IHAVE RPCs sent and 3 received per message per node at 20 processes and
    # 2 msg/s, as many as the mesh forwards themselves, and no IWANT followed: flood
    # publishing and the mesh already deliver every message. 3 keeps repair paths.
    lazy_degree: int = 3
    # py-libp2p silently drops above 10 msg/s per peer and topic; our traffic is
    # rare (rounds, proposals, checkpoints) but bursts of proposals must pass.
    max_messages_per_topic_per_second: float = 100.0
    # Send our own publications to every peer of the topic, not only our mesh
    # (see knexa_node.net.gossip._KnexaGossipSub).
    flood_publish: bool = True
    # Largest gossip message we accept (an envelope with a proposal is ~1 KiB).
    max_message_size: int = 64 * 1024
    # Envelopes older than this (by their signed timestamp) are dropped as stale;
    # also the lifetime of the duplicate-digest cache.
    max_age_s: float = 900.0
    # Allowed clock skew into the future.
    max_future_s: float = 120.0
    seen_cache_size: int = 65536


@dataclass(frozen=True)
class NetParams:
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    announce: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    consortium: str = "default"
    # Peer IDs exempt from the DHT's subnet cap (knexa_node.net.routing): the consortium's
    # members and its CPM; the bootstrap peers are added by the network itself.
    members: tuple[str, ...] = ()
    gossip: GossipParams = field(default_factory=GossipParams)
    # Bootstrap redial backoff: first retry after ``backoff_min_s``, doubling up to ``backoff_max_s``.
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    # DHT discovery: look up our own key (which returns the closest peers) at this
    # interval, shorter while we know few peers.
    discovery_interval_s: float = 10.0
    discovery_fast_interval_s: float = 1.0
    # While every known peer is connected the interval doubles up to this: each lookup costs
    # streams to up to 20 peers and a signature check per peer record in their answers
    # (at 20 nodes and a 2 s interval that was most of a node's CPU per gossip message).
    discovery_max_interval_s: float = 120.0
    # Connect to at most this many discovered peers (a consortium is small; a mesh of all is fine).
    max_peers: int = 64
    dial_timeout_s: float = 10.0
    # Bound on one discovery lookup. py-libp2p bounds its own (10 s per query, no new round
    # after 30 s); cutting one short abandons its open streams (knexa_node.net.dht_streams),
    # so this is only a safety net above the library's own bound.
    lookup_timeout_s: float = 60.0
    # An inbound DHT stream with no request bytes for this long is reset, freeing one of the
    # DHT's 12 handler slots (knexa_node.net.dht_streams; go-libp2p-kad-dht allows a minute).
    dht_stream_idle_s: float = 20.0
    stream_open_timeout_s: float = 10.0
    # Connection limits of the swarm (inbound cap = max_connections - min_connections in py-libp2p).
    max_connections: int = 300
    min_connections: int = 50
    max_frame: int = DEFAULT_MAX_FRAME
    # How often connections the swarm dropped without closing are looked for (knexa_node.net.orphans).
    orphan_sweep_s: float = 10.0

    @classmethod
    def from_config(cls, config: Config, **overrides: object) -> "NetParams":
        base = cls(
            listen=tuple(config.node.listen),
            announce=tuple(config.node.announce),
            bootstrap=tuple(config.node.bootstrap),
            consortium=config.consortium.name,
            members=tuple(config.consortium.members) + ((config.consortium.cpm,) if config.consortium.cpm else ()),
        )
        return cls(**{**base.__dict__, **overrides})  # type: ignore[arg-type]
