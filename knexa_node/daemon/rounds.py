"""The daemon's current round, and the round announcements on gossip (the CPM announces them: ``knexa_cpm.service``).

:class:`RoundTracker` is the one owner of "the current round": the role
installed in the daemon moves it (a node when it begins a round's work, the
CPM when it opens one) and every reader asks it (status, the metrics gauge,
the exchange handler's round check).

Every daemon follows ``knexa/<consortium>/rounds`` (which also keeps the topic's
mesh formed). A node trusts a ``RoundOpen`` only from the CPM named in its
config (``consortium.cpm``); with no CPM configured (demo) it accepts any
signer and says so in its status.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from knexa_node.net.network import Network
from knexa_node.net.protocols import ROUNDS, topic
from knexa_node.wire import Envelope, Message, RoundOpen


class RoundTracker:
    def __init__(self, net: Network, consortium: str, trusted_cpm: str, on_event: Any) -> None:
        self.net, self.trusted_cpm, self.on_event = net, trusted_cpm, on_event
        self.topic = topic(consortium, ROUNDS)
        self.last: dict[str, Any] | None = None  # the last accepted announcement, as status shows it
        self._current: int | None = None
        self._listeners: list[Callable[[RoundOpen], None]] = []
        net.subscribe(self.topic, self._on_message)

    @property
    def current(self) -> int | None:
        """The round this daemon works in (None before its role entered any)."""
        return self._current

    def enter(self, round_: int) -> None:
        """The role now works in ``round_`` (a node's rounds only move forward; the CPM may reopen one by hand)."""
        if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
            raise ValueError(f"a round is a non-negative integer, not {round_!r}")
        self._current = round_

    def add_listener(self, listener: Callable[[RoundOpen], None]) -> None:
        """Call ``listener(round_open)`` for every announcement this tracker accepts (trusted CPM, not old)."""
        self._listeners.append(listener)

    async def _on_message(self, envelope: Envelope, message: Message, origin: str) -> None:
        if not isinstance(message, RoundOpen):
            self.net.stats.drop("unexpected-type")
            return
        if self.trusted_cpm and envelope.sender != self.trusted_cpm:
            self.net.stats.drop("untrusted-cpm")
            self.on_event("round-refused", round=message.round, sender=envelope.sender, reason="not the configured CPM")
            return
        if self.last is not None and message.round < self.last["round"]:
            self.net.stats.drop("old-round")
            return
        self.last = {
            "round": message.round,
            "deadline": message.deadline,
            "policy": message.policy,
            "cpm": envelope.sender,
            "trusted": bool(self.trusted_cpm),
            "received_at": time.time(),
            "sent_at": envelope.timestamp,  # the CPM's clock: doctor reads the skew from the two
            "digest": envelope.digest.hex(),
        }
        self.on_event("round-open", round=message.round, cpm=envelope.sender, policy=message.policy)
        for listener in self._listeners:
            listener(message)

    def status(self) -> dict[str, Any] | None:
        return self.last
