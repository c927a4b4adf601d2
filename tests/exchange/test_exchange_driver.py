"""The trio drivers over in-memory framed streams: every exchange ends in an explicit outcome."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

from knexa_node.exchange import errors
from knexa_node.exchange.driver import BuiltPackage, fetch_package, serve_exchange
from knexa_node.exchange.framed import TrioFramedStream
from knexa_node.exchange.replay import ReplayCache
from knexa_node.exchange.sealing import CHUNK_SIZE
from knexa_node.privacy.budget import PrivacyBudget
from knexa_node.wire import Receipt, open_envelope

PAYLOAD = os.urandom(3 * CHUNK_SIZE + 5)


class Builder:
    """Stands in for the learning engine: counts calls, returns a fixed payload."""

    def __init__(self, payload: bytes = PAYLOAD, epsilon: float = 0.0, fail: bool = False, hang: bool = False) -> None:
        self.payload, self.epsilon, self.fail, self.hang = payload, epsilon, fail, hang
        self.calls = 0
        self.requests: list = []

    async def __call__(self, proposal, request) -> BuiltPackage:
        self.calls += 1
        self.requests.append(request)
        if self.hang:
            await trio.sleep_forever()
        if self.fail:
            raise RuntimeError("model exploded")
        return BuiltPackage(self.payload, dp_epsilon=self.epsilon, redactions=1)


async def run_pair(cast, framed_pair, *, proposal=None, builder=None, teacher_kw=None, student_kw=None, student_peer=None,
                   wrap_teacher_side=None):
    teacher_end, student_end = framed_pair()
    if wrap_teacher_side:
        teacher_end = wrap_teacher_side(teacher_end)
    student_signer = student_peer or cast.student
    outcomes = {}
    teacher_kw = {"policy": cast.policy(), "replay": ReplayCache(), "current_round": 3, **(teacher_kw or {})}
    student_kw = {"policy": cast.policy(), "current_round": 3, **(student_kw or {})}

    async def teacher():
        outcomes["teacher"] = await serve_exchange(
            teacher_end, remote=student_signer.peer_id, signer=cast.teacher, build_package=builder or Builder(), **teacher_kw
        )

    async def student():
        outcomes["student"] = await fetch_package(
            student_end, remote=cast.teacher.peer_id, signer=student_signer,
            proposal_envelope=proposal or cast.proposal(), **student_kw
        )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(teacher)
            nursery.start_soon(student)
    return outcomes["teacher"], outcomes["student"]


async def test_exchange_completes_with_signed_evidence_on_both_sides(cast, framed_pair):
    teacher, student = await run_pair(cast, framed_pair)
    assert (teacher.status, student.status) == ("done", "done")
    assert student.payload == PAYLOAD
    assert teacher.payload_hash == student.payload_hash == hashlib.sha256(PAYLOAD).digest()
    assert teacher.receipt_envelope == student.receipt_envelope
    envelope, receipt = open_envelope(teacher.receipt_envelope, expect=(Receipt,))
    assert envelope.sender == cast.student.peer_id and receipt.payload_hash == teacher.payload_hash
    assert open_envelope(student.header_envelope)[0].sender == cast.teacher.peer_id
    assert student.redactions == 1 and teacher.payload is None


async def test_the_students_request_reaches_the_teachers_builder(cast, framed_pair):
    builder = Builder()
    await run_pair(cast, framed_pair, builder=builder)
    await run_pair(cast, framed_pair, builder=builder, student_kw={"categories": ("math", "string"), "budget": 7})
    untargeted, targeted = builder.requests
    assert (untargeted.categories, untargeted.budget) == ((), 0)
    assert (targeted.categories, targeted.budget) == (("math", "string"), 7)


async def test_non_member_is_closed_before_model_work_and_the_next_member_is_served(cast, framed_pair):
    builder, replay = Builder(), ReplayCache()
    proposal = cast.proposal(student=cast.outsider)
    teacher, outsider = await run_pair(
        cast, framed_pair, proposal=proposal, builder=builder, student_peer=cast.outsider,
        teacher_kw={"replay": replay}, student_kw={"policy": cast.policy(membership=cast.policy().membership.from_peer_ids([]))},
    )
    assert (teacher.status, teacher.code) == ("refused", errors.NON_MEMBER)
    assert outsider.code == f"{errors.REFUSED_BY_PEER}:{errors.NON_MEMBER}"
    assert builder.calls == 0 and len(replay) == 0
    teacher, student = await run_pair(cast, framed_pair, builder=builder, teacher_kw={"replay": replay})
    assert (teacher.status, student.status) == ("done", "done") and builder.calls == 1


async def test_replayed_proposal_is_refused_by_the_driver(cast, framed_pair):
    proposal, replay, builder = cast.proposal(), ReplayCache(), Builder()
    first = await run_pair(cast, framed_pair, proposal=proposal, builder=builder, teacher_kw={"replay": replay})
    teacher, student = await run_pair(cast, framed_pair, proposal=proposal, builder=builder, teacher_kw={"replay": replay})
    assert first[0].ok
    assert teacher.code == errors.REPLAYED_PROPOSAL and student.code.endswith(errors.REPLAYED_PROPOSAL)
    assert builder.calls == 1


async def test_student_cap_refuses_a_large_package_and_tells_the_teacher(cast, framed_pair):
    teacher, student = await run_pair(cast, framed_pair, student_kw={"policy": cast.policy(max_package_bytes=CHUNK_SIZE)})
    assert (student.status, student.code) == ("refused", errors.TOO_LARGE)
    assert teacher.code in (f"{errors.REFUSED_BY_PEER}:{errors.TOO_LARGE}", errors.STREAM_ERROR)
    assert student.payload is None


class FlipByte:
    """A network attacker on the teacher's sending side: flips one byte of frame number ``index``."""

    def __init__(self, inner, index: int) -> None:
        self.inner, self.index, self.sent = inner, index, 0

    async def send(self, data: bytes) -> None:
        if self.sent == self.index:
            data = data[:-1] + bytes([data[-1] ^ 0x80])
        self.sent += 1
        await self.inner.send(data)

    async def receive(self, max_size, timeout):
        return await self.inner.receive(max_size, timeout)

    async def close(self):
        await self.inner.close()


