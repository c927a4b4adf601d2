"""Counters of the network layer, shown by ``knexa-node status`` and exported as metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class NetStats:
    # Gossip messages refused, by stable reason (a WireError reason, "stale", "duplicate", ...).
    dropped: Counter[str] = field(default_factory=Counter)
    # Gossip messages delivered to handlers / published, by topic.
    messages_in: Counter[str] = field(default_factory=Counter)
    messages_out: Counter[str] = field(default_factory=Counter)
    # Gossip message copies peers sent us (duplicates through the mesh included), and how
    # many of them our envelope validator checked (py-libp2p skips it for ids it has seen).
    gossip_copies_in: int = 0
    gossip_validations: int = 0
    # Message copies we sent (our publications and forwards), and GossipSub control messages
    # by kind and direction ("ihave in", "iwant out", "graft in", ...): where duplicates come from.
    gossip_copies_out: int = 0
    gossip_control: Counter[str] = field(default_factory=Counter)
    # Stream requests refused or failed, by protocol and reason ("<protocol> <reason>").
    stream_errors: Counter[str] = field(default_factory=Counter)
    streams_in: Counter[str] = field(default_factory=Counter)
    streams_out: Counter[str] = field(default_factory=Counter)
    # Refusals of peers outside the consortium that were counted but not written to the audit log (rate limit).
    refusals_unlogged: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dials_ok: int = 0
    dials_failed: int = 0
    # Connections the swarm dropped from its table but left open, closed by knexa_node.net.orphans.
    orphan_connections_closed: int = 0
    # Connection slots py-libp2p's limit tracker still counted for dead connections, released by the same.
    stale_slots_released: int = 0

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def snapshot(self) -> dict[str, object]:
        return {
            "dropped": dict(self.dropped),
            "messages_in": dict(self.messages_in),
            "messages_out": dict(self.messages_out),
            "gossip_copies_in": self.gossip_copies_in,
            "gossip_validations": self.gossip_validations,
            "gossip_copies_out": self.gossip_copies_out,
            "gossip_control": dict(self.gossip_control),
            "stream_errors": dict(self.stream_errors),
            "streams_in": dict(self.streams_in),
            "streams_out": dict(self.streams_out),
            "refusals_unlogged": self.refusals_unlogged,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "dials_ok": self.dials_ok,
            "dials_failed": self.dials_failed,
            "orphan_connections_closed": self.orphan_connections_closed,
            "stale_slots_released": self.stale_slots_released,
        }
