"""The cross-check part of the common verdict, on real signed logs (no lab needed): which gaps a kill explains."""

from __future__ import annotations

import sys
from pathlib import Path

from knexa_node.audit import AuditLog, Event, events, verify_file
from knexa_node.crypto import Signer
from netlab_consortium import cross_check_all

sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "audit"))
from audit_fixtures import StepClock, log_exchange, make_exchange  # noqa: E402

CPM, TEACHER, STUDENT = Signer(bytes([1] * 32)), Signer(bytes([2] * 32)), Signer(bytes([3] * 32))


def logs(tmp_path: Path, *, student_only: list[Event]) -> dict[str, object]:
    """A complete exchange in round 1, then entries only the student wrote."""
    clock = StepClock()
    with AuditLog.open(tmp_path / "t.log", TEACHER, clock=clock) as t, AuditLog.open(tmp_path / "s.log", STUDENT, clock=clock) as s:
        log_exchange(t, s, make_exchange(CPM, TEACHER, STUDENT, 1))
        for event in student_only:
            s.append(event)
    return {"teacher": verify_file(tmp_path / "t.log"), "student": verify_file(tmp_path / "s.log")}


def test_logs_that_agree_have_no_gap(tmp_path: Path) -> None:
    assert cross_check_all(logs(tmp_path, student_only=[])) == ([], [])  # type: ignore[arg-type]


def test_a_received_package_the_teacher_never_logged_is_a_problem_unless_the_teacher_was_killed(tmp_path: Path) -> None:
    ex = make_exchange(CPM, TEACHER, STUDENT, 2)
    views = logs(tmp_path, student_only=[events.package_received(ex.header_envelope, ex.header)])
    problems, explained = cross_check_all(views)  # type: ignore[arg-type]
    assert len(problems) == 1 and "missing" in problems[0] and explained == []
    problems, explained = cross_check_all(views, {"teacher"})  # type: ignore[arg-type]
    assert problems == [] and len(explained) == 1
    problems, _ = cross_check_all(views, {"student"})  # type: ignore[arg-type]
    assert len(problems) == 1  # the student logged it: its own kill explains nothing


def test_a_one_sided_failure_is_explained(tmp_path: Path) -> None:
    refused = make_exchange(CPM, TEACHER, STUDENT, 2).proposal
    event = Event(kind="proposal-refused", round=2, outcome="refused", proposal_id=refused.proposal_id,
                  peer=TEACHER.peer_id, protocol="text", metrics={"code": "stream-error", "role": "student"})
    problems, explained = cross_check_all(logs(tmp_path, student_only=[event]))  # type: ignore[arg-type]
    assert problems == [] and len(explained) == 1 and "missing" in explained[0]
