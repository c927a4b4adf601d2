"""A student's feedback survives a partition from the CPM: retried until answered or over, counted once.

The node and a real :class:`knexa_cpm.service.CpmService` talk over
:class:`knexa_node.testing.MemoryNetwork` on trio's mock clock (the set-up of
``test_participant_driver``); the partition is the CPM's request handler
taken away (a refused dial) or an answer dropped after the CPM handled the
request (a lost ``Ack``). The real network's cut and heal is
``integration/test_netlab_scenarios.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from knexa_node.crypto import Signer
from knexa_node.daemon import cpm_link
from knexa_node.daemon.cpm_link import CpmLink
from knexa_node.daemon.round_machine import Step
from knexa_node.net.errors import PeerUnreachable
from knexa_node.net.protocols import CPM_PROTOCOL
from knexa_node.wire import Ack, Feedback, ProposalQuery, open_envelope, seal_envelope

from test_participant_driver import Consortium, settle, start


def student_of(c: Consortium) -> Any:
    return next(p for p in c.participants if any(x.role == "student" for x in p.machine.exchanges.values()))


def lesson(participant: Any) -> Any:
    return next(x for x in participant.machine.exchanges.values() if x.role == "student")


def sent_feedback(participant: Any) -> list[dict[str, Any]]:
    return [e for e in participant.host.events() if e["event"] == "feedback-sent"]


async def round_paired_and_student_distilling(nursery: trio.Nursery, tmp_path: Any) -> tuple[Consortium, Any]:
    c = await start(nursery, tmp_path)
    await settle(c, lambda: all(p.machine.phase == "waiting" and p.learner.agent for p in c.participants))
    await c.service.open_round()
    await settle(c, lambda: any(x.role == "student" and x.step is Step.DISTILLING
                                for p in c.participants for x in p.machine.exchanges.values()))
    return c, student_of(c)


async def test_feedback_lost_in_a_partition_is_delivered_after_the_heal(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        c, student = await round_paired_and_student_distilling(nursery, tmp_path)
        handler = c.cpm.net.handlers.pop(CPM_PROTOCOL)  # the CPM is cut off: every request fails
        cut_at = trio.current_time()
        # Longer than the few tries of a profile or a poll (0.5 + 1 + 2 + 4 s), shorter than the proposal's life.
        await settle(c, lambda: trio.current_time() > cut_at + 120)
        assert lesson(student).step is Step.REPORTING and sent_feedback(student) == []
        c.cpm.net.handlers[CPM_PROTOCOL] = handler  # healed
        await settle(c, lambda: c.service.status()["rounds_closed"] == 1)
        assert c.service.history[-1]["closed_by"] == "feedback"
        assert c.service.status()["counters"]["feedback"] == 1
        assert [e["answer"] for e in sent_feedback(student)] == ["ok"]
        assert [outcome for _, outcome in student.lessons.exchanges.rewards] == ["ok"]
        tries = [e["attempt"] for e in student.host.events() if e["event"] == "cpm-unreachable"]
        assert max(tries) > cpm_link.CPM_RETRIES
        nursery.cancel_scope.cancel()


async def test_a_retry_after_a_lost_ack_is_acknowledged_and_counted_once(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        c, student = await round_paired_and_student_distilling(nursery, tmp_path)
        lost: list[bytes] = []

        async def loses_the_first_feedback_ack(stream: Any, remote: str) -> None:
            data = await stream.receive()
            answer = c.service.handle_request(data, remote)  # handled, journaled...
            if not lost and isinstance(open_envelope(data)[1], Feedback):
                lost.append(data)  # ...but the Ack never arrives: the student times out and retries
                return
            from_cpm = seal_envelope(c.cpm.signer, answer).to_bytes()
            await stream.send(from_cpm)

        c.cpm.net.handlers[CPM_PROTOCOL] = loses_the_first_feedback_ack
        reporting = lesson(student)
        await settle(c, lambda: c.service.status()["rounds_closed"] == 1 and reporting.step is Step.DONE)
        assert lost, "no feedback went through the lossy handler"
        status = c.service.status()
        assert status["counters"]["feedback"] == 1 and status["counters"]["duplicates"] == 1
        assert status["bandit_updates"] == 1 and len(status["feedback"]) == 1
        assert c.service.history[-1]["closed_by"] == "feedback"
        assert [e["answer"] for e in sent_feedback(student)] == ["ok"]
        assert student.lessons.rewards[0]["accepted"] is True
        nursery.cancel_scope.cancel()


async def test_pending_feedback_does_not_hold_the_next_round_and_ends_when_the_cpm_says_so(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        c, student = await round_paired_and_student_distilling(nursery, tmp_path)
        handler = c.cpm.net.handlers.pop(CPM_PROTOCOL)
        await settle(c, lambda: lesson(student).step is Step.REPORTING)
        pending = lesson(student)
        await c.service.open_round()  # the operator moves on: round 1 is superseded while the feedback waits
        await settle(c, lambda: student.machine.round == 2 and student.machine.state.value in ("training", "profiling"))
        assert pending.step is Step.REPORTING  # still retrying, in the background of round 2
        c.cpm.net.handlers[CPM_PROTOCOL] = handler
        await settle(c, lambda: pending.step is Step.DONE)
        assert [e["answer"] for e in sent_feedback(student)] == ["refused unknown-proposal: no such proposal in the open round"]
        assert [outcome for _, outcome in student.lessons.exchanges.rewards] == ["refused"]
        assert c.service.history[0]["closed_by"] == "superseded"
        nursery.cancel_scope.cancel()


class Unreachable:
    """A requester whose CPM never answers; counts the tries."""

    def __init__(self) -> None:
        self.tries = 0

    async def request(self, peer_id: str, protocol: str, payload: bytes, *, timeout: float = 30.0,
                      max_size: int | None = None) -> bytes:
        self.tries += 1
        raise PeerUnreachable("cut off")


@pytest.mark.parametrize("until", [None, 100.0])
async def test_a_request_gives_up_after_its_tries_or_at_its_time_and_says_so(until, autojump_clock):
    net, events = Unreachable(), []
    link = CpmLink(net, Signer.generate(), "cpm", lambda name, **fields: events.append((name, fields)),
                   clock=trio.current_time)
    start_at = trio.current_time()
    with trio.fail_after(1000):
        answer = await link.ask(ProposalQuery(round=1), until=None if until is None else start_at + until)
    elapsed = trio.current_time() - start_at
    assert answer is None and net.tries == len(events)
    if until is None:
        assert net.tries == cpm_link.CPM_RETRIES and elapsed < 10  # 0.5 + 1 + 2 + 4 s between five tries
    else:
        assert elapsed == pytest.approx(until) and net.tries > cpm_link.CPM_RETRIES  # the last try at ``until``
        gaps = cpm_link.MAX_BACKOFF_S
        assert net.tries <= cpm_link.CPM_RETRIES + until / gaps + 1


async def test_an_answer_ends_the_tries_even_a_refusal(autojump_clock):
    cpm = Signer.generate()

    class RefusesOnce:
        async def request(self, peer_id: str, protocol: str, payload: bytes, **kwargs: Any) -> bytes:
            envelope = open_envelope(payload)[0]
            return seal_envelope(cpm, Ack(envelope.digest, False, "expired", "too late")).to_bytes()

    link = CpmLink(RefusesOnce(), Signer.generate(), cpm.peer_id, lambda *a, **k: None, clock=trio.current_time)
    answer = await link.ask(ProposalQuery(round=1), until=trio.current_time() + 600)
    assert isinstance(answer, Ack) and answer.code == "expired"
