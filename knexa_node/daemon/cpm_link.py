"""A node's requests to its CPM over ``/knexa/cpm``: signed, answered by a signed envelope, retried with backoff."""

from __future__ import annotations

from typing import Any, Protocol

import trio

from knexa_node.crypto import Signer
from knexa_node.net.protocols import CPM_PROTOCOL
from knexa_node.wire import Ack, Message, ProposalList, WireError, open_envelope, seal_envelope

CPM_TIMEOUT_S = 30.0
CPM_RETRIES = 5
MAX_BACKOFF_S = 8.0


class Requester(Protocol):
    """The part of :class:`~knexa_node.net.network.Network` a CPM request needs."""

    async def request(self, peer_id: str, protocol: str, payload: bytes, *, timeout: float = 30.0,
                      max_size: int | None = None) -> bytes: ...


class CpmLink:
    def __init__(self, net: Requester, signer: Signer, cpm: str, on_event: Any) -> None:
        self.net, self.signer, self.cpm, self.on_event = net, signer, cpm, on_event

    def trusts(self, sender: str) -> bool:
        """Is ``sender`` the CPM this node follows? (any signer when none is configured: the demo)"""
        return not self.cpm or sender == self.cpm

    async def ask(self, message: Message) -> Message | None:
        """One signed request to the CPM, retried with backoff; None if it never answered."""
        data = seal_envelope(self.signer, message).to_bytes()
        delay = 0.5
        for attempt in range(CPM_RETRIES):
            try:
                raw = await self.net.request(self.cpm, CPM_PROTOCOL, data, timeout=CPM_TIMEOUT_S)
                envelope, answer = open_envelope(raw, expect=(Ack, ProposalList))
                if envelope.sender != self.cpm:
                    raise WireError("bad-sender", "answer not signed by the CPM")
                return answer
            except Exception as exc:  # network or peer failure: retry, then give up visibly
                self.on_event("cpm-unreachable", attempt=attempt + 1, error=f"{type(exc).__name__}: {exc}"[:200])
                await trio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        return None


def describe(answer: Message | None) -> str:
    """The CPM's answer in a log field."""
    if answer is None:
        return "no answer"
    if isinstance(answer, Ack):
        return "ok" if answer.ok else f"refused {answer.code}: {answer.reason}"
    return type(answer).__name__
