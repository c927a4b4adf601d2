"""Exchanges between real daemons over libp2p on loopback: package, audit logs, refusals, guardrail, checkpoints."""

from __future__ import annotations

import pytest
import trio
from wiring_helpers import (
    CONSORTIUM,
    TRANSFER,
    NodeSpec,
    consortium,
    make_agent,
    private_texts,
    proposal,
)
from wiring_stubs import BlockedAgent, StubAgent

from knexa_node.audit import AuditLog, cross_check, verify_file
from knexa_node.audit.log import log_path
from knexa_node.crypto import Signer, sha256
from knexa_node.learn.package import decode_package
from knexa_node.net.protocols import CHECKPOINTS, topic
from knexa_node.testing import wait_until
from knexa_node.wire import Feedback

pytestmark = pytest.mark.slow

AWS_KEY = "AKIA" + "Q3EXAMPLE7KEYZ2B"


def _kinds(path) -> list[tuple[str, str]]:
    view = verify_file(path)
    assert view.report.ok, view.report
    return [(e.event.kind, e.event.outcome) for e in view.entries]


async def test_full_exchange_over_libp2p_with_distillation_audited_on_both_sides(tiny_model, tmp_path) -> None:
    cpm = Signer.generate()
    teacher_agent = make_agent(tiny_model, tmp_path / "ta", shard=0)
    student_agent = make_agent(tiny_model, tmp_path / "sa", shard=1)
    specs = [NodeSpec(teacher_agent, private_texts(0)), NodeSpec(student_agent, private_texts(1))]
    with trio.fail_after(60):
        async with consortium(tmp_path, cpm, specs) as (teacher, student):
            checkpoints = topic(CONSORTIUM, CHECKPOINTS)
            # Gossip subscriptions must be known both ways before a checkpoint can reach the other side.
            await wait_until(lambda: all(n.daemon.net.gossip.topics()[checkpoints]["peers"] >= 1
                                         for n in (teacher, student)), timeout=15)
            envelope, message = proposal(cpm, teacher.peer_id, student.peer_id, protocol="text")
            outcome = await student.service.fetch(envelope, message)
            assert outcome.ok, outcome
            package = decode_package(outcome.payload, max_size=len(outcome.payload) + 1)
            assert package.kind == "text" and set(package.texts) == {p.task_id for p in TRANSFER}
            report = await student.service.agent_call(lambda agent: agent.distill(outcome.payload, TRANSFER))
            await student.service.record_distillation(outcome, report)
            feedback = Feedback(proposal_id=message.proposal_id, round=message.round, reward=report.reward,
                                loss_before=report.loss_pre, loss_after=report.loss_post,
                                package_bytes=len(outcome.payload), receipt_hash=sha256(outcome.receipt_envelope))
            await student.service.record_reward(message, feedback)
            # Each side published a checkpoint after the exchange and stored the other's.
            await wait_until(lambda: teacher.service.stats.checkpoints_received >= 1
                             and student.service.stats.checkpoints_received >= 1, timeout=15)
            t_status, s_status = teacher.daemon.status()["exchanges"], student.daemon.status()["exchanges"]
            with pytest.raises(ValueError):  # one distillation entry per fetched exchange
                await student.service.record_distillation(outcome, report)
    assert t_status["counts"]["teacher"] == {"done": 1} and s_status["counts"]["student"] == {"done": 1}
    assert (t_status["served"], t_status["fetched"], s_status["served"], s_status["fetched"]) == (1, 0, 0, 1)
    assert t_status["bytes_sent"] >= outcome.payload_size and s_status["bytes_received"] >= outcome.payload_size
    assert t_status["epsilon_spent"] == 0.0 and t_status["audit"]["checkpoints_stored"] == 2
    assert s_status["pending_distillations"] == 0
    assert any("status=done" in line for line in teacher.logged("exchange"))
    assert _kinds(log_path(teacher.daemon.home)) == [("package-sent", "ok")]
    assert _kinds(log_path(student.daemon.home)) == [("package-received", "ok"), ("distillation", "ok"),
                                                    ("reward-reported", "ok")]
    t_view, s_view = verify_file(log_path(teacher.daemon.home)), verify_file(log_path(student.daemon.home))
    sent, received = t_view.entries[0].event, s_view.entries[0].event
    assert received.receipt == outcome.header_envelope  # the teacher-signed header is the student's proof
    assert sent.package_hash == received.package_hash == outcome.payload_hash
    result = cross_check(t_view, s_view)
    assert result.ok and result.common == 1, result.to_json()
    # Both logs verify against the checkpoints the *other* node kept.
    for mine, other in ((teacher, student), (student, teacher)):
        kept = other.service.checkpoints.for_peer(mine.peer_id)
        assert kept and verify_file(log_path(mine.daemon.home), checkpoints=kept).report.ok


