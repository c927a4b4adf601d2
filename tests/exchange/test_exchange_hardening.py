"""Exchange hardening of issue 15: the order of the teacher's checks, and the log head a receipt carries."""

from __future__ import annotations

import time

import pytest

from knexa_node.exchange import errors
from knexa_node.exchange.errors import ExchangeError
from knexa_node.exchange.replay import ReplayCache
from knexa_node.exchange.sealing import CHUNK_SIZE
from knexa_node.exchange.states import TeacherState
from knexa_node.exchange.student import StudentSession
from knexa_node.exchange.teacher import TeacherSession
from knexa_node.privacy.budget import PrivacyBudget
from knexa_node.wire import ExchangeRequest, Receipt, open_envelope, seal_envelope

# X25519 points of low order: every shared secret with them is zero.
LOW_ORDER_KEYS = [bytes(32), bytes([1]) + bytes(31),
                  bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")]


@pytest.mark.parametrize("bad_key", LOW_ORDER_KEYS)
def test_teacher_refuses_an_unusable_student_key_before_budget_replay_and_work(cast, tmp_path, bad_key):
    policy = cast.policy(dp_enabled=True, dp_epsilon=1.0, dp_delta=1e-5)
    budget = PrivacyBudget.in_state_dir(tmp_path, total=10.0, per_peer=5.0)
    replay = ReplayCache()
    proposal = cast.proposal()
    teacher = TeacherSession(cast.teacher, policy, remote=cast.student.peer_id, current_round=3, now=time.time(),
                             replay=replay, budget=budget)
    request = seal_envelope(cast.student, ExchangeRequest(proposal=proposal, ephemeral_key=bad_key)).to_bytes()
    with pytest.raises(ExchangeError) as info:
        teacher.receive_request(request)  # the driver builds the package only after this returns
    assert info.value.code == errors.WRONG_RECIPIENT
    assert teacher.state is TeacherState.FAILED
    assert budget.spent_by(cast.student.peer_id) == 0.0
    # Not recorded as served: the same proposal with a usable key is still served.
    student = StudentSession(cast.student, cast.policy(), proposal_envelope=proposal, remote=cast.teacher.peer_id,
                             current_round=3, now=time.time())
    again = TeacherSession(cast.teacher, policy, remote=cast.student.peer_id, current_round=3, now=time.time(),
                           replay=replay, budget=budget)
    again.receive_request(student.request_frame())


def test_receipt_carries_the_students_log_head(cast):
    head = (5, bytes(range(32)))
    proposal = cast.proposal()
    student = StudentSession(cast.student, cast.policy(), proposal_envelope=proposal, remote=cast.teacher.peer_id,
                             current_round=3, now=time.time(), log_head=head)
    teacher = TeacherSession(cast.teacher, cast.policy(), remote=cast.student.peer_id, current_round=3, now=time.time(),
                             replay=ReplayCache())
    teacher.receive_request(student.request_frame())
    frames = list(teacher.package_frames(b"x" * (CHUNK_SIZE + 1)))
    student.receive_header(frames[0])
    student.receive_stream_header(frames[1])
    for frame in frames[2:]:
        student.receive_chunk(frame)
    _, receipt_frame = student.finish()
    receipt = teacher.receive_receipt(receipt_frame)
    assert (receipt.log_entries, receipt.log_head) == head
    envelope, opened = open_envelope(receipt_frame, expect=(Receipt,))
    assert envelope.sender == cast.student.peer_id and opened == receipt
