"""Lessons a crash left unreported, found in the audit log and reported to the CPM as failed when the node starts.

A student killed between receiving a package and sending its feedback (kill -9
mid-distillation) restarts knowing nothing of that exchange, while the CPM
keeps the round open for its feedback until the proposal expires
(``cpm.proposal_ttl_s``, 15 minutes by default): the whole consortium waits.
The audit log, written durably before the distillation began, still says a
package arrived and that no feedback left. Reporting the lesson as failed (no
reward: the distillation never finished, so it measures nothing) lets the CPM
close the proposal and the round go on.

Only the newest round in the log is looked at: older rounds were closed by the
CPM long ago (it would refuse the report as ``unknown-proposal``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from knexa_node.audit import AuditError, Entry, verify_file
from knexa_node.audit.entry import DISTILLATION, OK, PACKAGE_RECEIVED, REWARD_REPORTED
from knexa_node.daemon.cpm_link import CpmLink, describe
from knexa_node.wire import Feedback


@dataclass(frozen=True)
class Unreported:
    proposal_id: bytes
    round: int
    teacher: str


def unreported_lessons(entries: Iterable[Entry]) -> list[Unreported]:
    """Packages received in the log's newest round whose lesson never ended (no reward sent, no failed distillation).

    A failed distillation is reported as a failure right after its entry, without an entry of its own: it counts
    as ended.
    """
    received: dict[bytes, Unreported] = {}
    ended: set[bytes] = set()
    newest = 0
    for entry in entries:
        event = entry.event
        newest = max(newest, event.round)
        if event.kind == PACKAGE_RECEIVED and event.outcome == OK and event.proposal_id:
            received[event.proposal_id] = Unreported(event.proposal_id, event.round, event.peer)
        elif event.kind == REWARD_REPORTED or (event.kind == DISTILLATION and event.outcome != OK):
            ended.add(event.proposal_id)
    return [lesson for pid, lesson in received.items() if pid not in ended and lesson.round == newest]


async def report_unfinished(log_file: Path, cpm: CpmLink, on_event: Callable[..., None]) -> int:
    """Report every unreported lesson of ``log_file`` to the CPM as failed; returns how many were found."""
    try:
        entries = verify_file(log_file, signatures=False).entries  # the node's own log: structure and chain suffice
    except AuditError:  # no log yet (first start) or unreadable: the exchange service reports that itself
        return 0
    lessons = unreported_lessons(entries)
    for lesson in lessons:
        answer = await cpm.ask(Feedback.failure(lesson.proposal_id, lesson.round))
        on_event("unfinished-lesson-reported", round=lesson.round, teacher=lesson.teacher,
                 proposal_id=lesson.proposal_id.hex(), answer=describe(answer))
    return len(lessons)
