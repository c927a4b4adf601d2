"""The matchmaker against real learning agents, in one process, rounds in lock-step.

What the networked demo does, without the network: the same homes, models,
shards and agent settings (:mod:`knexa_lab.inprocess`), the same
profile vectors, the same :class:`RoundBook` (budget, protocol downgrade
between tokenizers) and the same policy objects, fed the same dev-set rewards.
What it leaves out: libp2p, sealing, signatures, the audit log, timing and
failures. It exists to measure policies on machines where daemons cannot run
(a GPU box without the network stack) and many seeds in little time; the
networked demo remains the system.

One round: every node trains locally, is evaluated and profiled; the policy
pairs; each student distils its teacher's package (built on the public
transfer set) and reports its reward; the policy learns from it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from knexa_cpm.policies import PolicyError, build_policy
from knexa_cpm.rounds import RoundBook, RoundSettings
from knexa_lab.inprocess import LocalNode, finish, measure, prepare_nodes
from knexa_lab.orchestrate import DemoResult
from knexa_lab.plan import DemoSettings
from knexa_node.wire import Profile

# Called with each node before round 1 and after the last round ("before", "after").
Checkpoint = Callable[[LocalNode, str], None]


def _profile(node: LocalNode, round_: int, point: dict[str, Any]) -> Profile:
    vector = node.agent.profile(pass1=point["pass1"], pass5=point["pass1"], val_loss=point["val_loss"],
                                dev_loss=point["dev_loss"])
    return Profile(round=round_, vector=tuple(float(x) for x in vector), model_type=node.agent.model_type,
                   tokenizer_id=node.agent.tokenizer_fingerprint(), addrs=())


def _exchange(teacher: LocalNode, student: LocalNode, protocol: str) -> float:
    package = teacher.agent.teacher_package(student.data.transfer, protocol=protocol)
    report = student.agent.distill(package.payload, student.data.transfer, dev=student.data.dev)
    teacher.as_teacher += 1
    teacher.bytes_sent += package.nbytes
    student.as_student += 1
    student.bytes_received += package.nbytes
    reward = report.reward_dev if report.reward_dev is not None else report.reward
    return float(reward)


def run_lockstep(workdir: Path, settings: DemoSettings, *, on_progress: Callable[[str], None] | None = None,
                 checkpoint: Checkpoint | None = None) -> DemoResult:
    started = time.monotonic()
    say = on_progress or (lambda message: None)
    layout, nodes = prepare_nodes(workdir, settings, say, state_name="agent-lockstep")
    by_peer = {node.peer_id: node for node in nodes}
    policy = build_policy(settings.policy, settings.seed)
    round_settings = RoundSettings(deadline_s=settings.round_deadline_s, proposal_ttl_s=settings.proposal_ttl_s)
    history: list[dict[str, Any]] = []
    rewards: list[float] = []
    updates = 0
    if checkpoint:
        for node in nodes:
            checkpoint(node, "before")
    for round_ in range(1, settings.rounds + 1):
        now = time.time()
        book = RoundBook(round_, now, round_settings, expected_members=len(nodes), members=frozenset(by_peer))
        for node in nodes:
            for _ in range(settings.epochs_per_round):
                node.agent.local_epoch()
            book.add_profile(node.peer_id, _profile(node, round_, measure(node, round_, "after-local")))
        pairings = policy.propose(book.profile_vectors(), book.budget(), round_)
        pairs = []
        for proposal in book.record_pairings(pairings, now):
            record = book.proposals[proposal.proposal_id]
            teacher, student = by_peer[proposal.teacher], by_peer[proposal.student]
            reward = _exchange(teacher, student, proposal.protocol)
            try:
                policy.validate_feedback(record.pairing, reward)
                policy.feedback(record.pairing, reward)
                updates += 1
            except PolicyError as exc:  # the service would refuse it: the policy does not learn from it
                say(f"round {round_}: feedback refused by the policy: {exc}")
            entry = {"round": round_, "teacher": teacher.name, "student": student.name, "reward": reward,
                     "protocol": proposal.protocol}
            student.rewards.append(entry)
            rewards.append(reward)
            pairs.append(f"{teacher.name}->{student.name}")
        history.append({"round": round_, "pairs": pairs})
        for node in nodes:
            node.agent.finish_round()
        say(f"round {round_}/{settings.rounds}: {', '.join(pairs) or 'no pairs'}")
    status = {"rounds_closed": settings.rounds, "counters": {"feedback": len(rewards), "proposals": len(rewards)},
              "bandit_updates": updates, "mean_reward": sum(rewards) / len(rewards) if rewards else None,
              "history": history}
    result = DemoResult(settings, workdir, "lockstep", status)
    finish(result, layout, nodes, audit_note="lock-step run: no network exchange, no log")
    if checkpoint:  # entries hold each node's ``extra`` dict itself, so what this adds shows in the result
        for node in nodes:
            checkpoint(node, "after")
    result.wall_s = time.monotonic() - started
    result.phases_s = {"lockstep": result.wall_s}
    return result
