"""A synthetic federation: agents with hidden skills, honest profiles, and rewards for teaching.

Pure numpy, deterministic for a seed. The simulator holds the truth that a
matchmaker never sees (per-category skills, a family compatibility matrix,
who is malicious) and shows the policies only the 32-dim profiles of
:mod:`knexa_node.profile`; policies learn from the noisy rewards it returns.

Agent i has a model family, a capacity (log10 parameters), a data histogram
h_i ~ Dirichlet(alpha) over the 12 categories, and skills
``s_i[c] = q_i (1 - exp(-3 * 12 h_i[c]))`` with a quality q_i that grows with
capacity: strong where it has data, weak elsewhere. Its Pass@1-proxy is the
mean skill over categories (a consortium test set uniform over categories).
Each round every agent also learns a little locally on its own categories.

Settings:

- ``nonadditive`` (default): teaching t -> s moves the student's skill in
  each category by ``eta * g(t, s) * (relu(s_t - s_s) - rho relu(s_s - s_t))``:
  it gains where the teacher is better and forgets a little where the teacher
  is worse (DESIGN.md: wrong answers overwrite skills). The synergy ``g`` is
  the product of a hidden family compatibility (1 within a family, a hidden
  0.2-0.9 across), a capacity fit (a teacher much larger than the student
  transfers less) and a protocol factor (logits, only within a family, carry
  more). Nothing here is additive in the two agents. A malicious teacher
  sends packages that damage the student's skills and sends a copy of the
  best honest agent's profile as its own (``mimic="best"``) or of a random
  honest agent's, another each round (``mimic="rotate"``).
- ``linear``: the paper's setting, reward ``r = 0.5 + 0.5 * theta* . [p_t, p_s]``
  (in percentage points) for a hidden theta*; the student's skills move by
  r/100 of their headroom.

The reward is the expected gain in the student's Pass@1-proxy in percentage
points, minus a small communication cost, plus Gaussian noise; the state
moves by the expected change (the noise is in the measurement).
``heterogeneity`` ``"high"``: Dirichlet(0.3) data, 5 families, capacities
over 2.5 decades; ``"low"``: Dirichlet(5), 2 families, 0.5 decade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from knexa_node.profile import CATEGORIES, FAMILIES, PROFILE_DIM, ProfileInputs, build_profile, squash_loss

N_CAT = len(CATEGORIES)
SETTINGS = ("nonadditive", "linear")
HETEROGENEITY = ("low", "high")


class SimError(ValueError):
    """A simulation was configured with impossible values."""


@dataclass(frozen=True)
class SimConfig:
    clients: int = 32
    heterogeneity: str = "high"
    setting: str = "nonadditive"
    malicious: int = 0
    mimic: str = "best"
    seed: int = 0
    eta: float = 0.08
    rho: float = 0.3
    local_rate: float = 0.004
    comm_cost: float = 0.02
    noise: float | None = None

    def __post_init__(self) -> None:
        if self.clients < 2:
            raise SimError("a federation needs at least 2 clients")
        if self.heterogeneity not in HETEROGENEITY:
            raise SimError(f"heterogeneity must be one of {HETEROGENEITY}")
        if self.setting not in SETTINGS:
            raise SimError(f"setting must be one of {SETTINGS}")
        if self.mimic not in ("best", "rotate"):
            raise SimError("mimic must be 'best' or 'rotate'")
        if not 0 <= self.malicious < self.clients:
            raise SimError("malicious must be between 0 and clients - 1")


class Federation:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        n = config.clients
        high = config.heterogeneity == "high"
        self.names = [f"agent-{k:05d}" for k in range(n)]
        self.index = {name: k for k, name in enumerate(self.names)}
        n_fam = 5 if high else 2
        self.family = rng.integers(0, n_fam, size=n)
        self.hist = rng.dirichlet(np.full(N_CAT, 0.3 if high else 5.0), size=n)
        self.capacity = rng.uniform(6.5, 9.0, size=n) if high else rng.uniform(7.75, 8.25, size=n)
        self.data_size = 10 ** (rng.uniform(3.0, 5.0, size=n) if high else rng.uniform(3.9, 4.1, size=n))
        quality = np.clip(0.45 + 0.18 * (self.capacity - 7.75) + rng.normal(0, 0.05, size=n), 0.2, 0.95)
        self.skill = quality[:, None] * (1.0 - np.exp(-3.0 * N_CAT * self.hist))
        compat = rng.uniform(0.2, 0.9, size=(len(FAMILIES), len(FAMILIES)))
        self.compat = np.triu(compat, 1) + np.triu(compat, 1).T + np.eye(len(FAMILIES))
        self.malicious = np.zeros(n, dtype=bool)
        self.malicious[rng.permutation(n)[: config.malicious]] = True
        self.theta = rng.normal(0.0, 1.0, size=2 * PROFILE_DIM)
        default_noise = 0.3 if config.setting == "nonadditive" else 0.5
        self.noise = default_noise if config.noise is None else float(config.noise)
        self.rng = np.random.default_rng([config.seed, 1])
        self._mimic_rng = np.random.default_rng([config.seed, 2])
        self.round = 0
        self.initial_pass = self.pass1().copy()
        self._previous: list[dict[str, float] | None] = [None] * n
        self._profiles = self._build_profiles()

    # -- what the matchmaker sees -------------------------------------------------

    def pass1(self) -> np.ndarray:
        return self.skill.mean(axis=1)

    def mean_pass(self) -> float:
        """Mean true Pass@1-proxy of the honest agents."""
        return float(self.pass1()[~self.malicious].mean())

    def _metrics(self, k: int, pass1: float) -> dict[str, float]:
        own = float(self.hist[k] @ self.skill[k])
        claimed = pass1
        return {
            "pass1": claimed,
            "pass5": 1.0 - (1.0 - claimed) ** 3,
            "val_loss": squash_loss(2.0 * (1.0 - own)),
            "dev_loss": squash_loss(2.0 * (1.0 - claimed)),
            "capacity": float(self.capacity[k]) / 12.0,
            "data_size": float(np.log10(self.data_size[k])) / 6.0,
        }

    def _build_profiles(self) -> dict[str, np.ndarray]:
        out = {}
        passes = self.pass1()
        for k, name in enumerate(self.names):
            metrics = self._metrics(k, float(passes[k]))
            inputs = ProfileInputs(FAMILIES[self.family[k]], metrics, self._previous[k], list(self.hist[k]))
            out[name] = build_profile(inputs)
            self._previous[k] = metrics
        if self.malicious.any():
            # A malicious node mimics the profile of the best honest agent
            # ("best"), or of a different random honest agent every round
            # ("rotate"), so that only the harm its packages do can give it away.
            honest = np.nonzero(~self.malicious)[0]
            best = self.names[honest[np.argmax(passes[honest])]]
            for k in np.nonzero(self.malicious)[0]:
                victim = best if self.config.mimic == "best" else self.names[self._mimic_rng.choice(honest)]
                out[self.names[k]] = out[victim].copy()
        return out

    def profiles(self) -> dict[str, np.ndarray]:
        """This round's profiles (copies; policies may keep them)."""
        return {name: p.copy() for name, p in self._profiles.items()}

    # -- the hidden truth ----------------------------------------------------------

    def indices(self, names: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self.index[n] for n in names], dtype=int)
        except KeyError as exc:
            raise SimError(f"unknown agent {exc.args[0]!r}") from None

    def _delta(self, t: np.ndarray, s: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Expected change of the students' skills, one row per pair (n x 12)."""
        St, Ss = self.skill[t], self.skill[s]
        if self.config.setting == "linear":
            P = np.stack([self._profiles[self.names[k]] for k in range(len(self.names))])
            r = 0.5 + 0.5 * np.concatenate([P[t], P[s]], axis=1) @ self.theta
            frac = (r / 100.0)[:, None]
            return np.where(frac > 0, frac * (1.0 - Ss), frac * Ss)
        g = self.compat[self.family[t], self.family[s]]
        g = g / (1.0 + 0.6 * np.maximum(self.capacity[t] - self.capacity[s] - 0.5, 0.0))
        g = g * np.where(logits, 1.3, 1.0)
        eta, rho = self.config.eta, self.config.rho
        delta = eta * g[:, None] * (np.maximum(St - Ss, 0.0) - rho * np.maximum(Ss - St, 0.0))
        poisoned = -eta * 3.0 * Ss
        return np.where(self.malicious[t][:, None], poisoned, delta)

    def _expected(self, t: np.ndarray, s: np.ndarray, logits: np.ndarray) -> np.ndarray:
        gain = 100.0 * self._delta(t, s, logits).mean(axis=1)
        return gain - self.config.comm_cost * (1.0 + 0.5 * logits)

    def expected_reward(self, teachers: Sequence[str], students: Sequence[str], protocols: Sequence[str]) -> np.ndarray:
        """True expected reward of each (teacher, student, protocol); the oracle's input."""
        logits = np.array([p == "logits" for p in protocols], dtype=bool)
        return self._expected(self.indices(teachers), self.indices(students), logits)

    def best_matching_value(self, budget: int, protocols: Sequence[str] = ("text",)) -> float:
        """Summed expected reward of a greedy disjoint matching on the truth (regret's yardstick)."""
        n = len(self.names)
        t, s = np.nonzero(~np.eye(n, dtype=bool))
        values = [self._expected(t, s, np.zeros(len(t), dtype=bool))]
        if "logits" in protocols:
            values.append(np.where(self.family[t] == self.family[s], self._expected(t, s, np.ones(len(t), dtype=bool)), -np.inf))
        v = np.max(np.stack(values), axis=0)
        order = np.argsort(-v, kind="stable")
        used: set[int] = set()
        total, taken = 0.0, 0
        for k in order:
            if taken >= budget:
                break
            a, b = int(t[k]), int(s[k])
            if a in used or b in used:
                continue
            used.update((a, b))
            total += float(v[k])
            taken += 1
        return total

    # -- one round -----------------------------------------------------------------

    def exchange(self, pairs: Sequence[tuple[str, str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """Run disjoint exchanges ``(teacher, student, protocol)`` at once.

        Returns (noisy rewards, expected rewards); students' skills move by
        the expected change computed on the state before the round.
        """
        if not pairs:
            return np.zeros(0), np.zeros(0)
        t = self.indices([p[0] for p in pairs])
        s = self.indices([p[1] for p in pairs])
        if len(set(t) | set(s)) != 2 * len(pairs):
            raise SimError("pairings of one round must be disjoint")
        logits = np.array([p[2] == "logits" for p in pairs], dtype=bool)
        if np.any(logits & (self.family[t] != self.family[s])):
            raise SimError("the logits protocol needs teacher and student of the same family")
        delta = self._delta(t, s, logits)
        expected = 100.0 * delta.mean(axis=1) - self.config.comm_cost * (1.0 + 0.5 * logits)
        self.skill[s] = np.clip(self.skill[s] + delta, 0.0, 1.0)
        rewards = expected + self.rng.normal(0.0, self.noise, size=len(pairs))
        return rewards, expected

    def end_round(self) -> None:
        """Local training on each agent's own categories, then next round's profiles."""
        headroom = 1.0 - self.skill
        self.skill += self.config.local_rate * np.minimum(1.0, N_CAT * self.hist) * headroom
        self.round += 1
        self._profiles = self._build_profiles()
