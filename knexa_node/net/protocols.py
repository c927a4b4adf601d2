"""Every stream protocol and gossip topic knexa speaks, with its version, in one place.

A protocol ID carries its version (``/knexa/exchange/1.0.0``); a breaking change
is a new ID, registered beside the old one while both are in use. Gossip
topics are per consortium: ``knexa/<consortium>/<kind>``.
"""

from __future__ import annotations

from typing import Final

# Stream protocols (request/response over a framed libp2p stream).
EXCHANGE_PROTOCOL: Final = "/knexa/exchange/1.0.0"
"""Student -> teacher: exchange request, sealed knowledge package, receipt."""
CPM_PROTOCOL: Final = "/knexa/cpm/1.0.0"
"""Node -> CPM: profiles and feedback, each answered with an ``Ack``."""

STREAM_PROTOCOLS: Final = (EXCHANGE_PROTOCOL, CPM_PROTOCOL)

# Gossip topic kinds (``knexa/<consortium>/<kind>``).
ROUNDS: Final = "rounds"
"""CPM -> all: ``RoundOpen``."""
PROPOSALS: Final = "proposals"
"""CPM -> all: ``PairingProposal``."""
CHECKPOINTS: Final = "checkpoints"
"""Node -> all: ``Checkpoint`` (audit chain heads)."""

TOPIC_KINDS: Final = (ROUNDS, PROPOSALS, CHECKPOINTS)

# GossipSub router protocol versions we offer. Not 1.2: its IDONTWANT pays off for
# large messages only (go-libp2p sends it for messages of 1 KiB and more), but
# py-libp2p 0.8.1 sends one to every mesh peer for every message: with our
# envelopes of ~0.3-1 KiB that doubled the RPCs per message (78 -> 36 on 7 hosts)
# and the CPU (~190 -> ~85 ms per message). js-libp2p and go-libp2p speak 1.1.
GOSSIPSUB_PROTOCOLS: Final = ("/meshsub/1.1.0",)


def topic(consortium: str, kind: str) -> str:
    """The gossip topic of ``kind`` for ``consortium``; raises ``ValueError`` for unknown kinds."""
    if kind not in TOPIC_KINDS:
        raise ValueError(f"unknown topic kind {kind!r} (known: {', '.join(TOPIC_KINDS)})")
    return f"knexa/{consortium}/{kind}"


def consortium_topics(consortium: str) -> list[str]:
    return [topic(consortium, kind) for kind in TOPIC_KINDS]
