"""LinUCB with O(d^2) feedback and vectorized scoring, plus the running reward z-score.

Pure numpy, no I/O. Both matchmaking policies (the paper's ``linucb`` and our
``knexa``) are built on :class:`LinUCB`; the simulator, the benchmarks and the
CPM service drive the very same objects.

Model (supplement Alg. 1): ``A = lambda I + sum x x'``, ``b = sum r x``,
``theta = A^-1 b``; the score of a context is ``theta.x + beta sqrt(x' A^-1 x)``.

- Feedback keeps ``A^-1`` up to date with the Sherman-Morrison formula
  (O(d^2) instead of an O(d^3) inverse). Rounding drifts slowly, so every
  ``refresh_every`` updates ``A^-1`` is recomputed from ``A`` by Cholesky.
- Scoring a batch of n contexts is two matrix products, O(n d^2), no Python loop.
- :meth:`LinUCB.state_dict` / :meth:`LinUCB.load_state_dict` give plain arrays
  and numbers so that ``knexa_cpm.state`` can persist them exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class BanditError(ValueError):
    """A context or reward handed to the bandit is malformed."""


class LinUCB:
    """One shared linear model over context vectors of dimension ``dim``."""

    def __init__(self, dim: int, *, lam: float = 0.01, beta: float = 1.0, refresh_every: int = 256) -> None:
        if dim <= 0:
            raise BanditError(f"dimension must be positive, got {dim}")
        if not lam > 0:
            raise BanditError(f"lambda must be positive, got {lam}")
        self.dim = int(dim)
        self.lam = float(lam)
        self.beta = float(beta)
        self.refresh_every = int(refresh_every)
        self.A = self.lam * np.eye(self.dim)
        self.A_inv = np.eye(self.dim) / self.lam
        self.b = np.zeros(self.dim)
        self.theta = np.zeros(self.dim)
        self.updates = 0

    def check_context(self, x: np.ndarray) -> np.ndarray:
        array = np.asarray(x, dtype=np.float64)
        if array.shape != (self.dim,):
            raise BanditError(f"context must have shape ({self.dim},), got {array.shape}")
        if not np.all(np.isfinite(array)):
            raise BanditError("context holds NaN or infinity")
        return array

    def mean(self, X: np.ndarray) -> np.ndarray:
        """Predicted reward ``theta.x`` for each row of ``X``."""
        return np.asarray(X, dtype=np.float64) @ self.theta

    def width(self, X: np.ndarray) -> np.ndarray:
        """Confidence width ``sqrt(x' A^-1 x)`` for each row of ``X``."""
        X = np.asarray(X, dtype=np.float64)
        quad = np.einsum("ij,ij->i", X @ self.A_inv, X)
        return np.sqrt(np.maximum(quad, 0.0))

    def score(self, X: np.ndarray, beta: float | None = None, *, fast: bool = False) -> np.ndarray:
        """Upper confidence bound for each row of ``X`` (shape ``(n, dim)``).

        ``fast`` computes in float32 (about twice as fast on large batches;
        ranks agree except for near-ties), for the candidate sets of big federations.
        """
        X = np.asarray(X, dtype=np.float32 if fast else np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise BanditError(f"contexts must have shape (n, {self.dim}), got {X.shape}")
        b = self.beta if beta is None else float(beta)
        if fast:
            quad = np.einsum("ij,ij->i", X @ self.A_inv.astype(np.float32), X)
            return X @ self.theta.astype(np.float32) + b * np.sqrt(np.maximum(quad, 0.0))
        return self.mean(X) + b * self.width(X)

    def update(self, x: np.ndarray, reward: float) -> None:
        """``A += x x'``, ``b += r x``, with a Sherman-Morrison update of ``A^-1``."""
        x = self.check_context(x)
        if not math.isfinite(reward):
            raise BanditError("reward must be finite")
        Ax = self.A_inv @ x
        self.A_inv -= np.outer(Ax, Ax) / (1.0 + x @ Ax)
        self.A += np.outer(x, x)
        self.b += reward * x
        self.updates += 1
        if self.refresh_every > 0 and self.updates % self.refresh_every == 0:
            self._refresh()
        self.theta = self.A_inv @ self.b

    def _refresh(self) -> None:
        # Cholesky of the SPD matrix A, then A^-1 = L^-T L^-1: undoes the slow
        # drift of many rank-one updates.
        L = np.linalg.cholesky(self.A)
        L_inv = np.linalg.solve(L, np.eye(self.dim))
        self.A_inv = L_inv.T @ L_inv

    def state_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim, "lam": self.lam, "beta": self.beta, "refresh_every": self.refresh_every,
            "A": self.A.copy(), "A_inv": self.A_inv.copy(), "b": self.b.copy(), "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["dim"]) != self.dim:
            raise BanditError(f"stored bandit has dimension {state['dim']}, this one {self.dim}")
        for key in ("A", "A_inv"):
            if np.asarray(state[key]).shape != (self.dim, self.dim):
                raise BanditError(f"stored {key} has the wrong shape")
        if np.asarray(state["b"]).shape != (self.dim,):
            raise BanditError("stored b has the wrong shape")
        self.lam = float(state["lam"])
        self.beta = float(state["beta"])
        self.refresh_every = int(state["refresh_every"])
        self.A = np.array(state["A"], dtype=np.float64)
        self.A_inv = np.array(state["A_inv"], dtype=np.float64)
        self.b = np.array(state["b"], dtype=np.float64)
        self.updates = int(state["updates"])
        self.theta = self.A_inv @ self.b


class RunningZScore:
    """Welford running mean and deviation; ``z = (r - mu) / (sigma + 1e-6)`` (DESIGN.md, Eq. 3).

    ``clip`` bounds the normalized value: one absurd reward (a buggy or
    malicious student) must not swamp the model. ``update_first`` chooses
    whether a reward joins the statistics before it is normalized (the
    paper's code does so; for the very first reward that gives z = 0).
    """

    def __init__(self, *, clip: float = 5.0, update_first: bool = True) -> None:
        self.clip = float(clip)
        self.update_first = bool(update_first)
        self.count = 0
        self.mu = 0.0
        self.m2 = 0.0

    @property
    def sigma(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 0.0

    def _add(self, reward: float) -> None:
        self.count += 1
        delta = reward - self.mu
        self.mu += delta / self.count
        self.m2 += delta * (reward - self.mu)

    def __call__(self, reward: float) -> float:
        """Normalize ``reward`` and fold it into the statistics."""
        if not math.isfinite(reward):
            raise BanditError("reward must be finite")
        if self.update_first:
            self._add(reward)
            z = (reward - self.mu) / (self.sigma + 1e-6)
        else:
            z = (reward - self.mu) / (self.sigma + 1e-6) if self.count > 1 else 0.0
            self._add(reward)
        return float(np.clip(z, -self.clip, self.clip))

    def state_dict(self) -> dict[str, Any]:
        return {"clip": self.clip, "update_first": self.update_first, "count": self.count, "mu": self.mu, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip = float(state["clip"])
        self.update_first = bool(state["update_first"])
        self.count = int(state["count"])
        self.mu = float(state["mu"])
        self.m2 = float(state["m2"])
