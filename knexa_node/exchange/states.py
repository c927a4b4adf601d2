"""Every state and transition of the two exchange sessions, as literal tables (h11's ``_state.py`` habit).

Everything that moves a :class:`~.teacher.TeacherSession` or a
:class:`~.student.StudentSession` from one state to the next is written here,
once; the sessions only name the event. An event the table does not allow in
the current state raises :class:`~.errors.ExchangeStateError` and leaves the
state as it was: that is a bug in the caller (a driver calling the session out
of order), never something a peer's bytes can cause, since the sessions are
driven strictly in protocol order.

``FAIL`` is legal in every state but ``DONE``: an exchange that ended well
cannot fail afterwards, and failing twice (the session records its own error,
then the driver marks the same failure) changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Generic, TypeVar

from knexa_node.exchange.errors import ExchangeStateError, Role


class TeacherState(Enum):
    AWAIT_REQUEST = "await-request"
    BUILD = "build"  # request and proposal accepted; the package is being built
    SENDING = "sending"  # header signed; chunks are being sealed and sent
    AWAIT_RECEIPT = "await-receipt"
    DONE = "done"
    FAILED = "failed"


class TeacherEvent(Enum):
    REQUEST = "request"  # receive_request accepted the request and its proposal
    PACKAGE = "package"  # package_frames spent the budget and signed the header
    FINAL_CHUNK = "final-chunk"  # the last sealed chunk is handed out
    RECEIPT = "receipt"  # receive_receipt accepted the student's receipt
    FAIL = "fail"


class StudentState(Enum):
    REQUEST = "request"
    AWAIT_HEADER = "await-header"
    AWAIT_STREAM_HEADER = "await-stream-header"
    RECEIVING = "receiving"
    VERIFIED = "verified"  # FINAL chunk opened, payload hash checked
    SENDING_RECEIPT = "sending-receipt"  # receipt signed, not yet delivered
    DONE = "done"
    FAILED = "failed"


class StudentEvent(Enum):
    REQUEST = "request"  # request_frame signed the request
    HEADER = "header"  # receive_header accepted the teacher-signed header
    STREAM_HEADER = "stream-header"
    CHUNK = "chunk"  # a chunk other than the last one opened
    FINAL_CHUNK = "final-chunk"  # the last chunk opened and the whole payload verified
    FINISH = "finish"  # the receipt is signed and handed to the driver
    RECEIPT_SENT = "receipt-sent"  # the driver delivered the receipt
    FAIL = "fail"


_T, _TE = TeacherState, TeacherEvent
TEACHER_TRANSITIONS: Mapping[TeacherState, Mapping[TeacherEvent, TeacherState]] = {
    _T.AWAIT_REQUEST: {_TE.REQUEST: _T.BUILD, _TE.FAIL: _T.FAILED},
    _T.BUILD: {_TE.PACKAGE: _T.SENDING, _TE.FAIL: _T.FAILED},
    _T.SENDING: {_TE.FINAL_CHUNK: _T.AWAIT_RECEIPT, _TE.FAIL: _T.FAILED},
    _T.AWAIT_RECEIPT: {_TE.RECEIPT: _T.DONE, _TE.FAIL: _T.FAILED},
    _T.DONE: {},
    _T.FAILED: {_TE.FAIL: _T.FAILED},
}

_S, _SE = StudentState, StudentEvent
STUDENT_TRANSITIONS: Mapping[StudentState, Mapping[StudentEvent, StudentState]] = {
    _S.REQUEST: {_SE.REQUEST: _S.AWAIT_HEADER, _SE.FAIL: _S.FAILED},
    _S.AWAIT_HEADER: {_SE.HEADER: _S.AWAIT_STREAM_HEADER, _SE.FAIL: _S.FAILED},
    _S.AWAIT_STREAM_HEADER: {_SE.STREAM_HEADER: _S.RECEIVING, _SE.FAIL: _S.FAILED},
    _S.RECEIVING: {_SE.CHUNK: _S.RECEIVING, _SE.FINAL_CHUNK: _S.VERIFIED, _SE.FAIL: _S.FAILED},
    _S.VERIFIED: {_SE.FINISH: _S.SENDING_RECEIPT, _SE.FAIL: _S.FAILED},
    _S.SENDING_RECEIPT: {_SE.RECEIPT_SENT: _S.DONE, _SE.FAIL: _S.FAILED},
    _S.DONE: {},
    _S.FAILED: {_SE.FAIL: _S.FAILED},
}

State = TypeVar("State", TeacherState, StudentState)
Event = TypeVar("Event", TeacherEvent, StudentEvent)


class Machine(Generic[State, Event]):
    """The state of one session and the one way to change it: an event its table allows."""

    def __init__(self, role: Role, table: Mapping[State, Mapping[Event, State]], initial: State) -> None:
        self.role = role
        self.table = table
        self.state = initial

    def allows(self, event: Event) -> bool:
        return event in self.table[self.state]

    def require(self, event: Event) -> None:
        """Raise :class:`ExchangeStateError` unless ``event`` may happen now (checked before any work)."""
        if event not in self.table[self.state]:
            raise ExchangeStateError(self.role, self.state.value, event.value)

    def fire(self, event: Event) -> State:
        self.require(event)
        self.state = self.table[self.state][event]
        return self.state


def teacher_machine() -> Machine[TeacherState, TeacherEvent]:
    return Machine("teacher", TEACHER_TRANSITIONS, TeacherState.AWAIT_REQUEST)


def student_machine() -> Machine[StudentState, StudentEvent]:
    return Machine("student", STUDENT_TRANSITIONS, StudentState.REQUEST)
