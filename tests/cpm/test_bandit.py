"""LinUCB and the running z-score: exact algebra against direct computation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from knexa_cpm.bandit import BanditError, LinUCB, RunningZScore

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


@given(st.lists(finite, min_size=2, max_size=50))
def test_zscore_matches_numpy_statistics(values):
    z = RunningZScore(clip=1e9)
    outs = [z(v) for v in values]
    assert z.mu == pytest.approx(np.mean(values), abs=1e-9)
    assert z.sigma == pytest.approx(np.std(values), abs=1e-7)
    last = (values[-1] - np.mean(values)) / (np.std(values) + 1e-6)
    assert outs[-1] == pytest.approx(last, rel=1e-6, abs=1e-6)


def test_zscore_clips_absurd_rewards():
    z = RunningZScore(clip=5.0)
    for v in np.linspace(-1, 1, 50):
        z(float(v))
    assert z(1e12) == 5.0
    with pytest.raises(BanditError):
        z(float("nan"))
