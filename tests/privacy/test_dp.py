"""DP layer: sigma agrees with the accountants, the noise has that scale, clipping holds, budgets persist and run out."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from knexa_node.config import PrivacySection
from knexa_node.privacy.budget import BudgetError, BudgetExceeded, PrivacyBudget
from knexa_node.privacy.dp import (
    GaussianRelease,
    calibrate_sigma,
    clip_rows,
    epsilon_spent,
    log_softmax,
    noisy_decoding_logits,
    privatize_rows,
    privatize_top_k,
    top1_agreement,
    top_k,
)


def analytic_delta(epsilon: float, noise_multiplier: float) -> float:
    """delta(epsilon) of one Gaussian mechanism (Balle and Wang 2018, Thm. 8), written out independently."""
    s = noise_multiplier
    return norm.cdf(1 / (2 * s) - epsilon * s) - math.exp(epsilon) * norm.cdf(-1 / (2 * s) - epsilon * s)


@pytest.mark.parametrize(
    "epsilon, delta, releases", [(1.0, 1e-5, 1), (0.5, 1e-6, 64), pytest.param(4.0, 1e-5, 1000, marks=pytest.mark.slow)]
)
def test_sigma_matches_the_accountants(epsilon, delta, releases):
    sigma = calibrate_sigma(epsilon, delta, releases)
    # PLD accountant over the composition of `releases` Gaussian events gives back the target epsilon.
    assert epsilon_spent(sigma, delta, releases) == pytest.approx(epsilon, rel=0.01)
    # The closed form for one Gaussian with the composed multiplier gives back the target delta.
    assert analytic_delta(epsilon, sigma / 2 / math.sqrt(releases)) == pytest.approx(delta, rel=0.01)
    # Less noise would overspend.
    assert epsilon_spent(0.9 * sigma, delta, releases) > epsilon * 1.05


def test_config_calibration_uses_the_configured_budget():
    privacy = PrivacySection(dp_enabled=True, dp_epsilon_per_exchange=2.0, dp_delta=1e-6, dp_clip_norm=0.5)
    mech = GaussianRelease.from_config(privacy, releases=10)
    assert mech.sigma == pytest.approx(calibrate_sigma(2.0, 1e-6, 10)) and mech.noise_std == pytest.approx(mech.sigma * 0.5)


def test_noise_scale_matches_sigma_statistically():
    mech = GaussianRelease.calibrate(1.0, 1e-5, clip_norm=0.7, releases=5000)
    rng = np.random.default_rng(1234)
    values = rng.normal(-5.0, 2.0, size=(5000, 8))
    noisy = privatize_rows(values, mech, rng)
    residual = noisy - clip_rows(values, mech.clip_norm)
    n = residual.size
    std = residual.std()
    # The sample std of n normals has relative sd 1/sqrt(2n) (~0.25% here); allow 4 of them.
    assert abs(std / mech.noise_std - 1) < 4 / math.sqrt(2 * n)
    assert abs(residual.mean()) < 4 * mech.noise_std / math.sqrt(n)


def test_clipping_bounds_every_row_and_keeps_the_ranking():
    rng = np.random.default_rng(5)
    rows = rng.normal(0, 10, size=(200, 16))
    clipped = clip_rows(rows, 1.5)
    assert np.all(np.linalg.norm(clipped, axis=1) <= 1.5 + 1e-9)
    assert np.array_equal(clipped.argmax(axis=1), rows.argmax(axis=1))
    small = np.array([[0.1, -0.1]])
    assert np.allclose(clip_rows(small, 1.5), small)  # already inside the ball: untouched


def test_top_k_release_and_decoding_logits():
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, size=(32, 500))
    ids, values = top_k(logits, 8)
    assert ids.shape == values.shape == (32, 8)
    assert np.array_equal(ids[:, 0], logits.argmax(axis=1))
    assert np.all(np.diff(values, axis=1) <= 0)
    assert np.allclose(values, np.take_along_axis(log_softmax(logits), ids.astype(np.int64), axis=1))
    mech = GaussianRelease(epsilon=0.0, delta=0.0, clip_norm=1.0, releases=32, sigma=0.01)  # functional check: tiny noise
    noisy_ids, noisy = privatize_top_k(logits, 8, mech, rng)
    assert top1_agreement(logits, noisy_ids, noisy) > 0.9
    step = noisy_decoding_logits(logits, 8, mech, rng)
    assert step.shape == logits.shape and np.all(np.isfinite(step).sum(axis=1) == 8)
    assert np.isin(step.argmax(axis=1), ids).all()
    # Public candidate ids: only those ids are ever released.
    candidates = np.arange(10, 18)
    cand_ids, _ = privatize_top_k(logits, 8, mech, rng, candidates=candidates)
    assert set(np.unique(cand_ids)) <= set(candidates)


def test_more_rows_than_calibrated_is_refused():
    mech = GaussianRelease.calibrate(1.0, 1e-5, clip_norm=1.0, releases=4)
    with pytest.raises(ValueError):
        privatize_rows(np.zeros((5, 3)), mech, np.random.default_rng(0))


def test_strong_privacy_destroys_top1_and_weak_privacy_keeps_it():
    rng = np.random.default_rng(11)
    logits = rng.normal(0, 3, size=(400, 1000))
    strong = GaussianRelease.calibrate(1.0, 1e-5, 1.0, releases=400)
    weak = GaussianRelease.calibrate(5000.0, 1e-5, 1.0, releases=1)
    assert top1_agreement(logits, *privatize_top_k(logits, 4, strong, rng)) < 0.4
    agree = np.mean([top1_agreement(logits[i : i + 1], *privatize_top_k(logits[i : i + 1], 4, weak, rng)) for i in range(400)])
    assert agree > 0.9


def test_budget_persists_and_runs_out(tmp_path):
    budget = PrivacyBudget.in_state_dir(tmp_path, total=3.0, per_peer=2.0)
    budget.spend("peer-a", 1.0, 1e-5)
    budget.spend("peer-a", 1.0, 1e-5)
    with pytest.raises(BudgetExceeded, match="per-peer"):
        budget.spend("peer-a", 0.5, 1e-5)
    budget.spend("peer-b", 1.0, 1e-5)
    reopened = PrivacyBudget.in_state_dir(tmp_path, total=3.0, per_peer=2.0)
    assert reopened.total.epsilon == pytest.approx(3.0) and reopened.total.releases == 3
    assert reopened.snapshot()["peers"]["peer-a"]["epsilon"] == pytest.approx(2.0)
    with pytest.raises(BudgetExceeded, match="total"):
        reopened.check("peer-c", 0.1)
    assert reopened.remaining("peer-c") == 0.0


@pytest.mark.parametrize("content", [b"{not json", b'{"v": 1, "total": {"epsilon": -1, "delta": 0}, "peers": {}}', b'{"v": 2}'])
def test_malformed_budget_file_is_a_clear_error(tmp_path, content):
    (tmp_path / "privacy_budget.json").write_bytes(content)
    with pytest.raises(BudgetError, match="privacy_budget.json"):
        PrivacyBudget.in_state_dir(tmp_path, total=1.0, per_peer=1.0)
