"""Differential privacy on released logits: top-k log-probabilities, clipped, with calibrated Gaussian noise.

What is released. For each position (a transfer-set token) the teacher
releases the log-probabilities of k token ids, not the full vocabulary:
noise over 50k entries drowns the signal (DESIGN.md). Each row is centred
(its mean subtracted: argmax and differences unchanged), clipped to L2
norm ``C``, and perturbed with N(0, (sigma C)^2) per entry.

What the guarantee is, exactly. The neighbouring relation is "the node's
private data D_i, and so its fine-tuned model, changed in any way": nothing
bounds how much one training example moves a model's outputs (this is
output perturbation, not DP-SGD), so each clipped row can move by up to 2C
in L2. One row is then a Gaussian mechanism with sensitivity 2C, and a
package of n rows is n such releases. Gaussian releases compose exactly:
n releases with noise multiplier m are one release with multiplier m/sqrt(n).
So the sigma that makes a whole package (epsilon, delta)-DP grows with
sqrt(n): :func:`calibrate_sigma` takes the analytic Gaussian mechanism's
sigma from ``dp-accounting`` (Balle and Wang, 2018) and scales it,
and :func:`epsilon_spent` checks the result with the PLD accountant.

What it does not cover. (1) The *choice* of the k ids is not noised: ids
taken from the teacher's own top-k leak which tokens the teacher ranks
highest. Pass ``candidates`` chosen independently of D_i (for example the
top-k of the public base model with the adapter disabled) for the guarantee
to hold for the ids too; otherwise only the values are covered. (2) Text
packages decoded with noisy logits (:func:`noisy_decoding_logits`) spend one
release per generated token: a 128-token answer to each of 192 prompts is
24,576 releases, i.e. about 157x the noise of one release for the same
epsilon. The budget in config is per exchange, and exchanges add up
(:mod:`.budget`). (3) Nothing here protects against what the student infers
from many honest, noise-free exchanges when DP is off (the default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.pld import PLDAccountant

from knexa_node.config import PrivacySection

SENSITIVITY_FACTOR = 2.0  # a clipped row (norm <= C) can become any other clipped row: distance <= 2C


@dataclass(frozen=True)
class GaussianRelease:
    """A calibrated mechanism for a package of ``releases`` rows: noise std ``sigma * clip_norm`` per entry."""

    epsilon: float
    delta: float
    clip_norm: float
    releases: int
    sigma: float

    @classmethod
    def calibrate(cls, epsilon: float, delta: float, clip_norm: float, releases: int) -> "GaussianRelease":
        return cls(epsilon, delta, clip_norm, releases, calibrate_sigma(epsilon, delta, releases))

    @classmethod
    def from_config(cls, privacy: PrivacySection, releases: int) -> "GaussianRelease":
        return cls.calibrate(privacy.dp_epsilon_per_exchange, privacy.dp_delta, privacy.dp_clip_norm, releases)

    @property
    def noise_std(self) -> float:
        return self.sigma * self.clip_norm


def calibrate_sigma(epsilon: float, delta: float, releases: int = 1) -> float:
    """Noise std, in units of the clip norm C, that makes ``releases`` clipped rows (epsilon, delta)-DP together."""
    if not (epsilon > 0 and 0 < delta < 1 and releases >= 1):
        raise ValueError("need epsilon > 0, 0 < delta < 1 and releases >= 1")
    single = dp_accounting.get_sigma_gaussian(epsilon, delta)  # noise std for L2 sensitivity 1, one release
    return SENSITIVITY_FACTOR * single * math.sqrt(releases)


def epsilon_spent(sigma: float, delta: float, releases: int) -> float:
    """epsilon of ``releases`` rows released with noise ``sigma * C``, by the PLD accountant (a cross-check)."""
    accountant = PLDAccountant()
    event = dp_accounting.GaussianDpEvent(sigma / SENSITIVITY_FACTOR)
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, releases))
    return float(accountant.get_epsilon(delta))


def log_softmax(logits: Any) -> np.ndarray:
    """Row-wise log-softmax of anything numpy can read (a CPU torch tensor works)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    peak = x.max(axis=-1, keepdims=True)
    return peak + np.log(np.exp(x - peak).sum(axis=-1, keepdims=True, dtype=np.float64))


def top_k(logits: Any, k: int, candidates: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The ids and log-probabilities to release per row: the row's own top-k, or the given ``candidates`` ids.

    Selects on the raw logits (log-softmax is monotone) and normalizes only the
    k kept values, so a 50k vocabulary costs one pass for the normalizer.
    """
    x = np.asarray(logits)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if candidates is None:
        k = min(k, x.shape[-1])
        ids = np.argpartition(-x, k - 1, axis=-1)[..., :k]
    else:
        ids = np.asarray(candidates, dtype=np.int64)
        if ids.ndim == 1:
            ids = np.broadcast_to(ids, x.shape[:-1] + ids.shape)
    values = np.take_along_axis(x, ids, axis=-1).astype(np.float64) - _logsumexp(x)
    order = np.argsort(-values, axis=-1)
    return np.take_along_axis(ids, order, axis=-1).astype(np.int32), np.take_along_axis(values, order, axis=-1)


def clip_rows(values: Any, clip_norm: float) -> np.ndarray:
    """Centre each row and scale it down to L2 norm at most ``clip_norm``."""
    x = np.asarray(values, dtype=np.float64)
    x = x - x.mean(axis=-1, keepdims=True)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x * np.minimum(1.0, clip_norm / np.maximum(norms, 1e-12))


def privatize_rows(values: Any, mechanism: GaussianRelease, rng: np.random.Generator) -> np.ndarray:
    """Centre, clip and noise each row (the last axis) of ``values``; float32 out."""
    clipped = clip_rows(values, mechanism.clip_norm)
    if clipped.shape[:-1] and math.prod(clipped.shape[:-1]) > mechanism.releases:
        raise ValueError(f"{math.prod(clipped.shape[:-1])} rows but the mechanism was calibrated for {mechanism.releases}")
    noise = rng.normal(0.0, mechanism.noise_std, size=clipped.shape)
    return (clipped + noise).astype(np.float32)


def privatize_top_k(
    logits: Any, k: int, mechanism: GaussianRelease, rng: np.random.Generator, candidates: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """A logits package's rows: (ids, noisy centred log-probabilities), one row per position."""
    ids, values = top_k(logits, k, candidates)
    return ids, privatize_rows(values, mechanism, rng)


def noisy_decoding_logits(
    logits: Any, k: int, mechanism: GaussianRelease, rng: np.random.Generator, candidates: Any = None
) -> np.ndarray:
    """For a decoding logits processor: keep k ids per row with noisy values, -inf elsewhere.

    ``logits`` is (batch, vocab) for one decoding step. Every call spends one
    release per row; calibrate ``mechanism`` for the total number of tokens
    the package will generate (see the module docstring).
    """
    x = np.asarray(logits)
    ids, noisy = privatize_top_k(x, k, mechanism, rng, candidates)
    out = np.full(x.shape, -np.inf, dtype=np.float32)
    np.put_along_axis(out, ids.astype(np.int64), noisy, axis=-1)
    return out


def top1_agreement(clean_logits: Any, noisy_ids: np.ndarray, noisy_values: np.ndarray) -> float:
    """Share of rows whose released argmax equals the noise-free teacher's argmax (the utility figure)."""
    clean = np.asarray(clean_logits).argmax(axis=-1)
    released = np.take_along_axis(noisy_ids, noisy_values.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    return float(np.mean(released == clean))