async def test_non_member_and_replay_refused_over_the_network_then_dp_exchange_served(tiny_model, tmp_path) -> None:
    cpm = Signer.generate()
    agent = make_agent(tiny_model, tmp_path / "ta", shard=0)
    # Node 2 knows the teacher, but the teacher's allow-list does not name node 2.
    specs = [NodeSpec(agent, private_texts(0), members=[0, 1], dp=True), NodeSpec(StubAgent(), private_texts(1)),
             NodeSpec(StubAgent(), [])]
    with trio.fail_after(60):
        async with consortium(tmp_path, cpm, specs) as (teacher, student, outsider):
            envelope, message = proposal(cpm, teacher.peer_id, outsider.peer_id, protocol="logits")
            refused = await outsider.service.fetch(envelope, message)
            assert refused.status == "refused" and refused.code == "refused-by-peer:non-member", refused
            envelope, message = proposal(cpm, teacher.peer_id, student.peer_id, protocol="logits")
            first = await student.service.fetch(envelope, message)
            replayed = await student.service.fetch(envelope, message)
            assert first.ok and first.dp_epsilon == 2.0, first
            assert replayed.code == "refused-by-peer:replayed-proposal", replayed
            envelope, message = proposal(cpm, teacher.peer_id, student.peer_id, protocol="logits")
            after = await student.service.fetch(envelope, message)
            assert after.ok, after
            # A forged proposal (not the configured CPM's key) never reaches the teacher's model.
            forged_envelope, forged = proposal(Signer.generate(), teacher.peer_id, student.peer_id)
            forged_outcome = await student.service.fetch(forged_envelope, forged)
            assert forged_outcome.status == "refused" and forged_outcome.code == "forged-proposal"
            # The teacher records its outcome once the receipt is in, possibly after the student returned.
            await wait_until(lambda: sum(teacher.service.stats.by_outcome["teacher"].values()) >= 4, timeout=10)
            status = teacher.daemon.status()["exchanges"]
    assert status["counts"]["teacher"] == {"done": 2, "refused": 2}
    assert status["codes"]["teacher"] == {"non-member": 1, "replayed-proposal": 1}
    assert status["epsilon_spent"] == pytest.approx(4.0) and status["budget"]["peers"][student.peer_id]["releases"] == 2
    package = decode_package(after.payload, max_size=len(after.payload) + 1)
    assert package.kind == "logits" and package.logits
    kinds = _kinds(log_path(teacher.daemon.home))
    assert kinds.count(("package-sent", "ok")) == 2 and kinds.count(("dp-epsilon-spent", "ok")) == 2
    assert kinds.count(("proposal-refused", "refused")) == 2
    assert _kinds(log_path(outsider.daemon.home)) == [("proposal-refused", "refused")]
    student_kinds = _kinds(log_path(student.daemon.home))
    assert student_kinds.count(("package-received", "ok")) == 2 and student_kinds.count(("proposal-refused", "refused")) == 2


