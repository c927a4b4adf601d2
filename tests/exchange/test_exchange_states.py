"""The sessions' transition tables, checked against real sessions (real keys, real frames) in memory.

Each test drives a session with named operations. The table decides what must
happen: an operation whose event the table allows in the current state must
succeed and land in the table's next state; any other must raise
ExchangeStateError and leave the state as it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from knexa_node.exchange.errors import ExchangeStateError
from knexa_node.exchange.replay import ReplayCache
from knexa_node.exchange.sealing import CHUNK_SIZE
from knexa_node.exchange.states import (
    STUDENT_TRANSITIONS,
    TEACHER_TRANSITIONS,
    StudentEvent,
    StudentState,
    TeacherEvent,
    TeacherState,
)
from knexa_node.exchange.student import StudentSession
from knexa_node.exchange.teacher import TeacherSession
from knexa_node.wire import Receipt, seal_envelope

PAYLOAD = os.urandom(CHUNK_SIZE + 7)  # two chunks: one CHUNK, one FINAL_CHUNK
TABLE_RUN = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def new_teacher(cast) -> TeacherSession:
    return TeacherSession(cast.teacher, cast.policy(), remote=cast.student.peer_id, current_round=3, now=time.time(),
                          replay=ReplayCache())


def new_student(cast) -> StudentSession:
    return StudentSession(cast.student, cast.policy(), proposal_envelope=cast.proposal(), remote=cast.teacher.peer_id,
                          current_round=3, now=time.time())


class TeacherDriver:
    """A teacher session and well-formed input for every operation (from a real student)."""

    def __init__(self, cast) -> None:
        self.cast = cast
        self.session = new_teacher(cast)
        self.request = new_student(cast).request_frame()
        self.frames: Iterator[bytes] | None = None

    def receipt(self) -> bytes:
        header = self.session.header
        if header is None:  # no package yet: RECEIPT cannot be legal, and the state check comes before parsing
            return b""
        return seal_envelope(self.cast.student, Receipt(
            proposal_id=header.proposal_id, round=header.round, teacher=header.teacher, student=header.student,
            payload_hash=header.payload_hash, payload_size=header.payload_size)).to_bytes()

    def package(self) -> None:
        self.frames = self.session.package_frames(PAYLOAD)

    def drain(self) -> None:
        frames, self.frames = self.frames, None  # a generator runs once
        assert frames is not None
        for _ in frames:
            pass

    def operations(self) -> dict[str, tuple[TeacherEvent, Callable[[], Any]]]:
        return {
            "request": (TeacherEvent.REQUEST, lambda: self.session.receive_request(self.request)),
            "package": (TeacherEvent.PACKAGE, self.package),
            "drain": (TeacherEvent.FINAL_CHUNK, self.drain),
            "receipt": (TeacherEvent.RECEIPT, lambda: self.session.receive_receipt(self.receipt())),
            "abort": (TeacherEvent.FAIL, self.session.abort),
        }

    def available(self, name: str) -> bool:
        return name != "drain" or self.frames is not None  # only the frames package() returned, once


class StudentDriver:
    """A student session and well-formed input for every operation (from a real teacher, once requested)."""

    def __init__(self, cast) -> None:
        self.cast = cast
        self.session = new_student(cast)
        self.frames: list[bytes] = []
        self.next_chunk = 2

    def request(self) -> None:
        frame = self.session.request_frame()
        teacher = TeacherSession(self.cast.teacher, self.cast.policy(), remote=self.cast.student.peer_id, current_round=3,
                                 now=time.time(), replay=ReplayCache())
        teacher.receive_request(frame)
        self.frames = list(teacher.package_frames(PAYLOAD))

    def frame(self, index: int) -> bytes:
        return self.frames[index] if index < len(self.frames) else b""

    def chunk(self) -> None:
        self.session.receive_chunk(self.frame(self.next_chunk))
        self.next_chunk += 1

    def chunk_event(self) -> StudentEvent:
        return StudentEvent.FINAL_CHUNK if self.next_chunk == len(self.frames) - 1 else StudentEvent.CHUNK

    def operations(self) -> dict[str, tuple[StudentEvent, Callable[[], Any]]]:
        return {
            "request": (StudentEvent.REQUEST, self.request),
            "header": (StudentEvent.HEADER, lambda: self.session.receive_header(self.frame(0))),
            "stream-header": (StudentEvent.STREAM_HEADER, lambda: self.session.receive_stream_header(self.frame(1))),
            "chunk": (self.chunk_event(), self.chunk),
            "finish": (StudentEvent.FINISH, self.session.finish),
            "receipt-sent": (StudentEvent.RECEIPT_SENT, self.session.receipt_sent),
            "abort": (StudentEvent.FAIL, self.session.abort),
        }

    def available(self, name: str) -> bool:
        return True


def step(driver, table, name: str) -> None:
    """One operation, checked against the table."""
    event, run = driver.operations()[name]
    before = driver.session.state
    if event in table[before]:
        run()
        assert driver.session.state is table[before][event], (name, before)
    else:
        with pytest.raises(ExchangeStateError) as info:
            run()
        # receive_chunk asks for CHUNK: CHUNK and FINAL_CHUNK leave the same state, the frame decides which.
        asked = StudentEvent.CHUNK if event is StudentEvent.FINAL_CHUNK else event
        assert (info.value.state, info.value.event) == (before.value, asked.value)
        assert driver.session.state is before, name


TEACHER_HAPPY = ["request", "package", "drain", "receipt"]
STUDENT_HAPPY = ["request", "header", "stream-header", "chunk", "chunk", "finish", "receipt-sent"]


def test_the_happy_paths_end_done(cast):
    teacher, student = TeacherDriver(cast), StudentDriver(cast)
    for name in TEACHER_HAPPY:
        step(teacher, TEACHER_TRANSITIONS, name)
    for name in STUDENT_HAPPY:
        step(student, STUDENT_TRANSITIONS, name)
    assert teacher.session.state is TeacherState.DONE and student.session.state is StudentState.DONE


@pytest.mark.parametrize("role, happy", [("teacher", TEACHER_HAPPY), ("student", STUDENT_HAPPY)])
def test_every_legal_path_and_every_illegal_event(cast, role, happy):
    """Every prefix of the happy path, then every operation; then the same after an abort.

    Together these reach every state of the table and try every event in it.
    """
    make, table = (TeacherDriver, TEACHER_TRANSITIONS) if role == "teacher" else (StudentDriver, STUDENT_TRANSITIONS)
    reached = set()
    for prefix in range(len(happy) + 1):
        for then_abort in (False, True):
            probe = make(cast)
            for name in happy[:prefix]:
                step(probe, table, name)
            if then_abort:
                step(probe, table, "abort")
            reached.add(probe.session.state)
            for name in probe.operations():
                if name == "abort":
                    continue  # tried below, on a fresh copy: it would end the probe
                trial = make(cast)
                for earlier in happy[:prefix] + (["abort"] if then_abort else []):
                    step(trial, table, earlier)
                if trial.available(name):
                    step(trial, table, name)
            step(probe, table, "abort")  # legal everywhere but DONE, where the step checks it raises
    assert reached == set(table), set(table) - reached


def test_the_tables_are_closed():
    """Every target is a state of the same table, and only DONE is a dead end."""
    for table, done in ((TEACHER_TRANSITIONS, TeacherState.DONE), (STUDENT_TRANSITIONS, StudentState.DONE)):
        for state, moves in table.items():
            assert set(moves.values()) <= set(table)
            assert bool(moves) == (state is not done)


def random_walk(driver, table, data, steps: int) -> None:
    """Mostly legal operations, so deep states are reached, with illegal ones mixed in at every depth."""
    names = list(driver.operations())
    for _ in range(steps):
        legal = [n for n in names if n != "abort" and driver.operations()[n][0] in table[driver.session.state]
                 and driver.available(n)]
        pool = legal if legal and data.draw(st.integers(0, 3), label="legal?") else names
        name = data.draw(st.sampled_from(pool), label="operation")
        if driver.available(name):
            step(driver, table, name)
    event(f"ended in {driver.session.state.value}")  # --hypothesis-show-statistics: deep states are reached


@TABLE_RUN
@given(data=st.data(), steps=st.integers(0, 12))
def test_teacher_follows_its_table_for_any_order(cast, data, steps):
    random_walk(TeacherDriver(cast), TEACHER_TRANSITIONS, data, steps)


@TABLE_RUN
@given(data=st.data(), steps=st.integers(0, 14))
def test_student_follows_its_table_for_any_order(cast, data, steps):
    random_walk(StudentDriver(cast), STUDENT_TRANSITIONS, data, steps)


def test_a_frame_generator_kept_after_an_abort_cannot_revive_the_session(cast):
    driver = TeacherDriver(cast)
    for name in ["request", "package", "abort"]:
        step(driver, TEACHER_TRANSITIONS, name)
    with pytest.raises(ExchangeStateError):
        driver.drain()
    assert driver.session.state is TeacherState.FAILED
