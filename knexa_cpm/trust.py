"""Per-agent trust as a teacher, from the (z-scored) rewards its packages earned.

A teacher whose packages hurt students (a malicious or broken node, or one
whose profile overstates its skill) earns rewards far below the consortium's
average. Its trust is ``sigmoid(scale * m)``, where ``m`` is the mean of its
z-scored rewards shrunk towards 0 by ``prior`` pseudo-observations, so one
unlucky exchange moves little and a run of harmful ones moves a lot. Old
evidence fades by ``decay`` per new observation so that a node can recover.

Policies use trust twice: as a context feature (the bandit learns how much
it matters) and as a gate: a teacher whose trust falls under ``floor`` is
not proposed as a teacher at all (it may still learn as a student). Trust
only lowers pairing chances; it never raises a teacher above what the
bandit predicts. Pure Python and numpy; state is plain numbers.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np


class TrustTracker:
    def __init__(self, *, prior: float = 4.0, scale: float = 2.0, decay: float = 0.97, floor: float = 0.1) -> None:
        self.prior = float(prior)
        self.scale = float(scale)
        self.decay = float(decay)
        self.floor = float(floor)
        # agent -> [weighted count, weighted sum of z-rewards]
        self._stats: dict[str, list[float]] = {}

    def observe(self, teacher: str, z_reward: float) -> None:
        if not math.isfinite(z_reward):
            raise ValueError("reward must be finite")
        stats = self._stats.setdefault(teacher, [0.0, 0.0])
        stats[0] = self.decay * stats[0] + 1.0
        stats[1] = self.decay * stats[1] + float(z_reward)

    def score(self, agent: str) -> float:
        count, total = self._stats.get(agent, (0.0, 0.0))
        return 1.0 / (1.0 + math.exp(-self.scale * total / (count + self.prior)))

    def scores(self, agents: Iterable[str]) -> np.ndarray:
        """Trust of each agent in ``agents`` (0.5 for an unknown one)."""
        stats = self._stats
        counts = np.array([stats[a][0] if a in stats else 0.0 for a in agents])
        totals = np.array([stats[a][1] if a in stats else 0.0 for a in agents])
        return 1.0 / (1.0 + np.exp(-self.scale * totals / (counts + self.prior)))

    def trusted(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.floor

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` agents with the highest trust (for ``knexa-cpm status``)."""
        ranked = sorted(((self.score(a), a) for a in self._stats), reverse=True)[:k]
        return [(a, s) for s, a in ranked]

    def bottom(self, k: int = 10) -> list[tuple[str, float]]:
        ranked = sorted((self.score(a), a) for a in self._stats)[:k]
        return [(a, s) for s, a in ranked]

    def state_dict(self) -> dict[str, Any]:
        return {
            "prior": self.prior, "scale": self.scale, "decay": self.decay, "floor": self.floor,
            "stats": {agent: [float(c), float(t)] for agent, (c, t) in self._stats.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prior = float(state["prior"])
        self.scale = float(state["scale"])
        self.decay = float(state["decay"])
        self.floor = float(state["floor"])
        self._stats = {str(agent): [float(c), float(t)] for agent, (c, t) in state["stats"].items()}
