"""The teacher and student state machines, driven by hand in memory (no I/O, real keys)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

import pytest

from knexa_node.exchange import errors
from knexa_node.exchange.errors import ExchangeError
from knexa_node.exchange.replay import ReplayCache
from knexa_node.crypto import Signer
from knexa_node.exchange.sealing import CHUNK_SIZE, EphemeralKey, SealingError, student_package_key, teacher_package_key
from knexa_node.exchange.states import StudentState, TeacherState
from knexa_node.exchange.student import StudentSession
from knexa_node.exchange.teacher import TeacherSession
from knexa_node.privacy.budget import PrivacyBudget
from knexa_node.wire import ExchangeRequest, Receipt, seal_envelope

PAYLOAD = os.urandom(2 * CHUNK_SIZE + 123)


def sessions(cast, proposal=None, *, teacher_policy=None, student_policy=None, replay=None, budget=None, round=3):
    proposal = proposal or cast.proposal(round=round)
    student = StudentSession(
        cast.student, student_policy or cast.policy(), proposal_envelope=proposal, remote=cast.teacher.peer_id,
        current_round=round, now=time.time(),
    )
    teacher = TeacherSession(
        cast.teacher, teacher_policy or cast.policy(), remote=cast.student.peer_id, current_round=round, now=time.time(),
        replay=replay if replay is not None else ReplayCache(), budget=budget,
    )
    return teacher, student


def teacher_frames(teacher, student, payload=PAYLOAD, **kwargs):
    teacher.receive_request(student.request_frame())
    return list(teacher.package_frames(payload, **kwargs))


def deliver(student, frames):
    """Feed teacher frames to the student; return the payload and receipt once FINAL arrives."""
    student.receive_header(frames[0])
    student.receive_stream_header(frames[1])
    for frame in frames[2:]:
        if student.receive_chunk(frame):
            return student.finish()
    raise ExchangeError(errors.TAMPERED, "no FINAL chunk")


def test_round_trip_multi_chunk_payload(cast):
    teacher, student = sessions(cast)
    frames = teacher_frames(teacher, student, dp_epsilon=0.0, redactions=2)
    assert len(frames) == 2 + 3  # header, stream header, three chunks
    payload, receipt = deliver(student, frames)
    assert payload == PAYLOAD
    assert student.header.payload_hash == hashlib.sha256(PAYLOAD).digest() and student.header.redactions == 2
    assert teacher.receive_receipt(receipt).payload_hash == student.header.payload_hash
    student.receipt_sent()
    assert teacher.state is TeacherState.DONE and student.state is StudentState.DONE


def test_empty_payload_round_trip(cast):
    teacher, student = sessions(cast)
    payload, receipt = deliver(student, teacher_frames(teacher, student, b""))
    assert payload == b""
    teacher.receive_receipt(receipt)


def test_both_sides_derive_one_key_and_nobody_else_does(cast):
    binding = dict(proposal_id=os.urandom(16), round=1, teacher=cast.teacher.peer_id, student=cast.student.peer_id, protocol="text")
    t_eph, s_eph = EphemeralKey(), EphemeralKey()
    teacher_key = teacher_package_key(t_eph, student_ephemeral=s_eph.public, **binding)
    student_key = student_package_key(s_eph, cast.student, teacher_ephemeral=t_eph.public, **binding)
    assert teacher_key.fingerprint() == student_key.fingerprint()
    # Same ephemeral secret, wrong identity: the outsider (or the CPM) cannot open it.
    outsider_key = student_package_key(s_eph, cast.outsider, teacher_ephemeral=t_eph.public, **binding)
    assert outsider_key.fingerprint() != teacher_key.fingerprint()
    # Every bound field changes the key.
    for field, value in [("round", 2), ("protocol", "logits"), ("proposal_id", os.urandom(16))]:
        other = student_package_key(s_eph, cast.student, teacher_ephemeral=t_eph.public, **{**binding, field: value})
        assert other.fingerprint() != teacher_key.fingerprint(), field


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_a_flipped_byte_anywhere_in_the_sealed_stream_is_tampered(cast, index):
    teacher, student = sessions(cast)
    frames = teacher_frames(teacher, student)
    frame = bytearray(frames[index])
    frame[len(frame) // 2] ^= 0x01
    frames[index] = bytes(frame)
    with pytest.raises(ExchangeError) as info:
        deliver(student, frames)
    assert info.value.code == errors.TAMPERED
    assert student.state is StudentState.FAILED


@pytest.mark.parametrize("edit", ["drop-middle", "swap", "truncate", "duplicate"])
def test_chunk_order_and_end_are_authenticated(cast, edit):
    teacher, student = sessions(cast)
    frames = teacher_frames(teacher, student)
    head, chunks = frames[:2], frames[2:]
    chunks = {
        "drop-middle": [chunks[0], chunks[2]],
        "swap": [chunks[1], chunks[0], chunks[2]],
        "truncate": chunks[:2],
        "duplicate": [chunks[0], chunks[0], chunks[1], chunks[2]],
    }[edit]
    with pytest.raises(ExchangeError) as info:
        deliver(student, head + chunks)
    assert info.value.code == errors.TAMPERED


def test_opener_refuses_data_after_the_final_chunk():
    key = teacher_package_key(EphemeralKey(), student_ephemeral=EphemeralKey().public, proposal_id=bytes(16), round=1,
                              teacher=Signer.generate().peer_id, student=Signer.generate().peer_id, protocol="text")
    sealer = key.sealer(b"header digest")
    sealed = [sealer.seal(b"a", final=False), sealer.seal(b"b", final=True)]
    opener = key.opener(sealer.stream_header, b"header digest")
    assert [opener.open(c) for c in sealed] == [(b"a", False), (b"b", True)]
    with pytest.raises(SealingError):
        opener.open(sealed[1])
    with pytest.raises(SealingError):  # other associated data: chunks cannot move under another header
        key.opener(sealer.stream_header, b"other header").open(sealed[0])


def test_header_with_a_flipped_byte_fails_its_signature(cast):
    teacher, student = sessions(cast)
    frames = teacher_frames(teacher, student)
    header = bytearray(frames[0])
    header[-70] ^= 0x01  # inside the body, under the teacher's signature
    with pytest.raises(ExchangeError) as info:
        student.receive_header(bytes(header))
    assert info.value.code == errors.MALFORMED


def test_header_for_another_student_is_wrong_recipient(cast):
    # The teacher (honest or not) prepares a package for the outsider; our student refuses its header.
    proposal = cast.proposal(student=cast.outsider)
    teacher = TeacherSession(cast.teacher, cast.policy(membership=cast.policy().membership.from_peer_ids([])),
                             remote=cast.outsider.peer_id, current_round=3, now=time.time(), replay=ReplayCache())
    outsider = StudentSession(cast.outsider, cast.policy(), proposal_envelope=proposal, remote=cast.teacher.peer_id,
                              current_round=3, now=time.time())
    teacher.receive_request(outsider.request_frame())
    frames = list(teacher.package_frames(PAYLOAD))
    _, student = sessions(cast)
    student.request_frame()
    with pytest.raises(ExchangeError) as info:
        student.receive_header(frames[0])
    assert info.value.code == errors.WRONG_RECIPIENT


def test_header_for_another_proposal_is_bad_header(cast):
    teacher, other_student = sessions(cast)
    frames = teacher_frames(teacher, other_student)
    _, student = sessions(cast)  # same peers, a different proposal
    student.request_frame()
    with pytest.raises(ExchangeError) as info:
        student.receive_header(frames[0])
    assert info.value.code == errors.BAD_HEADER


def test_package_over_the_cap_is_refused_before_any_chunk(cast):
    teacher, student = sessions(cast, student_policy=cast.policy(max_package_bytes=CHUNK_SIZE))
    frames = teacher_frames(teacher, student)
    with pytest.raises(ExchangeError) as info:
        student.receive_header(frames[0])
    assert info.value.code == errors.TOO_LARGE


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda c: c.proposal(signer=c.outsider), errors.FORGED_PROPOSAL),
        (lambda c: c.proposal(signer=c.teacher), errors.FORGED_PROPOSAL),
        (lambda c: b"\x93garbage", errors.FORGED_PROPOSAL),
        (lambda c: c.proposal(expires=time.time() - 60), errors.EXPIRED_PROPOSAL),
        (lambda c: c.proposal(round=2), errors.WRONG_ROUND),
        (lambda c: c.proposal(teacher=c.outsider), errors.WRONG_RECIPIENT),
        (lambda c: c.proposal(student=c.outsider), errors.WRONG_RECIPIENT),
    ],
    ids=["other-key", "teacher-signed", "garbage", "expired", "old-round", "other-teacher", "other-student"],
)
def test_teacher_refuses_bad_proposals(cast, make, code):
    teacher = TeacherSession(cast.teacher, cast.policy(), remote=cast.student.peer_id, current_round=3, now=time.time(), replay=ReplayCache())
    # The request is honestly signed by the student; only the proposal inside is bad.
    from_student = seal_envelope(cast.student, _request(make(cast))).to_bytes()
    with pytest.raises(ExchangeError) as info:
        teacher.receive_request(from_student)
    assert info.value.code == code
    assert teacher.state is TeacherState.FAILED


def _request(proposal: bytes) -> ExchangeRequest:
    return ExchangeRequest(proposal=proposal, ephemeral_key=EphemeralKey().public)


def test_student_refuses_a_forged_proposal_before_contacting_anyone(cast):
    with pytest.raises(ExchangeError) as info:
        StudentSession(cast.student, cast.policy(), proposal_envelope=cast.proposal(signer=cast.outsider),
                       remote=cast.teacher.peer_id, current_round=3, now=time.time())
    assert info.value.code == errors.FORGED_PROPOSAL


def test_request_relayed_by_another_peer_is_refused(cast):
    teacher = TeacherSession(cast.teacher, cast.policy(), remote=cast.outsider.peer_id, current_round=3,
                             now=time.time(), replay=ReplayCache())
    teacher.policy = cast.policy(membership=cast.policy().membership.from_peer_ids([]))
    student = StudentSession(cast.student, cast.policy(), proposal_envelope=cast.proposal(), remote=cast.teacher.peer_id,
                             current_round=3, now=time.time())
    with pytest.raises(ExchangeError) as info:
        teacher.receive_request(student.request_frame())  # the student's request, arriving on the outsider's stream
    assert info.value.code == errors.WRONG_RECIPIENT


def test_non_member_is_refused_before_reading(cast):
    teacher = TeacherSession(cast.teacher, cast.policy(), remote=cast.outsider.peer_id, current_round=3,
                             now=time.time(), replay=ReplayCache())
    with pytest.raises(ExchangeError) as info:
        teacher.check_remote()
    assert info.value.code == errors.NON_MEMBER


def test_replayed_proposal_is_refused_also_after_a_restart(cast, tmp_path):
    proposal = cast.proposal()
    first, student = sessions(cast, proposal, replay=ReplayCache.in_state_dir(tmp_path))
    first.receive_request(student.request_frame())
    again, student = sessions(cast, proposal, replay=ReplayCache.in_state_dir(tmp_path))  # reopened from disk
    with pytest.raises(ExchangeError) as info:
        again.receive_request(student.request_frame())
    assert info.value.code == errors.REPLAYED_PROPOSAL
    fresh, student = sessions(cast, replay=ReplayCache.in_state_dir(tmp_path))
    fresh.receive_request(student.request_frame())  # another proposal is still served


def test_forged_or_mismatched_receipt_is_refused(cast):
    teacher, student = sessions(cast)
    deliver(student, teacher_frames(teacher, student))
    header = student.header
    wrong = Receipt(proposal_id=header.proposal_id, round=header.round, teacher=header.teacher, student=header.student,
                    payload_hash=bytes(32), payload_size=header.payload_size)
    with pytest.raises(ExchangeError) as info:
        teacher.receive_receipt(seal_envelope(cast.student, wrong).to_bytes())
    assert info.value.code == errors.BAD_RECEIPT
    teacher, student = sessions(cast)
    _, receipt = deliver(student, teacher_frames(teacher, student))
    header = student.header
    fields = [f.name for f in dataclasses.fields(Receipt) if hasattr(header, f.name)]
    forged = seal_envelope(cast.outsider, Receipt(**{f: getattr(header, f) for f in fields}))
    with pytest.raises(ExchangeError) as info:
        teacher.receive_receipt(forged.to_bytes())
    assert info.value.code == errors.BAD_RECEIPT


def test_dp_budget_is_checked_before_work_and_spent_per_package(cast, tmp_path):
    policy = cast.policy(dp_enabled=True, dp_epsilon=1.0, dp_delta=1e-5)
    budget = PrivacyBudget.in_state_dir(tmp_path, total=10.0, per_peer=2.5)
    for _ in range(2):
        teacher, student = sessions(cast, teacher_policy=policy, budget=budget)
        deliver(student, teacher_frames(teacher, student, dp_epsilon=1.0))
    assert budget.spent_by(cast.student.peer_id) == pytest.approx(2.0)
    teacher, student = sessions(cast, teacher_policy=policy, budget=PrivacyBudget.in_state_dir(tmp_path, total=10.0, per_peer=2.5))
    with pytest.raises(ExchangeError) as info:
        teacher.receive_request(student.request_frame())
    assert info.value.code == errors.BUDGET_EXCEEDED
    assert "per-peer" in info.value.reason


def test_dp_enabled_but_package_without_noise_is_not_sent(cast):
    teacher, student = sessions(cast, teacher_policy=cast.policy(dp_enabled=True, dp_epsilon=1.0))
    with pytest.raises(ExchangeError) as info:
        teacher_frames(teacher, student, dp_epsilon=0.0)
    assert info.value.code == errors.BUILD_FAILED
