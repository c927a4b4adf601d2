"""Per-agent trust as a teacher, from what its students reported, bounded against hostile reports.

A teacher whose packages hurt students (a malicious or broken node, or one
whose profile overstates its skill) earns rewards far below what its
pairings should earn. Each feedback is one observation ``(teacher, student,
surprise, round)``; the policy passes as ``surprise`` the z-scored reward
minus what its bandit predicted for that pairing, so that what the pair's
context explains (an incompatible family, a weak student) is not blamed on
the teacher alone. Surprises are clipped to ``+-SURPRISE_BOUND``.

Bounds against members who lie (issue 15):

- **One student, one vote.** Per (teacher, student) the tracker keeps a
  decayed count ``c`` and sum; the student's opinion is ``sum / c`` and its
  weight ``min(c, 1)``, however often it reports. A teacher's mean is
  ``m = sum_s w_s o_s / (sum_s w_s + prior)`` and its trust ``sigmoid(scale * m)``.
- **Several students to gate.** A teacher is gated (not proposed as a
  teacher; it may still learn as a student) only when its trust is under
  ``floor`` *and* at least ``min_students`` distinct students have a recent
  report on it (weight at least :data:`RECENT_WEIGHT`). One hostile student
  can lower a teacher's trust to sigmoid(-2) = 0.12 at most (with the
  defaults, above the floor 0.1); it cannot gate anyone.
- **Decay per round.** :meth:`advance` multiplies every count and sum by
  ``decay`` for each round that passes, whether or not the teacher was
  paired: old evidence fades, and a gated teacher drifts back towards 0.5
  without new observations (with the defaults 33 rounds after three
  students each reported the worst surprise).
- **Exploration.** :meth:`allowed` lets a gated teacher back into the
  candidates with probability ``explore`` per round. The draw is a hash of
  (seed, round, agent), not a random state, so a replay decides the same.

Policies use trust twice: as a context feature (the bandit learns how much
it matters) and as the gate. Pure Python and numpy; state is plain numbers.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Iterable

import numpy as np

# As the policies' z clip: one student (weight at most 1) then moves a teacher's mean by at most
# 5 / (1 + prior) = 1, so its trust stays at or above sigmoid(-2) = 0.12, over the default floor.
SURPRISE_BOUND = 5.0
# A report counts towards the distinct students needed to gate while its weight is at least this
# (with decay 0.97: for about 45 rounds after it was made).
RECENT_WEIGHT = 0.25
# Evidence whose weight decays below this is dropped (about 230 rounds at 0.97).
_FORGET_WEIGHT = 1e-3
# After this many silent rounds in one step every entry is forgotten anyway; bounds advance()'s loop.
_MAX_DECAY_STEPS = 10_000


class TrustError(ValueError):
    """A trust observation or a stored trust state is malformed."""


class TrustTracker:
    def __init__(self, *, prior: float = 4.0, scale: float = 2.0, decay: float = 0.97, floor: float = 0.1,
                 min_students: int = 3, explore: float = 0.05, seed: int = 0) -> None:
        if not 0.0 < decay <= 1.0 or prior <= 0 or min_students < 1 or not 0.0 <= explore <= 1.0:
            raise TrustError("need 0 < decay <= 1, prior > 0, min_students >= 1, 0 <= explore <= 1")
        self.prior = float(prior)
        self.scale = float(scale)
        self.decay = float(decay)
        self.floor = float(floor)
        self.min_students = int(min_students)
        self.explore = float(explore)
        self.seed = int(seed)
        self.round: int | None = None  # the last round advanced to
        # teacher -> student -> [decayed count, decayed sum of surprises]
        self._stats: dict[str, dict[str, list[float]]] = {}

    # --- evidence ------------------------------------------------------------------------------

    def advance(self, round: int) -> None:
        """Decay all evidence once per round passed since the last call (idempotent per round).

        Decaying step by step makes the result independent of how the rounds
        are split between calls, so replaying a journal rebuilds it exactly.
        """
        round = int(round)
        if self.round is None or round <= self.round:
            self.round = round if self.round is None else max(self.round, round)
            return
        for _ in range(min(round - self.round, _MAX_DECAY_STEPS)):
            if not self._stats:
                break
            self._decay_once()
        if round - self.round >= _MAX_DECAY_STEPS:
            self._stats.clear()
        self.round = round

    def _decay_once(self) -> None:
        for teacher in list(self._stats):
            students = self._stats[teacher]
            for student in list(students):
                entry = students[student]
                entry[0] *= self.decay
                entry[1] *= self.decay
                if entry[0] < _FORGET_WEIGHT:
                    del students[student]
            if not students:
                del self._stats[teacher]

    def observe(self, teacher: str, student: str, surprise: float, round: int) -> None:
        """``student`` reported on ``teacher`` in ``round``; ``surprise`` is its z-reward minus the prediction."""
        if not math.isfinite(surprise):
            raise TrustError("surprise must be finite")
        self.advance(round)
        entry = self._stats.setdefault(teacher, {}).setdefault(student, [0.0, 0.0])
        entry[0] += 1.0
        entry[1] += min(max(float(surprise), -SURPRISE_BOUND), SURPRISE_BOUND)

    # --- scores and the gate -------------------------------------------------------------------

    def _summary(self, agent: str) -> tuple[float, int]:
        """(mean surprise shrunk towards 0, number of students with a recent report)."""
        weighted = weights = 0.0
        recent = 0
        for count, total in self._stats.get(agent, {}).values():
            weight = min(count, 1.0)
            weighted += weight * total / count
            weights += weight
            recent += weight >= RECENT_WEIGHT
        return weighted / (weights + self.prior), recent

    def score(self, agent: str) -> float:
        return 1.0 / (1.0 + math.exp(-self.scale * self._summary(agent)[0]))

    def scores(self, agents: Iterable[str]) -> np.ndarray:
        """Trust of each agent in ``agents`` (0.5 for an unknown one)."""
        means = np.array([self._summary(a)[0] for a in agents], dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-self.scale * means))

    def students_reporting(self, agent: str) -> int:
        """Distinct students with a recent report on ``agent`` as a teacher."""
        return self._summary(agent)[1]

    def gated(self, agents: Iterable[str]) -> np.ndarray:
        """True where an agent's trust is under the floor on reports of enough distinct students."""
        summaries = [self._summary(a) for a in agents]
        means = np.array([m for m, _ in summaries], dtype=np.float64)
        recent = np.array([r for _, r in summaries], dtype=np.int64)
        low = 1.0 / (1.0 + np.exp(-self.scale * means)) < self.floor
        return low & (recent >= self.min_students)

    def explores(self, agent: str, round: int) -> bool:
        """The per-round retry draw for a gated ``agent`` (deterministic in seed, round, agent)."""
        digest = hashlib.blake2b(f"{self.seed}:{int(round)}:{agent}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self.explore * 2.0**64

    def allowed(self, agents: Iterable[str], round: int) -> np.ndarray:
        """Who may teach in ``round``: everyone not gated, and gated agents on their retry draw."""
        names = list(agents)
        gated = self.gated(names)
        return np.array([not g or self.explores(a, round) for a, g in zip(names, gated)], dtype=bool)

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` agents with the highest trust (for ``knexa-cpm status``)."""
        ranked = sorted(((self.score(a), a) for a in self._stats), reverse=True)[:k]
        return [(a, s) for s, a in ranked]

    def bottom(self, k: int = 10) -> list[tuple[str, float]]:
        ranked = sorted((self.score(a), a) for a in self._stats)[:k]
        return [(a, s) for s, a in ranked]

    # --- persistence ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "prior": self.prior, "scale": self.scale, "decay": self.decay, "floor": self.floor,
            "min_students": self.min_students, "explore": self.explore, "seed": self.seed, "round": self.round,
            "stats": {teacher: {student: [float(c), float(t)] for student, (c, t) in students.items()}
                      for teacher, students in self._stats.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a saved state; evidence of the older per-teacher form is dropped (it names no student)."""
        stats: dict[str, dict[str, list[float]]] = {}
        for teacher, students in state["stats"].items():
            if not isinstance(students, dict):
                continue  # old form: [count, sum] per teacher, no way to tell its students apart
            for student, (count, total) in students.items():
                count, total = float(count), float(total)
                if not (math.isfinite(count) and math.isfinite(total)) or count <= 0 or abs(total) > SURPRISE_BOUND * count * (1 + 1e-9):
                    raise TrustError(f"stored trust of {teacher!r} by {student!r} is out of range")
                stats.setdefault(str(teacher), {})[str(student)] = [count, total]
        self.prior = float(state["prior"])
        self.scale = float(state["scale"])
        self.decay = float(state["decay"])
        self.floor = float(state["floor"])
        self.min_students = int(state.get("min_students", self.min_students))
        self.explore = float(state.get("explore", self.explore))
        self.seed = int(state.get("seed", self.seed))
        stored_round = state.get("round")
        self.round = None if stored_round is None else int(stored_round)
        self._stats = stats
