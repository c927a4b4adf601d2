"""The CPM service in memory: real keys, real envelopes, a real state store; no network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from knexa_cpm.service import CpmService
from knexa_node.config import Config
from knexa_node.crypto import Signer
from knexa_node.profile import ProfileInputs, build_profile
from knexa_node.wire import (
    Ack,
    Feedback,
    PairingProposal,
    Profile,
    ProposalList,
    ProposalQuery,
    open_envelope,
    seal_envelope,
)

CPM = Signer(bytes([9] * 32))
NODES = [Signer(bytes([i + 1] * 32)) for i in range(4)]
OUTSIDER = Signer(bytes([99] * 32))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_service(tmp_path: Path, clock: Clock, *, policy: str = "knexa", members: list[str] | None = None,
                 teachers_per_student: int = 1) -> tuple[CpmService, list]:
    config = Config()
    config.cpm.teachers_per_student = teachers_per_student
    config.consortium.members = [n.peer_id for n in NODES] if members is None else members
    config.cpm.round_deadline_s = 30.0
    config.cpm.proposal_ttl_s = 60.0
    published: list[tuple[str, bytes]] = []

    async def publish(topic: str, data: bytes) -> None:
        published.append((topic, data))

    service = CpmService(CPM, config, tmp_path / "cpm", publish=publish, on_event=lambda *a, **k: None,
                         policy_name=policy, clock=clock)
    return service, published


def profile_of(index: int, round_: int) -> Profile:
    counts = np.zeros(12)
    counts[index * 3:(index + 1) * 3] = 10.0
    vector = build_profile(ProfileInputs("llama" if index % 2 else "gpt2", {
        "pass1": 0.1 * index, "pass5": 0.2, "val_loss": 0.5, "dev_loss": 0.6, "capacity": 0.5, "data_size": 0.4,
    }, category_counts=counts))
    return Profile(round=round_, vector=tuple(vector), model_type="llama", tokenizer_id="t", addrs=())


def assert_same_state(actual: object, expected: object) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected)
        for key in expected:
            assert_same_state(actual[key], expected[key])
    elif isinstance(expected, np.ndarray):
        np.testing.assert_allclose(actual, expected)
    else:
        assert actual == expected


def ask(service: CpmService, signer: Signer, message: object, remote: str | None = None) -> object:
    answer = service.handle_request(seal_envelope(signer, message).to_bytes(), remote or signer.peer_id)
    return answer


async def test_round_profiles_pairs_feedback_and_replay(tmp_path: Path) -> None:
    clock = Clock()
    service, published = make_service(tmp_path, clock)
    await service.open_round()
    assert service.last_round == 1 and published[0][0].endswith("/rounds")
    for i, node in enumerate(NODES):
        answer = ask(service, node, profile_of(i, 1))
        assert isinstance(answer, Ack) and answer.ok, answer
    await service.tick()  # quorum reached: pairs
    proposals = [open_envelope(data)[1] for topic, data in published if topic.endswith("/proposals")]
    assert len(proposals) == 2
    assert all(isinstance(p, PairingProposal) and p.round == 1 for p in proposals)
    assert len({p.teacher for p in proposals} | {p.student for p in proposals}) == 4  # disjoint pairs

    first = proposals[0]
    student = next(n for n in NODES if n.peer_id == first.student)
    teacher = next(n for n in NODES if n.peer_id == first.teacher)
    listed = ask(service, student, ProposalQuery(round=1))
    assert isinstance(listed, ProposalList) and listed.phase == "paired"
    assert [open_envelope(e)[1] for e in listed.proposals] == [first]

    feedback = Feedback(first.proposal_id, 1, 0.3, 2.0, 1.7, 1000, bytes(range(32)))
    refused = ask(service, teacher, feedback)
    assert isinstance(refused, Ack) and not refused.ok and refused.code == "not-student"
    accepted = ask(service, student, feedback)
    assert isinstance(accepted, Ack) and accepted.ok
    repeated = ask(service, student, feedback)  # a retry after a lost Ack: answered again, counted once
    assert isinstance(repeated, Ack) and repeated.ok and repeated.code == "duplicate"
    changed = ask(service, student, Feedback(first.proposal_id, 1, 0.9, 2.0, 1.1, 1000, bytes(range(32))))
    assert isinstance(changed, Ack) and not changed.ok and changed.code == "replay"
    assert service.store.seq == 1

    second = proposals[1]
    other = next(n for n in NODES if n.peer_id == second.student)
    failure = Feedback.failure(second.proposal_id, 1)
    assert ask(service, other, failure).ok
    assert service.store.seq == 1  # a failed exchange never reaches the bandit
    await service.tick()
    assert service.round_closed() and service.history[-1]["closed_by"] == "feedback"
    assert ask(service, other, failure).code == "duplicate"
    status = service.status()
    assert status["counters"]["feedback"] == 1 and status["counters"]["failed_exchanges"] == 1
    assert status["counters"]["duplicates"] == 2 and status["feedback"] == service.feedback_log[:1]
    assert status["bandit_updates"] == 1 and status["rounds_closed"] == 1
    assert first.teacher in dict(status["trust"]["top"]) | dict(status["trust"]["bottom"])


async def paired_round(service: CpmService, published: list) -> list[PairingProposal]:
    """Open round 1 with every node's profile, pair it, and return the proposals it published."""
    await service.open_round()
    for i, node in enumerate(NODES):
        assert ask(service, node, profile_of(i, 1)).ok
    await service.tick()
    return [open_envelope(data)[1] for topic, data in published if topic.endswith("/proposals")]


