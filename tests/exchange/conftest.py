"""Fixtures for the exchange tests: real Ed25519 keys, CPM-signed proposals, in-memory framed streams."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import pytest
import trio.testing

from knexa_node.crypto import Signer
from knexa_node.exchange.framed import TrioFramedStream
from knexa_node.exchange.membership import Membership
from knexa_node.exchange.policy import ExchangePolicy
from knexa_node.wire import PairingProposal, seal_envelope


@dataclass
class Cast:
    cpm: Signer
    teacher: Signer
    student: Signer
    outsider: Signer

    def policy(self, **overrides: object) -> ExchangePolicy:
        base = dict(
            cpm=self.cpm.peer_id,
            membership=Membership.from_peer_ids([self.teacher.peer_id, self.student.peer_id]),
            timeout_s=20.0,
        )
        base.update(overrides)
        return ExchangePolicy(**base)  # type: ignore[arg-type]

    def proposal(
        self, *, round: int = 3, protocol: str = "logits", expires: float | None = None,
        teacher: Signer | None = None, student: Signer | None = None, signer: Signer | None = None,
    ) -> bytes:
        message = PairingProposal(
            proposal_id=os.urandom(16), round=round, teacher=(teacher or self.teacher).peer_id,
            student=(student or self.student).peer_id, protocol=protocol, context=(0.5, 0.25), score=1.0,
            expires=time.time() + 600 if expires is None else expires,
        )
        return seal_envelope(signer or self.cpm, message).to_bytes()


@pytest.fixture
def cast() -> Cast:
    return Cast(Signer.generate(), Signer.generate(), Signer.generate(), Signer.generate())


@pytest.fixture
def framed_pair() -> Callable[[], tuple[TrioFramedStream, TrioFramedStream]]:
    def make() -> tuple[TrioFramedStream, TrioFramedStream]:
        left, right = trio.testing.memory_stream_pair()
        return TrioFramedStream(left), TrioFramedStream(right)

    return make