@pytest.mark.parametrize("index, code", [(0, errors.MALFORMED), (2, errors.TAMPERED), (4, errors.TAMPERED)])
async def test_tampering_in_transit_is_detected(cast, framed_pair, index, code):
    teacher, student = await run_pair(cast, framed_pair, wrap_teacher_side=lambda s: FlipByte(s, index))
    assert (student.status, student.code) == ("refused", code)
    assert student.payload is None
    assert teacher.status == "refused"


async def test_failing_build_becomes_an_outcome_not_a_crash(cast, framed_pair):
    teacher, student = await run_pair(cast, framed_pair, builder=Builder(fail=True))
    assert teacher.code == errors.BUILD_FAILED and "model exploded" in teacher.reason
    assert student.code == f"{errors.REFUSED_BY_PEER}:{errors.BUILD_FAILED}"


async def test_a_silent_teacher_times_out(cast, framed_pair, autojump_clock):
    teacher, student = await run_pair(
        cast, framed_pair, builder=Builder(hang=True),
        teacher_kw={"policy": cast.policy(timeout_s=20.0)}, student_kw={"policy": cast.policy(timeout_s=5.0)},
    )
    assert (student.status, student.code) == ("timed-out", errors.TIMEOUT)
    assert teacher.status == "timed-out"


async def test_budget_exhaustion_stops_exchanges(cast, framed_pair, tmp_path):
    policy = cast.policy(dp_enabled=True, dp_epsilon=1.0, dp_delta=1e-5)
    budget = PrivacyBudget.in_state_dir(tmp_path, total=2.0, per_peer=5.0)
    builder, replay = Builder(epsilon=1.0), ReplayCache()
    kw = {"policy": policy, "budget": budget, "replay": replay}
    results = [await run_pair(cast, framed_pair, builder=builder, teacher_kw=kw) for _ in range(3)]
    assert [t.status for t, _ in results] == ["done", "done", "refused"]
    teacher, student = results[2]
    assert teacher.code == errors.BUDGET_EXCEEDED and "total privacy budget" in teacher.reason
    assert student.code == f"{errors.REFUSED_BY_PEER}:{errors.BUDGET_EXCEEDED}"
    assert builder.calls == 2  # refused before any model work
    assert PrivacyBudget.in_state_dir(tmp_path, total=2.0, per_peer=5.0).total.epsilon == pytest.approx(2.0)
    assert results[0][1].dp_epsilon == 1.0


async def test_garbage_request_is_malformed(cast, framed_pair):
    teacher_end, student_end = framed_pair()
    builder = Builder()
    async with trio.open_nursery() as nursery:
        result = {}

        async def serve():
            result["o"] = await serve_exchange(teacher_end, remote=cast.student.peer_id, signer=cast.teacher,
                                               policy=cast.policy(), replay=ReplayCache(), build_package=builder,
                                               current_round=3)

        nursery.start_soon(serve)
        await student_end.send(b"\xc1 not msgpack")
        refusal = await student_end.receive(65536, 5)
    assert result["o"].code == errors.MALFORMED and builder.calls == 0
    assert open_envelope(refusal)[1].code == errors.MALFORMED


async def test_oversized_frame_is_refused_without_buffering_it(cast, framed_pair):
    teacher_end, student_end = framed_pair()
    async with trio.open_nursery() as nursery:
        result = {}

        async def serve():
            result["o"] = await serve_exchange(teacher_end, remote=cast.student.peer_id, signer=cast.teacher,
                                               policy=cast.policy(), replay=ReplayCache(), build_package=Builder(),
                                               current_round=3)

        nursery.start_soon(serve)
        await student_end._stream.send_all((10**9).to_bytes(4, "big"))  # announces a 1 GB control frame
    assert result["o"].code == errors.TOO_LARGE


async def test_framed_stream_over_a_closed_peer_is_a_stream_error(cast, framed_pair):
    teacher_end, student_end = framed_pair()
    await student_end.close()
    outcome = await serve_exchange(teacher_end, remote=cast.student.peer_id, signer=cast.teacher, policy=cast.policy(),
                                   replay=ReplayCache(), build_package=Builder(), current_round=3)
    assert outcome.code == errors.STREAM_ERROR


def test_framed_stream_type_is_a_framed_stream():
    assert all(hasattr(TrioFramedStream, name) for name in ("send", "receive", "close"))