async def test_planted_secret_is_redacted_before_it_leaves(tmp_path) -> None:
    cpm = Signer.generate()
    secret_answer = {TRANSFER[0].task_id: f"    return '{AWS_KEY}'\n"}
    specs = [NodeSpec(StubAgent(secret_answer), private_texts(0)), NodeSpec(StubAgent(), private_texts(1))]
    with trio.fail_after(40):
        async with consortium(tmp_path, cpm, specs) as (teacher, student):
            envelope, message = proposal(cpm, teacher.peer_id, student.peer_id, protocol="text")
            outcome = await student.service.fetch(envelope, message)
            await wait_until(lambda: teacher.service.stats.by_outcome["teacher"]["done"] >= 1, timeout=10)
            status = teacher.daemon.status()["exchanges"]
    assert outcome.ok and outcome.redactions == 1, outcome
    assert AWS_KEY.encode() not in outcome.payload
    package = decode_package(outcome.payload, max_size=len(outcome.payload) + 1)
    assert "[REDACTED:aws-access-key]" in package.texts[TRANSFER[0].task_id]
    assert status["guardrail_redactions"] == 1 and status["guardrail_by_kind"] == {"aws-access-key": 1}
    assert _kinds(log_path(teacher.daemon.home)) == [("package-sent", "ok"), ("guardrail-redactions", "ok")]


async def test_installed_service_runs_inside_the_daemon_and_releases_the_audit_log(tmp_path) -> None:
    specs = [NodeSpec(StubAgent(), [])]
    async with consortium(tmp_path, Signer.generate(), specs, start=False) as (node,):
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.daemon.run)
                await wait_until(lambda: "ready" in node.daemon.log.out.getvalue(), timeout=15)
                assert "service-started service=exchanges" in node.events.getvalue()
                assert node.daemon.status()["exchanges"]["counts"] == {"teacher": {}, "student": {}}
                node.daemon.stop()
        # The daemon's shutdown closed the service: the audit log's writer lock is free again.
        with AuditLog.open_home(node.daemon.home, node.daemon.signer) as reopened:
            assert reopened.count == 0


async def test_a_stuck_teacher_ends_in_timed_out_outcomes_on_both_sides(tmp_path) -> None:
    cpm = Signer.generate()
    stuck = BlockedAgent()
    specs = [NodeSpec(stuck, [], timeout_s=1.0), NodeSpec(StubAgent(), [], timeout_s=1.0)]
    with trio.fail_after(30):
        async with consortium(tmp_path, cpm, specs) as (teacher, student):
            envelope, message = proposal(cpm, teacher.peer_id, student.peer_id)
            outcome = await student.service.fetch(envelope, message)
            assert stuck.started.is_set()
            stuck.release.set()  # the model work returns late; the teacher's deadline has passed
            await wait_until(lambda: sum(teacher.service.stats.by_outcome["teacher"].values()) >= 1, timeout=10)
            status = teacher.daemon.status()["exchanges"]
    assert outcome.status == "timed-out" and outcome.code == "timeout", outcome
    assert status["counts"]["teacher"] == {"timed-out": 1} and status["codes"]["teacher"] == {"timeout": 1}
    assert _kinds(log_path(teacher.daemon.home)) == [("proposal-refused", "timed-out")]
    assert _kinds(log_path(student.daemon.home)) == [("proposal-refused", "timed-out")]
    assert any("status=timed-out" in line for line in student.logged("exchange"))


async def test_a_targeted_request_crosses_libp2p_and_shapes_the_package(tmp_path) -> None:
    cpm = Signer.generate()
    teacher_agent = StubAgent()
    wanted, held = TRANSFER[-1].category, TRANSFER[-2]  # the student holds an answer to its other weak category
    specs = [NodeSpec(teacher_agent, []), NodeSpec(StubAgent(), [])]
    with trio.fail_after(60):
        async with consortium(tmp_path, cpm, specs) as (teacher, student):
            envelope, message = proposal(cpm, teacher.peer_id, student.peer_id, protocol="text")
            outcome = await student.service.fetch(envelope, message, categories=(held.category, wanted), budget=1,
                                                  held=(held.task_id,))
    assert outcome.ok, outcome
    asked = teacher_agent.requests[0]
    assert (asked.categories, asked.budget, asked.held) == ((held.category, wanted), 1, (held.task_id,))
    package = decode_package(outcome.payload, max_size=len(outcome.payload) + 1)
    assert list(package.texts) == [next(p.task_id for p in TRANSFER if p.category == wanted)]
    served = teacher.logged("request-received")
    assert served and wanted in served[0] and "held=1" in served[0]
