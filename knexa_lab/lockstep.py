"""The matchmaker against real learning agents, in one process, rounds in lock-step.

What the networked demo does, without the network: the same homes, models,
shards and agent settings (:mod:`knexa_lab.inprocess`), the same
profile vectors, the same :class:`RoundBook` (budget, protocol downgrade
between tokenizers) and the same policy objects, fed the same dev-set rewards.
What it leaves out: libp2p, sealing, signatures, the audit log, timing and
failures. It exists to measure policies on machines where daemons cannot run
(a GPU box without the network stack) and many seeds in little time; the
networked demo remains the system.

One round: every node trains locally, is evaluated and profiled, and
measures its Pass@1 per category on the public dev set (its competence,
passed to the policy beside the profile); the policy proposes up to
``teachers_per_student`` teachers per student (and as many students per
teacher); every teacher builds one package per student, answering that
student's weak categories first (``targeted``) and, with ``verify ==
"tests"``, only with answers that pass the public tests; then every student
distils from all its packages in one phase (:meth:`Agent.distill_many`) and
reports one reward per teacher; the policy learns from them; every student
is measured again right after (``after-exchange``: did the exchange leave it
worse?), except in the last round, whose measurement is the final one. Teachers build
before anyone distils, so a node may teach and learn in the same round.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from knexa_cpm.policies import NO_PAIRING, PolicyError, build_policy
from knexa_cpm.rounds import RoundBook, RoundSettings
from knexa_lab.inprocess import LocalNode, finish, measure, prepare_nodes
from knexa_lab.orchestrate import DemoResult
from knexa_lab.plan import DemoSettings
from knexa_lab.study import AFTER_EXCHANGE
from knexa_node.daemon.lessons import reported_reward
from knexa_node.learn.agent import DistillReport, ExchangeRequest
from knexa_node.wire import Profile

# Called with each node before round 1 and after the last round ("before", "after").
Checkpoint = Callable[[LocalNode, str], None]


def _profile(node: LocalNode, round_: int, point: dict[str, Any]) -> Profile:
    vector = node.agent.profile(pass1=point["pass1"], pass5=point["pass1"], val_loss=point["val_loss"],
                                dev_loss=point["dev_loss"])
    return Profile(round=round_, vector=tuple(float(x) for x in vector), model_type=node.agent.model_type,
                   tokenizer_id=node.agent.tokenizer_fingerprint(), addrs=())


def _exchanges(settings: DemoSettings, jobs: list[tuple[Any, LocalNode, LocalNode, str]]
               ) -> list[tuple[Any, LocalNode, LocalNode, DistillReport]]:
    """Every teacher builds its packages, then every student distils from all of its own in one phase."""
    inbox: dict[str, list[tuple[Any, LocalNode, bytes]]] = {}
    for record, teacher, student, protocol in jobs:
        request = (student.agent.exchange_request(student.competence) if settings.targeted and student.competence
                   else ExchangeRequest(budget=settings.exchange_budget))
        package = teacher.agent.teacher_package(student.data.transfer, protocol=protocol, request=request)
        teacher.as_teacher += 1
        teacher.bytes_sent += package.nbytes
        inbox.setdefault(student.peer_id, []).append((record, teacher, package.payload))
    done = []
    for student_id, parcels in inbox.items():
        student = next(job[2] for job in jobs if job[2].peer_id == student_id)
        report = student.agent.distill_many([(teacher.name, payload) for _, teacher, payload in parcels],
                                            student.data.transfer, dev=student.data.dev,
                                            dev_competence=student.competence or None)
        student.as_student += len(parcels)
        student.bytes_received += sum(len(payload) for *_, payload in parcels)
        student.exchange_log.append({
            "teachers": [teacher.name for _, teacher, _ in parcels], "steps": report.steps,
            "dev_pass1_pre": report.teachers[0].dev_pass1_pre, "dev_pass1_post": report.teachers[0].dev_pass1_post,
            "items_used": sum(r.items_used for r in report.teachers),
            "items_failed": sum(r.items_failed for r in report.teachers),
            "claims_failed": sum(r.claims_failed for r in report.teachers), "replay_steps": report.replay_steps,
            "kept": report.kept, "seconds": round(report.seconds, 2)})
        done.extend((record, teacher, student, r) for (record, teacher, _), r in zip(parcels, report.teachers))
    return done


def run_lockstep(workdir: Path, settings: DemoSettings, *, on_progress: Callable[[str], None] | None = None,
                 checkpoint: Checkpoint | None = None) -> DemoResult:
    started = time.monotonic()
    say = on_progress or (lambda message: None)
    layout, nodes = prepare_nodes(workdir, settings, say, state_name="agent-lockstep")
    by_peer = {node.peer_id: node for node in nodes}
    policy = build_policy(settings.policy, settings.seed, competence=True,
                          budget_categories=settings.package_categories())
    per_node = max(1, settings.teachers_per_student)
    round_settings = RoundSettings(deadline_s=settings.round_deadline_s, proposal_ttl_s=settings.proposal_ttl_s,
                                   teachers_per_student=per_node)
    history: list[dict[str, Any]] = []
    rewards: list[float] = []
    updates = 0
    if checkpoint:
        for node in nodes:
            checkpoint(node, "before")
    pairs_off = policy.name == NO_PAIRING
    seconds = {"local": 0.0, "measure": 0.0, "exchange": 0.0}
    for round_ in range(1, settings.rounds + 1):
        now = time.time()
        book = RoundBook(round_, now, round_settings, expected_members=len(nodes), members=frozenset(by_peer))
        for node in nodes:
            mark = time.monotonic()
            for _ in range(settings.epochs_per_round):
                node.agent.local_epoch()
            seconds["local"] += time.monotonic() - mark
            mark = time.monotonic()
            book.add_profile(node.peer_id, _profile(node, round_, measure(node, round_, "after-local")))
            # Only what the policy or a request reads: local-only skips the dev-set decoding.
            node.competence = {} if pairs_off else node.agent.competence(node.data.dev)
            seconds["measure"] += time.monotonic() - mark
        pairings = policy.propose(book.profile_vectors(), book.budget(), round_, per_node=per_node,
                                  competence={n.peer_id: n.competence for n in nodes if n.competence})
        mark = time.monotonic()
        jobs = []
        for proposal in book.record_pairings(pairings, now):
            record = book.proposals[proposal.proposal_id]
            jobs.append((record, by_peer[proposal.teacher], by_peer[proposal.student], proposal.protocol))
        pairs = []
        for record, teacher, student, report in _exchanges(settings, jobs):
            reward = reported_reward(report, settings.reward)[0]  # as a networked student reports it
            try:
                policy.validate_feedback(record.pairing, reward)
                policy.feedback(record.pairing, reward)
                updates += 1
            except PolicyError as exc:  # the service would refuse it: the policy does not learn from it
                say(f"round {round_}: feedback refused by the policy: {exc}")
            entry = {"round": round_, "teacher": teacher.name, "student": student.name, "reward": reward,
                     "protocol": record.pairing.protocol, "reward_eq3": report.reward_dev,
                     "reward_eq3_private": report.reward,
                     "reward_covered": report.reward_covered, "items_received": report.items_received,
                     "items_used": report.items_used, "items_failed": report.items_failed,
                     "claims_failed": report.claims_failed, "items_known": report.items_known,
                     "covered": list(report.covered), "kept": report.kept}
            student.rewards.append(entry)
            rewards.append(reward)
            pairs.append(f"{teacher.name}->{student.name}")
        seconds["exchange"] += time.monotonic() - mark
        if round_ < settings.rounds:  # did the exchange leave the student worse? (the last one is "final")
            mark = time.monotonic()
            for student in {job[2].peer_id: job[2] for job in jobs}.values():
                measure(student, round_, AFTER_EXCHANGE)
            seconds["measure"] += time.monotonic() - mark
        history.append({"round": round_, "pairs": pairs})
        for node in nodes:
            node.agent.finish_round()
        say(f"round {round_}/{settings.rounds}: {', '.join(pairs) or 'no pairs'}")
    status = {"rounds_closed": settings.rounds, "counters": {"feedback": len(rewards), "proposals": len(rewards)},
              "bandit_updates": updates, "mean_reward": sum(rewards) / len(rewards) if rewards else None,
              "history": history}
    result = DemoResult(settings, workdir, "lockstep", status)
    finish(result, layout, nodes, audit_note="lock-step run: no network exchange, no log")
    for node, entry in zip(nodes, result.nodes):
        entry["exchanges"] = node.exchange_log
    if checkpoint:  # entries hold each node's ``extra`` dict itself, so what this adds shows in the result
        for node in nodes:
            checkpoint(node, "after")
    result.wall_s = time.monotonic() - started
    result.phases_s = {"lockstep": result.wall_s, **{f"lockstep_{k}": v for k, v in seconds.items()}}
    return result
