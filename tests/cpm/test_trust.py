"""Trust: harmful teachers lose trust and are gated; hostile students, pair effects and time cannot make that permanent."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knexa_cpm.policies import make_policy
from knexa_cpm.runner import run_one
from knexa_cpm.sim import Federation, SimConfig
from knexa_cpm.trust import SURPRISE_BOUND, TrustError, TrustTracker

STUDENTS = ["s1", "s2", "s3", "s4"]


def test_harmful_teacher_falls_below_the_floor_and_others_do_not():
    trust = TrustTracker()
    rng = np.random.default_rng(0)
    for r in range(6):
        trust.observe("bad", STUDENTS[r % 4], -4.0 + rng.normal(0, 0.3), r)
        trust.observe("good", STUDENTS[(r + 1) % 4], rng.normal(0, 1.0), r)
    scores = trust.scores(["bad", "good", "unknown"])
    assert scores[0] < trust.floor < scores[1]
    assert scores[2] == pytest.approx(0.5)
    assert list(trust.gated(["bad", "good", "unknown"])) == [True, False, False]
    assert trust.bottom(1)[0][0] == "bad" and trust.top(1)[0][0] != "bad"


def test_one_student_cannot_gate_a_teacher_however_often_it_reports():
    # Issue 15, finding 3: two reports of -1000 from one student pushed an honest teacher under the
    # floor for good. One student is one vote, and gating needs min_students distinct ones.
    trust = TrustTracker()
    for r in range(2):
        trust.observe("honest", "hostile", -1000.0, r)
    assert trust.score("honest") > trust.floor
    for r in range(2, 50):
        trust.observe("honest", "hostile", -SURPRISE_BOUND, r)
    assert trust.students_reporting("honest") == 1
    assert not trust.gated(["honest"])[0]
    assert trust.allowed(["honest"], 50)[0]


def test_gated_teacher_recovers_without_new_observations():
    trust = TrustTracker()
    for student in STUDENTS[:3]:
        trust.observe("t", student, -5.0, 0)
    assert trust.gated(["t"])[0]
    low = trust.score("t")
    for r in range(1, 200):
        trust.advance(r)
        if not trust.gated(["t"])[0]:
            break
    assert not trust.gated(["t"])[0] and r < 60
    assert trust.score("t") > low
    trust.advance(1000)
    assert trust.score("t") == pytest.approx(0.5) and trust.state_dict()["stats"] == {}


def test_gated_teachers_are_retried_now_and_then_deterministically():
    trust = TrustTracker(decay=1.0, explore=0.05, seed=3)
    for student in STUDENTS:
        trust.observe("t", student, -SURPRISE_BOUND, 0)
    assert trust.gated(["t"])[0]
    retried = [r for r in range(1, 2001) if trust.allowed(["t"], r)[0]]
    assert 0.02 < len(retried) / 2000 < 0.09
    assert retried == [r for r in range(1, 2001) if TrustTracker(decay=1.0, explore=0.05, seed=3).explores("t", r)]
    assert TrustTracker(explore=0.0).explores("t", 5) is False


@settings(max_examples=30, deadline=None)
@given(gaps=st.lists(st.integers(0, 40), min_size=1, max_size=8))
def test_decay_does_not_depend_on_how_rounds_are_split(gaps):
    # A journal replay advances trust only at the feedback's rounds; the service also at each proposal.
    def fresh() -> TrustTracker:
        trust = TrustTracker()
        for k, student in enumerate(STUDENTS):
            trust.observe(f"t{k % 2}", student, -3.0 + k, 0)
        return trust

    stepwise, jump = fresh(), fresh()
    r = 0
    for gap in gaps:
        r += gap
        stepwise.advance(r)
    jump.advance(r)
    assert stepwise.state_dict() == jump.state_dict()


def test_state_round_trip_drops_old_form_and_refuses_poison():
    a = TrustTracker(prior=3.0)
    a.observe("x", "s1", 1.0, 4)
    b = TrustTracker()
    b.load_state_dict(a.state_dict())
    assert b.score("x") == a.score("x") and b.prior == 3.0 and b.round == 4
    assert b.state_dict() == a.state_dict()
    old = {"prior": 4.0, "scale": 2.0, "decay": 0.97, "floor": 0.1, "stats": {"x": [1.97, -9.85]}}
    c = TrustTracker()
    c.load_state_dict(old)
    assert c.score("x") == 0.5
    for stats in ({"x": {"s": [1.0, float("nan")]}}, {"x": {"s": [1.0, -1e300]}}, {"x": {"s": [-1.0, 0.0]}}):
        with pytest.raises(TrustError):
            TrustTracker().load_state_dict({**a.state_dict(), "stats": stats})
    with pytest.raises(TrustError):
        a.observe("x", "s1", float("inf"), 5)


def test_trust_lowers_a_malicious_teachers_pairing_rate():
    # Two attackers poison their students and send, each round, a copy of a
    # random honest agent's profile, so features cannot give them away; the
    # same federations, noise and seeds with trust on and off.
    rates = {}
    for use_trust in (True, False):
        result = [run_one("knexa", SimConfig(clients=16, malicious=2, mimic="rotate", seed=seed), rounds=30, budget=6, options={"trust": use_trust})
                  for seed in range(2)]
        rates[use_trust] = np.mean([r["malicious_teacher_rate"] for r in result])
    assert rates[True] < 0.5 * rates[False]
    assert rates[True] < 0.5 * 2 / 16  # well below the rate of a uniform pick


@pytest.mark.parametrize("seed", [1, 2])
def test_two_hostile_reports_do_not_bar_an_honest_teacher(seed):
    # Issue 15, finding 3, through the policy: the first student paired after round 10 reports -1000
    # on its teacher the first two times they are paired; before, the teacher was barred (0 and 3 of
    # the next 200 rounds as teacher on these seeds).
    fed = Federation(SimConfig(clients=8, seed=seed))
    policy = make_policy("knexa", seed=seed)
    victim = hostile = None
    hostile_reports = chosen = later_rounds = 0
    for r in range(2000):
        if later_rounds == 200:
            break
        pairs = policy.propose(fed.profiles(), 4, r)
        if hostile_reports == 2:
            later_rounds += 1
            chosen += any(p.teacher == victim for p in pairs)
        rewards, _ = fed.exchange([(p.teacher, p.student, p.protocol) for p in pairs])
        for pairing, reward in zip(pairs, rewards):
            if r >= 10 and victim is None:
                victim, hostile = pairing.teacher, pairing.student
            if hostile_reports < 2 and (pairing.teacher, pairing.student) == (victim, hostile):
                reward = -1000.0
                hostile_reports += 1
            policy.feedback(pairing, float(reward))
        fed.end_round()
    assert later_rounds == 200
    assert policy.trust.score(victim) > policy.trust.floor
    assert chosen >= 40  # 8 agents, 4 teachers a round: 100 on average


@pytest.mark.parametrize("seed", [0, 1, 4, 7])
def test_pair_rewards_never_cost_a_pair_in_a_small_federation(seed):
    # Issue 15, finding 3: the reward belongs to the pair (a hidden symmetric pair effect the
    # features cannot see). Two clients fell under the floor, their pair was never formed again,
    # and 8 clients made 3.0-3.25 pairs a round on these seeds instead of 4.
    n = 8
    fed = Federation(SimConfig(clients=n, seed=seed))
    profiles = fed.profiles()
    names = sorted(profiles)
    index = {name: k for k, name in enumerate(names)}
    rng = np.random.default_rng(seed)
    effect = rng.normal(0.0, 1.0, (n, n))
    effect = (effect + effect.T) / 2
    policy = make_policy("knexa", seed=seed)
    counts = []
    for r in range(200):
        pairs = policy.propose(profiles, n // 2, r)
        counts.append(len(pairs))
        allowed = policy.trust.allowed(names, r)
        for pairing in pairs:
            if not allowed[index[pairing.teacher]]:
                assert not allowed[index[pairing.student]], "a gated teacher taught a trusted student"
            reward = effect[index[pairing.teacher], index[pairing.student]] + rng.normal(0.0, 0.3)
            policy.feedback(pairing, float(reward))
    assert counts == [n // 2] * 200


@settings(max_examples=60, deadline=None)
@given(reports=st.lists(st.tuples(st.floats(-1e308, 1e308), st.integers(0, 3)), min_size=1, max_size=40))
def test_one_student_never_gates_whatever_it_reports(reports):
    trust = TrustTracker()
    round_ = 0
    for surprise, gap in reports:
        round_ += gap
        trust.observe("teacher", "hostile", surprise, round_)
        assert trust.score("teacher") >= 1.0 / (1.0 + np.exp(2.0)) - 1e-12
        assert not trust.gated(["teacher"])[0]
