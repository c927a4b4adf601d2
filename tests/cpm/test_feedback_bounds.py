"""Rewards at the CPM service's door: NaN and infinity refused, huge ones bounded, also across a restart."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from knexa_cpm.bandit import REWARD_BOUND
from knexa_cpm.service import CpmService
from knexa_node.config import Config
from knexa_node.crypto import Signer
from knexa_node.profile import CATEGORIES, METRICS, ProfileInputs, build_profile
from knexa_node.wire import Ack, Feedback, PairingProposal, Profile, open_envelope, seal_envelope

CPM = Signer(bytes([9] * 32))
MEMBERS = [Signer(bytes([i + 1] * 32)) for i in range(2)]


def make_service(state: Path, published: list) -> CpmService:
    config = Config()
    config.consortium.members = [m.peer_id for m in MEMBERS]

    async def publish(topic: str, data: bytes) -> None:
        published.append((topic, data))

    return CpmService(CPM, config, state, publish=publish, on_event=lambda *a, **k: None, policy_name="knexa")


def profile(index: int, round_: int) -> Profile:
    counts = [1.0] * len(CATEGORIES)
    counts[index] = 20.0
    vector = build_profile(ProfileInputs("llama", {name: 0.2 + 0.3 * index for name in METRICS}, None, counts))
    return Profile(round=round_, vector=tuple(vector), model_type="llama", tokenizer_id="t", addrs=())


def ask(service: CpmService, signer: Signer, message: object) -> Ack:
    answer = service.handle_request(seal_envelope(signer, message).to_bytes(), signer.peer_id)
    assert isinstance(answer, Ack)
    return answer


async def paired_round(service: CpmService, published: list) -> tuple[PairingProposal, Signer]:
    await service.open_round()
    for k, member in enumerate(MEMBERS):
        assert ask(service, member, profile(k, service.last_round)).ok
    await service.tick()
    proposal = open_envelope(published[-1][1])[1]
    assert isinstance(proposal, PairingProposal)
    return proposal, next(m for m in MEMBERS if m.peer_id == proposal.student)


def feedback(proposal: PairingProposal, reward: float) -> Feedback:
    return Feedback(proposal.proposal_id, proposal.round, reward, 2.0, 1.5, 1000, bytes(range(32)))


async def test_non_finite_rewards_are_refused_and_never_journaled(tmp_path: Path):
    published: list = []
    service = make_service(tmp_path / "cpm", published)
    try:
        proposal, student = await paired_round(service, published)
        for bad in (math.nan, math.inf, -math.inf):
            answer = ask(service, student, feedback(proposal, bad))
            assert not answer.ok and answer.code in ("bad-field", "bad-feedback", "malformed")  # the wire refuses first
        assert service.store.seq == 0 and service.counters["feedback"] == 0
        assert ask(service, student, feedback(proposal, 0.4)).ok
        assert service.store.seq == 1
    finally:
        service.close()


async def test_a_huge_reward_is_bounded_and_stays_bounded_after_a_restart(tmp_path: Path):
    published: list = []
    service = make_service(tmp_path / "cpm", published)
    try:
        proposal, student = await paired_round(service, published)
        answer = ask(service, student, feedback(proposal, 1e308))
        accepted = answer.ok
        if accepted:  # the wire may refuse it outright; if it passes, the policy clips it
            assert service.policy.normalizer.values().tolist() == [REWARD_BOUND]
    finally:
        service.close()
    reopened = make_service(tmp_path / "cpm", published)
    try:
        assert reopened.store.seq == int(accepted)
        window = reopened.policy.normalizer.values()
        assert np.all(np.abs(window) <= REWARD_BOUND)
        zs = [reopened.policy.normalizer(r) for r in np.linspace(-1.0, 1.0, 9)]
        assert np.std(zs) > 0.3  # not frozen at 0
    finally:
        reopened.close()
