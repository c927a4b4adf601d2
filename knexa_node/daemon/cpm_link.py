"""A node's requests to its CPM over ``/knexa/cpm``: signed, answered by a signed envelope, retried with backoff.

A request is retried a few times (a profile, a poll: the round moves on
without them), or, given ``until``, until the CPM answers or that time passes
(feedback: until its proposal expires, so that a partition shorter than that
loses nothing). Every try sends the same signed envelope; the CPM answers a
repeat of what it already acknowledged without counting it twice.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import trio

from knexa_node.crypto import Signer
from knexa_node.net.protocols import CPM_PROTOCOL
from knexa_node.wire import Ack, Message, ProposalList, WireError, open_envelope, seal_envelope

CPM_TIMEOUT_S = 30.0
CPM_RETRIES = 5
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0


class Requester(Protocol):
    """The part of :class:`~knexa_node.net.network.Network` a CPM request needs."""

    async def request(self, peer_id: str, protocol: str, payload: bytes, *, timeout: float = 30.0,
                      max_size: int | None = None) -> bytes: ...


class CpmLink:
    def __init__(self, net: Requester, signer: Signer, cpm: str, on_event: Any, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.net, self.signer, self.cpm, self.on_event, self.clock = net, signer, cpm, on_event, clock

    def trusts(self, sender: str) -> bool:
        """Is ``sender`` the CPM this node follows? (any signer when none is configured: the demo)"""
        return not self.cpm or sender == self.cpm

    async def ask(self, message: Message, *, until: float | None = None) -> Message | None:
        """One signed request to the CPM, retried with backoff; None if it never answered.

        ``until`` (a time of ``clock``): keep trying until then instead of :data:`CPM_RETRIES` times.
        Any signed answer ends the tries, a refusal too: the CPM has decided.
        """
        data = seal_envelope(self.signer, message).to_bytes()
        delay, attempt = FIRST_BACKOFF_S, 0
        while True:
            attempt += 1
            try:
                raw = await self.net.request(self.cpm, CPM_PROTOCOL, data, timeout=CPM_TIMEOUT_S)
                envelope, answer = open_envelope(raw, expect=(Ack, ProposalList))
                if envelope.sender != self.cpm:
                    raise WireError("bad-sender", "answer not signed by the CPM")
                return answer
            except Exception as exc:  # network or peer failure: retry, then give up visibly
                self.on_event("cpm-unreachable", attempt=attempt, error=f"{type(exc).__name__}: {exc}"[:200])
            if (until is None and attempt >= CPM_RETRIES) or (until is not None and self.clock() >= until):
                return None
            # The last wait ends at ``until``, so that one try is made then.
            await trio.sleep(delay if until is None else min(delay, max(until - self.clock(), 0.0)))
            delay = min(delay * 2, MAX_BACKOFF_S)


def describe(answer: Message | None) -> str:
    """The CPM's answer in a log field."""
    if answer is None:
        return "no answer"
    if isinstance(answer, Ack):
        return "ok" if answer.ok else f"refused {answer.code}: {answer.reason}"
    return type(answer).__name__