async def first_pairing(service: CpmService, published: list) -> tuple[PairingProposal, Any]:
    """:func:`paired_round`'s first proposal and that proposal's student."""
    proposal = (await paired_round(service, published))[0]
    return proposal, next(n for n in NODES if n.peer_id == proposal.student)


async def test_several_teachers_per_student(tmp_path: Path) -> None:
    """c = 2: every student gets two teachers and every teacher two students, one proposal per directed pair."""
    clock = Clock()
    service, published = make_service(tmp_path, clock, policy="random", teachers_per_student=2)
    proposals = await paired_round(service, published)
    pairs = [(p.teacher, p.student) for p in proposals]
    assert len(pairs) == len(set(pairs)) == 2 * len(NODES)
    for node in NODES:
        assert sum(student == node.peer_id for _, student in pairs) == 2
        assert sum(teacher == node.peer_id for teacher, _ in pairs) == 2
    student = NODES[0]
    listed = ask(service, student, ProposalQuery(round=1))
    assert isinstance(listed, ProposalList)
    assert sum(open_envelope(e)[1].student == student.peer_id for e in listed.proposals) == 2


async def test_competence_in_profiles_reaches_the_policy(tmp_path: Path) -> None:
    """Profiles with competence (and one older node without) pair; the knexa policy sees every competence sent."""
    clock = Clock()
    service, _ = make_service(tmp_path, clock)
    assert service.policy.use_competence
    seen: list = []
    propose = service.policy.propose

    def spy(*args, **kwargs):
        seen.append(kwargs.get("competence"))
        return propose(*args, **kwargs)

    service.policy.propose = spy
    await service.open_round()
    for i, node in enumerate(NODES):
        plain = profile_of(i, 1)
        sent = plain if i == 3 else Profile.with_competence(
            {"math": 0.2 * i, "string": 1.0 - 0.2 * i}, round=1, vector=plain.vector, model_type="llama",
            tokenizer_id="t", addrs=())
        assert ask(service, node, sent).ok
    await service.tick()
    assert service.book is not None and service.book.phase == "paired" and len(service.book.proposals) == 2
    assert seen == [{NODES[i].peer_id: {"string": 1.0 - 0.2 * i, "math": 0.2 * i} for i in range(3)}]


async def test_refusals(tmp_path: Path) -> None:
    clock = Clock()
    service, _ = make_service(tmp_path, clock)
    assert ask(service, NODES[0], profile_of(0, 1)).code == "no-round"
    await service.open_round()
    assert ask(service, OUTSIDER, profile_of(0, 1)).code == "not-member"
    assert ask(service, NODES[0], profile_of(0, 7)).code == "wrong-round"
    assert ask(service, NODES[0], profile_of(0, 1), remote=NODES[1].peer_id).code == "sender-mismatch"
    bad = service.handle_request(b"\x93garbage", NODES[0].peer_id)
    assert isinstance(bad, Ack) and not bad.ok
    broken = Profile(round=1, vector=(5.0,) * 32, model_type="x", tokenizer_id="t", addrs=())
    assert ask(service, NODES[0], broken).code == "bad-profile"


