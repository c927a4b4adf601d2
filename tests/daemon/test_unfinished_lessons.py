"""A lesson a crash left unreported is found in the student's audit log and reported to the CPM as failed at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from knexa_node.audit import AuditLog, events, verify_file
from knexa_node.crypto import Signer, sha256
from knexa_node.daemon.unfinished import Unreported, report_unfinished, unreported_lessons
from knexa_node.wire import Feedback, Message, PackageHeader, PairingProposal, seal_envelope

CPM, TEACHER, STUDENT = Signer(bytes([7] * 32)), Signer(bytes([8] * 32)), Signer(bytes([9] * 32))


def proposal(round_: int) -> tuple[PairingProposal, PackageHeader, bytes]:
    p = PairingProposal(proposal_id=os.urandom(16), round=round_, teacher=TEACHER.peer_id, student=STUDENT.peer_id,
                        protocol="text", context=(0.0,) * 4, score=0.5, expires=2_000_000_000.0)
    header = PackageHeader(proposal_id=p.proposal_id, round=round_, teacher=TEACHER.peer_id, student=STUDENT.peer_id,
                           protocol="text", payload_hash=sha256(b"x"), payload_size=100, chunks=1,
                           ephemeral_key=os.urandom(32), dp_epsilon=0.0, redactions=0)
    return p, header, seal_envelope(TEACHER, header).to_bytes()


def received(log: AuditLog, round_: int) -> PairingProposal:
    p, header, envelope = proposal(round_)
    log.append(events.package_received(envelope, header))
    return p


def reported(log: AuditLog, p: PairingProposal) -> None:
    log.append(events.distillation(p, loss_before=2.0, loss_after=1.9, steps=3, seconds=1.0))
    log.append(events.reward_reported(Feedback(p.proposal_id, p.round, 0.1, 2.0, 1.9, 100, bytes(32)), TEACHER.peer_id))


class FakeCpm:
    def __init__(self) -> None:
        self.asked: list[Message] = []

    async def ask(self, message: Message) -> Message | None:
        self.asked.append(message)
        return None


def test_a_package_received_without_feedback_in_the_newest_round_is_unreported(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "a.log", STUDENT) as log:
        old = received(log, 1)  # a crash in round 1: the CPM closed that round long ago
        reported(log, received(log, 2))
        failed = received(log, 3)
        log.append(events.distillation(failed, loss_before=0, loss_after=0, steps=0, seconds=0, outcome="failed"))
        cut = received(log, 3)  # killed mid-distillation
    from_file = verify_file(tmp_path / "a.log").entries
    assert unreported_lessons(from_file) == [Unreported(cut.proposal_id, 3, TEACHER.peer_id)]
    assert old.proposal_id not in {u.proposal_id for u in unreported_lessons(from_file)}


async def test_report_unfinished_sends_a_failure_for_each_and_logs_it(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "a.log", STUDENT) as log:
        cut = received(log, 4)
    cpm, logged = FakeCpm(), []

    def on_event(name: str, **fields: Any) -> None:
        logged.append((name, fields))

    assert await report_unfinished(tmp_path / "a.log", cpm, on_event) == 1  # type: ignore[arg-type]
    assert cpm.asked == [Feedback.failure(cut.proposal_id, 4)]
    assert logged[0][0] == "unfinished-lesson-reported" and logged[0][1]["answer"] == "no answer"


async def test_no_log_yet_reports_nothing(tmp_path: Path) -> None:
    cpm = FakeCpm()
    assert await report_unfinished(tmp_path / "none.log", cpm, lambda *a, **k: None) == 0  # type: ignore[arg-type]
    assert cpm.asked == []
