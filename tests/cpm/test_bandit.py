"""LinUCB and the robust reward z-score: exact algebra against direct computation, and poisoned rewards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from knexa_cpm.bandit import REWARD_BOUND, BanditError, LinUCB, RobustZScore, clip_reward

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(xs=arrays(np.float64, (12, 5), elements=finite), rs=arrays(np.float64, 12, elements=finite),
       lam=st.sampled_from([0.01, 1.0]))
def test_sherman_morrison_matches_direct_inverse(xs, rs, lam):
    bandit = LinUCB(5, lam=lam, refresh_every=0)
    for x, r in zip(xs, rs):
        bandit.update(x, float(r))
    A = lam * np.eye(5) + xs.T @ xs
    np.testing.assert_allclose(bandit.A, A, rtol=1e-12, atol=1e-9)
    theta = np.linalg.solve(A, xs.T @ rs)
    np.testing.assert_allclose(bandit.theta, theta, rtol=1e-5, atol=1e-5 * (1 + np.abs(theta).max()))


def test_refresh_keeps_inverse_exact_over_many_updates():
    rng = np.random.default_rng(1)
    bandit = LinUCB(8, lam=0.01, refresh_every=100)
    X = rng.normal(size=(1000, 8))
    for x in X:
        bandit.update(x, float(rng.normal()))
    np.testing.assert_allclose(bandit.A_inv @ bandit.A, np.eye(8), atol=1e-8)


def test_vectorized_score_equals_row_by_row():
    rng = np.random.default_rng(2)
    bandit = LinUCB(6, lam=0.5, beta=0.7)
    for _ in range(30):
        bandit.update(rng.normal(size=6), float(rng.normal()))
    X = rng.normal(size=(50, 6))
    expected = [x @ bandit.theta + 0.7 * np.sqrt(x @ np.linalg.inv(bandit.A) @ x) for x in X]
    np.testing.assert_allclose(bandit.score(X), expected, rtol=1e-8)


def test_learns_a_linear_reward_and_width_shrinks():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=4)
    bandit = LinUCB(4, lam=1.0)
    probe = rng.normal(size=(1, 4))
    before = bandit.width(probe)[0]
    for _ in range(400):
        x = rng.normal(size=4)
        bandit.update(x, float(x @ truth + rng.normal(0, 0.1)))
    assert np.abs(bandit.theta - truth).max() < 0.05
    assert bandit.width(probe)[0] < before / 5


@pytest.mark.parametrize("bad", [np.zeros(3), np.array([1.0, np.nan, 0, 0]), np.array([[1.0, 2, 3, 4]])])
def test_bad_context_is_refused_without_state_change(bad):
    bandit = LinUCB(4)
    with pytest.raises(BanditError):
        bandit.update(bad, 1.0)
    with pytest.raises(BanditError):
        bandit.update(np.ones(4), float("inf"))
    assert bandit.updates == 0 and not bandit.b.any()


def test_state_dict_round_trip():
    rng = np.random.default_rng(4)
    a = LinUCB(3)
    for _ in range(10):
        a.update(rng.normal(size=3), float(rng.normal()))
    b = LinUCB(3)
    b.load_state_dict(a.state_dict())
    X = rng.normal(size=(5, 3))
    np.testing.assert_array_equal(a.score(X), b.score(X))
    with pytest.raises(BanditError):
        LinUCB(4).load_state_dict(a.state_dict())


def numpy_z(window: np.ndarray, reward: float) -> float:
    centre = np.median(window)
    deviations = np.abs(window - centre)
    spread = 1.4826 * np.median(deviations) or 1.2533 * deviations.mean()
    return (reward - centre) / (spread + 1e-6)


@given(st.lists(finite, min_size=2, max_size=60), st.integers(1, 20))
def test_zscore_is_median_and_mad_over_the_window(values, window):
    z = RobustZScore(clip=1e9, window=window)
    outs = [z(v) for v in values]
    held = np.array(values[-window:])
    np.testing.assert_array_equal(z.values(), held)
    assert outs[-1] == pytest.approx(numpy_z(held, values[-1]), rel=1e-6, abs=1e-6)


def test_zscore_clips_absurd_rewards():
    z = RobustZScore(clip=5.0)
    for v in np.linspace(-1, 1, 50):
        z(float(v))
    assert z(1e12) == 5.0
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(BanditError):
            z(bad)
    assert z.count == 51


def test_rewards_are_clipped_before_any_statistics():
    assert clip_reward(1e308) == REWARD_BOUND and clip_reward(-1e308) == -REWARD_BOUND
    assert clip_reward(3.5) == 3.5
    z = RobustZScore()
    z(1e308)
    assert z.values().tolist() == [REWARD_BOUND]


def honest_stream(n: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.5, 1.0, size=n)


def test_one_reward_of_1e308_does_not_freeze_learning():
    # Issue 15, finding 3: with a running mean and deviation, one finite reward of 1e308 made the
    # variance infinite and every later z-score 0.
    z = RobustZScore()
    for r in honest_stream(100):
        z(float(r))
    z(1e308)
    later = [z(float(r)) for r in honest_stream(200, seed=6)]
    reference = RobustZScore()
    for r in honest_stream(100):
        reference(float(r))
    expected = [reference(float(r)) for r in honest_stream(200, seed=6)]
    assert np.std(later) > 0.5
    np.testing.assert_allclose(later, expected, rtol=0.05, atol=0.05)  # one clipped outlier among 100


def test_a_burst_of_huge_rewards_is_forgotten_after_the_window():
    z = RobustZScore(window=64)
    for r in honest_stream(64):
        z(float(r))
    for _ in range(40):  # more than half the window: the median itself moves, for a while
        z(1e300)
    later = np.array([z(float(r)) for r in honest_stream(200, seed=7)])
    assert np.std(later[-100:]) > 0.5
    assert np.all(np.abs(z.values()) < 10)


def test_zscore_state_round_trip_and_refuses_poisoned_state():
    a = RobustZScore(window=8)
    for r in honest_stream(13):
        a(float(r))
    b = RobustZScore()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert b(0.25) == a(0.25) and b(-3.0) == a(-3.0)
    # The old running mean/deviation form (here as left by a reward of 1e308) starts an empty window.
    old = RobustZScore()
    old.load_state_dict({"clip": 5.0, "update_first": True, "count": 40, "mu": 2.5e306, "m2": float("inf")})
    assert old.count == 0 and old(1.0) == 0.0 and old(3.0) != 0.0
    for poisoned in ({**a.state_dict(), "values": [1e308] * 8}, {**a.state_dict(), "values": [float("nan")] * 8},
                     {**a.state_dict(), "count": 3}):
        with pytest.raises(BanditError):
            RobustZScore().load_state_dict(poisoned)


any_finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(poison=st.lists(any_finite, max_size=60), honest=st.lists(finite, min_size=17, max_size=40))
def test_any_poison_is_forgotten_after_one_window(poison, honest):
    # Whatever finite rewards came before, once a window of honest rewards has passed the z-scores
    # are exactly those of a normalizer that never saw the poison.
    window = 16
    poisoned, clean = RobustZScore(window=window), RobustZScore(window=window)
    for r in poison:
        poisoned(r)
    for r in honest[:window]:
        poisoned(r)
        clean(r)
    assert [poisoned(r) for r in honest[window:]] == [clean(r) for r in honest[window:]]
