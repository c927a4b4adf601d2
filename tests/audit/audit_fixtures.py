"""A real two-organization exchange history for the audit tests: real keys, real signed envelopes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from knexa_node.audit import AuditLog, Event, events
from knexa_node.crypto import Signer, sha256
from knexa_node.wire import Feedback, PackageHeader, PairingProposal, Receipt, seal_envelope


class StepClock:
    """A deterministic clock that advances 0.5 s per reading."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


@dataclass
class Exchange:
    proposal: PairingProposal
    header: PackageHeader
    header_envelope: bytes
    receipt_envelope: bytes


def make_exchange(cpm: Signer, teacher: Signer, student: Signer, round_: int, *, size: int = 1000,
                  protocol: str = "text") -> Exchange:
    proposal = PairingProposal(proposal_id=os.urandom(16), round=round_, teacher=teacher.peer_id,
                               student=student.peer_id, protocol=protocol, context=(0.0,) * 4, score=0.5,
                               expires=2_000_000_000.0)
    seal_envelope(cpm, proposal)  # the CPM signs it; the logs only keep its ID
    payload = os.urandom(64)
    header = PackageHeader(proposal_id=proposal.proposal_id, round=round_, teacher=teacher.peer_id,
                           student=student.peer_id, protocol=protocol, payload_hash=sha256(payload),
                           payload_size=size, chunks=1, ephemeral_key=os.urandom(32), dp_epsilon=0.5, redactions=2)
    header_env = seal_envelope(teacher, header).to_bytes()
    receipt = Receipt(proposal_id=proposal.proposal_id, round=round_, teacher=teacher.peer_id,
                      student=student.peer_id, payload_hash=header.payload_hash, payload_size=size)
    return Exchange(proposal, header, header_env, seal_envelope(student, receipt).to_bytes())


def log_exchange(teacher_log: AuditLog, student_log: AuditLog, ex: Exchange) -> None:
    """Everything both sides log for one exchange, every event kind included."""
    t, s = teacher_log.owner, student_log.owner
    student_log.append(events.proposal_accepted(ex.proposal, s))
    teacher_log.append(events.proposal_accepted(ex.proposal, t))
    teacher_log.append(events.guardrail_redactions(ex.header))
    teacher_log.append(events.dp_epsilon_spent(ex.header, delta=1e-5, epsilon_total=1.5))
    student_log.append(events.package_received(ex.header_envelope, ex.header))
    teacher_log.append(events.package_sent(ex.header, ex.receipt_envelope))
    student_log.append(events.distillation(ex.proposal, loss_before=2.0, loss_after=1.8, steps=60, seconds=11.6))
    feedback = Feedback(proposal_id=ex.proposal.proposal_id, round=ex.proposal.round, reward=0.2, loss_before=2.0,
                        loss_after=1.8, package_bytes=ex.header.payload_size, receipt_hash=sha256(ex.receipt_envelope))
    student_log.append(events.reward_reported(feedback, t))


def build_pair(tmp: Path, rounds: int = 2) -> tuple[Signer, Signer, Path, Path]:
    """Two nodes that teach each other in turn for ``rounds`` rounds, plus one refusal."""
    cpm, a, b = Signer.generate(), Signer.generate(), Signer.generate()
    clock = StepClock()
    with AuditLog.open(tmp / "a.log", a, clock=clock) as log_a, AuditLog.open(tmp / "b.log", b, clock=clock) as log_b:
        for r in range(rounds):
            teacher, student = ((a, log_a), (b, log_b)) if r % 2 == 0 else ((b, log_b), (a, log_a))
            log_exchange(teacher[1], student[1], make_exchange(cpm, teacher[0], student[0], r))
        refused = make_exchange(cpm, a, b, rounds).proposal
        log_a.append(events.proposal_refused(refused, a.peer_id, "busy"))
        log_b.append(Event(kind="proposal-refused", round=rounds, outcome="refused", proposal_id=refused.proposal_id,
                           peer=a.peer_id, protocol="text", metrics={"code": "busy", "role": "student"}))
    return a, b, tmp / "a.log", tmp / "b.log"


