"""Trust: harmful teachers lose trust, and knexa pairs a malicious teacher less often with trust on."""

from __future__ import annotations

import numpy as np
import pytest

from knexa_cpm.runner import run_one
from knexa_cpm.sim import SimConfig
from knexa_cpm.trust import TrustTracker


def test_harmful_teacher_falls_below_the_floor_and_others_do_not():
    trust = TrustTracker()
    rng = np.random.default_rng(0)
    for _ in range(6):
        trust.observe("bad", -4.0 + rng.normal(0, 0.3))
        trust.observe("good", rng.normal(0, 1.0))
    scores = trust.scores(["bad", "good", "unknown"])
    assert scores[0] < trust.floor < scores[1]
    assert scores[2] == pytest.approx(0.5)
    assert list(trust.trusted(scores)) == [False, True, True]
    assert trust.bottom(1)[0][0] == "bad" and trust.top(1)[0][0] != "bad"


def test_one_bad_exchange_does_not_condemn_and_trust_recovers():
    trust = TrustTracker()
    trust.observe("a", -5.0)
    assert trust.score("a") > trust.floor
    for _ in range(5):
        trust.observe("a", -5.0)
    low = trust.score("a")
    for _ in range(200):
        trust.observe("a", 0.5)
    assert trust.score("a") > 0.5 > low


def test_state_round_trip():
    a = TrustTracker(prior=3.0)
    a.observe("x", 1.0)
    b = TrustTracker()
    b.load_state_dict(a.state_dict())
    assert b.score("x") == a.score("x") and b.prior == 3.0


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