async def test_deadline_pairs_with_two_and_closes_on_expiry(tmp_path: Path) -> None:
    clock = Clock()
    service, published = make_service(tmp_path, clock, policy="random")
    await service.open_round()
    ask(service, NODES[0], profile_of(0, 1))
    await service.tick()
    assert service.book is not None and service.book.phase == "collecting"
    ask(service, NODES[1], profile_of(1, 1))
    clock.now += 31
    await service.tick()
    assert service.book.phase == "paired" and len(service.book.proposals) == 1
    clock.now += 61
    await service.tick()
    assert service.round_closed() and service.history[-1]["closed_by"] == "expired"


async def test_acknowledged_feedback_survives_reopen(tmp_path: Path) -> None:
    clock = Clock()
    service, published = make_service(tmp_path, clock, policy="linucb")
    proposal, student = await first_pairing(service, published)
    assert ask(service, student, Feedback(proposal.proposal_id, 1, 0.5, 1.0, 0.5, 10, bytes(32 * [1]))).ok
    state_before = service.policy.state_dict()
    service.close()  # no checkpoint after the feedback: only the journal holds it
    reopened, _ = make_service(tmp_path, clock, policy="linucb")
    assert reopened.store.seq == 1 and reopened.last_round == 1
    assert_same_state(reopened.policy.state_dict(), state_before)
    assert state_before["feedback_count"] == 1
    await reopened.open_round()
    assert reopened.last_round == 2


async def test_failed_verified_claims_count_against_the_teacher_and_survive_reopen(tmp_path: Path) -> None:
    """Two students report the same reward on the same teacher; the one whose sandbox failed verified claims lowers its trust more."""
    trusts = {}
    for claims in (0, 3):
        clock = Clock()
        where = tmp_path / f"claims-{claims}"
        service, published = make_service(where, clock, policy="knexa", teachers_per_student=2)
        proposals = await paired_round(service, published)
        for proposal in proposals:
            student = next(n for n in NODES if n.peer_id == proposal.student)
            feedback = Feedback(proposal.proposal_id, 1, 0.1, 1.0, 0.9, 10, bytes(32 * [1]), items_used=4,
                                items_failed=claims, claims_failed=claims)
            assert ask(service, student, feedback).ok
        status = service.status()
        assert all(entry["claims_failed"] == claims for entry in status["feedback"])
        assert status["counters"].get("failed_claims", 0) == (len(proposals) if claims else 0)
        trusts[claims] = service.policy.trust.scores([n.peer_id for n in NODES])
        service.close()  # only the journal holds the feedback and its evidence
        reopened, _ = make_service(where, clock, policy="knexa", teachers_per_student=2)
        np.testing.assert_allclose(reopened.policy.trust.scores([n.peer_id for n in NODES]), trusts[claims])
        reopened.close()
    assert (trusts[3] < trusts[0]).all()


async def test_a_repeated_feedback_is_acknowledged_once_after_the_round_and_after_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    service, published = make_service(tmp_path, clock, policy="linucb")
    proposal, student = await first_pairing(service, published)
    feedback = Feedback(proposal.proposal_id, 1, 0.5, 1.0, 0.5, 10, bytes(32 * [1]))
    assert ask(service, student, feedback).code == "ok"
    service.close()  # killed before the Ack reached the student: only the journal holds the feedback
    reopened, _ = make_service(tmp_path, clock, policy="linucb")
    assert reopened.book is None and reopened.store.seq == 1
    assert ask(reopened, student, feedback).code == "duplicate"
    other = next(n for n in NODES if n.peer_id != proposal.student)
    assert ask(reopened, other, feedback).code == "no-round"  # the same content from another peer is no repeat
    await reopened.open_round()  # round 2: round 1's acknowledgements are still known
    assert ask(reopened, student, feedback).code == "duplicate"
    assert reopened.store.seq == 1 and reopened.status()["counters"]["feedback"] == 0
    await reopened.open_round()  # round 3: round 1 is too old for a retry
    assert ask(reopened, student, feedback).code == "unknown-proposal"
