"""The audit log fed by the real exchange drivers (in-memory streams): both logs verify and agree."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio
import trio.testing

from knexa_node.audit import AuditLog, cross_check, events, verify_file
from knexa_node.crypto import Signer
from knexa_node.exchange.driver import BuiltPackage, fetch_package, serve_exchange
from knexa_node.exchange.errors import ExchangeOutcome
from knexa_node.exchange.framed import TrioFramedStream
from knexa_node.exchange.membership import Membership
from knexa_node.exchange.policy import ExchangePolicy
from knexa_node.exchange.replay import ReplayCache
from knexa_node.wire import PairingProposal, seal_envelope

PAYLOAD = os.urandom(20_000)


async def _build(proposal: PairingProposal, request: object) -> BuiltPackage:
    return BuiltPackage(PAYLOAD, dp_epsilon=0.25, redactions=3)


async def _exchange(cpm: Signer, teacher: Signer, student: Signer, *, proposal_round: int,
                    teacher_round: int) -> tuple[ExchangeOutcome, ExchangeOutcome]:
    policy = ExchangePolicy(cpm=cpm.peer_id, membership=Membership.from_peer_ids([teacher.peer_id, student.peer_id]),
                            timeout_s=20.0)
    proposal = seal_envelope(cpm, PairingProposal(
        proposal_id=os.urandom(16), round=proposal_round, teacher=teacher.peer_id, student=student.peer_id,
        protocol="text", context=(0.5,), score=1.0, expires=time.time() + 600)).to_bytes()
    left, right = trio.testing.memory_stream_pair()
    outcomes: dict[str, ExchangeOutcome] = {}

    async def serve() -> None:
        outcomes["t"] = await serve_exchange(TrioFramedStream(left), remote=student.peer_id, signer=teacher,
                                             policy=policy, replay=ReplayCache(), build_package=_build,
                                             current_round=teacher_round)

    async def fetch() -> None:
        outcomes["s"] = await fetch_package(TrioFramedStream(right), remote=teacher.peer_id, signer=student,
                                            policy=policy, proposal_envelope=proposal, current_round=proposal_round)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(fetch)
    return outcomes["t"], outcomes["s"]


async def test_real_exchanges_logged_on_both_sides_verify_and_agree(tmp_path: Path) -> None:
    cpm, a, b = Signer.generate(), Signer.generate(), Signer.generate()
    done = await _exchange(cpm, a, b, proposal_round=1, teacher_round=1)
    refused = await _exchange(cpm, a, b, proposal_round=2, teacher_round=3)  # teacher is in another round
    assert [o.status for o in done] == ["done", "done"] and refused[0].status == "refused"
    with AuditLog.open(tmp_path / "a.log", a) as log_a, AuditLog.open(tmp_path / "b.log", b) as log_b:
        for teacher_side, student_side in (done, refused):
            log_a.append(events.from_exchange_outcome(teacher_side))
            log_b.append(events.from_exchange_outcome(student_side))
    view_a, view_b = verify_file(tmp_path / "a.log"), verify_file(tmp_path / "b.log")
    assert view_a.report.ok and view_b.report.ok
    sent, received = view_a.entries[0].event, view_b.entries[0].event
    assert (sent.kind, received.kind) == ("package-sent", "package-received")
    assert sent.receipt == done[0].receipt_envelope and received.receipt == done[1].header_envelope
    assert sent.metrics["redactions"] == 3 and sent.metrics["dp_epsilon"] == 0.25
    assert view_a.entries[1].event.outcome == "refused" and view_a.entries[1].event.metrics["code"] == "wrong-round"
    assert view_b.entries[1].event.outcome == "refused"
    received_refusal = view_b.entries[1].event.proposal_id
    result = cross_check(view_a, view_b)
    assert result.common >= 1
    assert all(m.proposal_id != sent.proposal_id for m in result.mismatches), result.mismatches
    # A teacher refusing in receive_request reports no proposal ID in its outcome (exchange room),
    # so its refusal entry cannot be matched to the student's: at most that one shows as missing.
    assert all(m.kind == "missing" and m.proposal_id == received_refusal for m in result.mismatches)
