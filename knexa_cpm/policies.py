"""The matchmaking policy interface and its implementations; :func:`make_policy` builds one.

Every policy answers two calls, used alike by the CPM service, the simulator
and the benchmarks::

    pairs = policy.propose(profiles, budget, round)   # Mapping[str, ndarray] -> list[Pairing]
    policy.feedback(pairing, reward)                  # after the student reports

``propose`` also takes ``per_node=c`` (up to c teachers per student and c
students per teacher in a round; 1, the default, is the paper's disjoint
pairs, unchanged) and ``competence`` (peer -> per-category Pass@1 on the
public dev set, sent beside the 32-dim profile), which only ``knexa`` reads.

A :class:`Pairing` names the teacher, the student, the protocol (``"text"``:
decoded predictions, works across tokenizers; ``"logits"``: only between
agents of the same family) and the context vector the policy scored;
feedback needs nothing but the pairing and the reward, so replaying a
journal of ``(pairing, reward)`` rebuilds the state exactly
(:mod:`knexa_cpm.state`). At most one pairing per agent per round
(disjoint pairs) when ``per_node`` is 1, at most ``budget`` pairings.

Policies:

- ``random``: uniform random disjoint pairs, random direction and protocol.
- ``heuristic``: greedy max JS divergence of data histograms; the higher
  Pass@1 teaches; text protocol.
- ``oracle``: greedy on the true expected reward; needs the simulator's
  vectorized ``expected_reward(teachers, students, protocols) -> ndarray``.
- ``linucb``: the paper's Algorithm 1 as published: every admissible
  (teacher, student, protocol) tuple, context ``[p_teacher, p_student]``,
  lambda 0.01, a constant beta0 = 1.0, z-scored rewards (clipped, median/MAD
  over a window: :class:`knexa_cpm.bandit.RobustZScore`), greedy
  disjoint selection. Its score is additive in the two agents, so it can
  rank good teachers and needy students but cannot see compatibility.
- ``knexa`` (ours, the default): the same greedy UCB loop on the
  interaction features of :func:`knexa_cpm.features.knexa_features`
  (coverage of the student's missing categories, JS divergence, performance
  gap and its sign, capacity mismatch, same family, protocol, products), so
  that a linear model can represent pairwise synergy and roles are decided by
  the score, not by index order. The raw profiles ``[p_teacher, p_student]``
  are appended (``raw=True``, 88 dims in all) so that knexa keeps everything
  the paper's additive model can learn: without them it closed 55% of the
  random->oracle gap on the paper's linear setting, with them 84% (bench/
  cpm_policies.py, 5 seeds). Ridge ``lambda`` 1.0 instead of 0.01: the
  features are bounded and correlated and a weak prior made early rounds
  erratic. Beta decays as ``beta0 / sqrt(1 + t / beta_tau)``: the context
  space is small, so exploration pays off early and costs later. A teacher
  trust score (:mod:`knexa_cpm.trust`) is a feature and a gate; agents the
  gate leaves unpaired are paired among themselves, so it never costs a pair. Large
  federations get a candidate prefilter (see :meth:`KnexaPolicy._candidates`)
  so that a round stays sub-quadratic. With ``competence`` the context also
  holds :func:`knexa_cpm.features.competence_features` ("teacher strong where
  the student is weak" on the public dev set, and the pair's history; option
  ``competence=True``, which the lock-step runner sets), and the score adds ``prior_weight * teach_need_fresh``: an informative prior the
  bandit corrects, so that the first rounds, with no feedback yet, already
  pick teachers who know what the student lacks and do not repeat a pair.
  Fresh need also leaves out what the student is estimated to hold already
  from any earlier teacher (``held``, updated on each feedback from the
  competences of the pair's round): every teacher answers the same public
  transfer prompts. And it counts only what one package carries
  (``budget_categories``: the members' exchange budget over the transfer
  prompts per category, ``cpm.package_categories``; 0: no cap), water-filled
  over the categories the student asks for as the teacher's round-robin
  does, so a teacher fair in eight weak categories is not credited with
  eight when a package holds four. ``prior_weight`` 25 puts a typical fresh complementary
  pair (teacher at 0.5 in 2 of 12 categories the student lacks: need ~0.08)
  at ~2 on the scale of the z-scored rewards: with 2 (before), the UCB bonus
  of a 100-dim context with few updates (~1 at beta 0.5) outweighed it and
  chose the pairs, at c = 1 worse than random on the 8-node study.
  Unlike the paper's greedy selection, knexa takes the round's pairings
  with the largest total score (``matching="best"``,
  :func:`knexa_cpm.matching.select_best`; ``"greedy"`` keeps Algorithm 1's):
  the score estimates what each exchange teaches, and the round should teach
  the most in all, not start with its single best pair.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from knexa_cpm.bandit import BanditError, LinUCB, RobustZScore
from knexa_cpm.features import (
    COMPETENCE_DIM, CONCAT_DIM, PASS1, competence_features, concat_features, held_after, knexa_dim, knexa_features, pair_js,
)
from knexa_cpm.matching import greedy_capped, select, select_best
from knexa_cpm.trust import SURPRISE_BOUND, TrustTracker
from knexa_node.profile import CATEGORIES, FAMILY_SLICE, PROFILE_DIM

PROTOCOLS: tuple[str, ...] = ("text", "logits")

ExpectedReward = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]
Competence = Mapping[str, Mapping[str, float]]  # peer -> category -> dev-set Pass@1


class PolicyError(ValueError):
    """Bad input to a policy: malformed profiles, an unknown policy or option, a bad feedback."""


@dataclass(frozen=True, eq=False)
class Pairing:
    """One proposed exchange: ``teacher`` sends a package to ``student`` over ``protocol``."""

    teacher: str
    student: str
    protocol: str
    context: np.ndarray = field(repr=False)
    round: int = 0
    score: float = 0.0

    def same_as(self, other: "Pairing") -> bool:
        return (self.teacher, self.student, self.protocol, self.round) == (
            other.teacher, other.student, other.protocol, other.round
        ) and np.array_equal(self.context, other.context)


class Policy(Protocol):
    name: str

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int, *, per_node: int = 1,
                competence: Competence | None = None) -> list[Pairing]: ...
    def feedback(self, pairing: Pairing, reward: float) -> None: ...
    def validate_feedback(self, pairing: Pairing, reward: float) -> None: ...
    def config(self) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def stack_profiles(profiles: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Agents in a deterministic (sorted) order and their profiles as one matrix."""
    names = sorted(profiles)
    if not all(isinstance(n, str) for n in names):
        raise PolicyError("agent names must be strings")
    if not names:
        return [], np.zeros((0, PROFILE_DIM))
    try:
        P = np.stack([np.asarray(profiles[n], dtype=np.float64) for n in names])
    except (ValueError, TypeError) as exc:
        raise PolicyError(f"profiles must all be vectors of {PROFILE_DIM} numbers: {exc}") from None
    if P.shape != (len(names), PROFILE_DIM):
        raise PolicyError(f"profiles must all be vectors of {PROFILE_DIM} numbers, got {P.shape[1:]}")
    if not np.all(np.isfinite(P)):
        raise PolicyError("a profile holds NaN or infinity")
    return names, P


def same_family(P: np.ndarray, t: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.argmax(P[t, FAMILY_SLICE], axis=1) == np.argmax(P[s, FAMILY_SLICE], axis=1)


def all_directed(n: int) -> tuple[np.ndarray, np.ndarray]:
    t, s = np.nonzero(~np.eye(n, dtype=bool))
    return t, s


def with_protocols(P: np.ndarray, t: np.ndarray, s: np.ndarray, protocols: Sequence[str]):
    """Expand (t, s) pairs into admissible (t, s, protocol index) tuples: logits only within a family."""
    ts, ss, ps = [], [], []
    for k, name in enumerate(protocols):
        keep = same_family(P, t, s) if name == "logits" else np.ones(len(t), dtype=bool)
        ts.append(t[keep]); ss.append(s[keep]); ps.append(np.full(int(keep.sum()), k))
    return np.concatenate(ts), np.concatenate(ss), np.concatenate(ps)


def _check_per_node(per_node: int) -> int:
    if isinstance(per_node, bool) or not isinstance(per_node, (int, np.integer)) or per_node < 1:
        raise PolicyError(f"per_node must be an integer >= 1, got {per_node!r}")
    return int(per_node)


def _check_budget(budget: int, n: int, per_node: int = 1) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise PolicyError(f"budget must be an integer, got {budget!r}")
    most = n // 2 if per_node <= 1 else per_node * n
    return max(0, min(int(budget), most))


def _check_protocols(protocols: Sequence[str]) -> tuple[str, ...]:
    protocols = tuple(protocols)
    if not protocols or any(p not in PROTOCOLS for p in protocols) or len(set(protocols)) != len(protocols):
        raise PolicyError(f"protocols must be distinct names from {PROTOCOLS}, got {protocols}")
    return protocols


class _BasePolicy:
    name = "base"

    def __init__(self, protocols: Sequence[str] = ("text",)) -> None:
        self.protocols = _check_protocols(protocols)
        self.feedback_count = 0

    def config(self) -> dict[str, Any]:
        return {"protocols": list(self.protocols)}

    def validate_feedback(self, pairing: Pairing, reward: float) -> None:
        if not isinstance(pairing, Pairing):
            raise PolicyError("feedback needs a Pairing")
        if isinstance(reward, bool) or not isinstance(reward, (int, float, np.floating, np.integer)):
            raise PolicyError(f"reward must be a number, got {type(reward).__name__}")
        if not math.isfinite(float(reward)):
            raise PolicyError("reward must be finite")
        if pairing.protocol not in self.protocols:
            raise PolicyError(f"protocol {pairing.protocol!r} is not one this policy proposes")

    def feedback(self, pairing: Pairing, reward: float) -> None:
        self.validate_feedback(pairing, reward)
        self.feedback_count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"feedback_count": self.feedback_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.feedback_count = int(state["feedback_count"])

    def _pairings(self, names, P, t, s, proto, scores, taken, round, X) -> list[Pairing]:
        return [
            Pairing(names[t[k]], names[s[k]], self.protocols[proto[k]], np.array(X[k]), int(round), float(scores[k]))
            for k in taken
        ]


class RandomPolicy(_BasePolicy):
    name = "random"

    def __init__(self, seed: int = 0, protocols: Sequence[str] = ("text",)) -> None:
        super().__init__(protocols)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "seed": self.seed}

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int, *, per_node: int = 1,
                competence: Competence | None = None) -> list[Pairing]:
        names, P = stack_profiles(profiles)
        per_node = _check_per_node(per_node)
        budget = _check_budget(budget, len(names), per_node)
        if per_node > 1:  # uniform random scores over every directed pair, then the caps
            t, s, proto = with_protocols(P, *all_directed(len(names)), self.protocols)
            scores = self.rng.random(len(t))
            taken = greedy_capped(scores, t, s, budget, per_node)
            X = concat_features(P, t, s)
            return self._pairings(names, P, t, s, proto, np.zeros(len(t)), taken, round, X)
        order = self.rng.permutation(len(names))[: 2 * budget]
        t, s = order[0::2], order[1::2]
        flip = self.rng.random(len(t)) < 0.5
        t, s = np.where(flip, s, t), np.where(flip, t, s)
        out = []
        for a, b in zip(t, s):
            choices = [k for k, p in enumerate(self.protocols) if p != "logits" or same_family(P, np.array([a]), np.array([b]))[0]]
            k = choices[int(self.rng.integers(len(choices)))]
            x = concat_features(P, np.array([a]), np.array([b]))[0]
            out.append(Pairing(names[a], names[b], self.protocols[k], x, int(round), 0.0))
        return out

    def state_dict(self) -> dict[str, Any]:
        # The PCG64 state holds 128-bit integers: JSON keeps them exact.
        return {**super().state_dict(), "rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rng.bit_generator.state = json.loads(state["rng"])


class HeuristicPolicy(_BasePolicy):
    name = "heuristic"

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int, *, per_node: int = 1,
                competence: Competence | None = None) -> list[Pairing]:
        names, P = stack_profiles(profiles)
        per_node = _check_per_node(per_node)
        budget = _check_budget(budget, len(names), per_node)
        if budget == 0:
            return []
        i, j = np.triu_indices(len(names), k=1)
        higher = P[i, PASS1] >= P[j, PASS1]
        t, s = np.where(higher, i, j), np.where(higher, j, i)
        scores = pair_js(P, t, s)
        taken = select(scores, t, s, budget, per_node)
        X = concat_features(P, t[taken], s[taken])
        proto = np.zeros(len(t), dtype=int)
        return self._pairings(names, P, t, s, proto, scores, taken, round, dict(zip(taken, X)))


class OraclePolicy(_BasePolicy):
    name = "oracle"

    def __init__(self, expected_reward: ExpectedReward | None = None, protocols: Sequence[str] = ("text",)) -> None:
        if expected_reward is None:
            raise PolicyError("the oracle policy needs expected_reward=callable (the simulator's)")
        super().__init__(protocols)
        self.expected_reward = expected_reward

    def config(self) -> dict[str, Any]:
        raise PolicyError("the oracle policy lives in a simulation and cannot be persisted")

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int, *, per_node: int = 1,
                competence: Competence | None = None) -> list[Pairing]:
        names, P = stack_profiles(profiles)
        per_node = _check_per_node(per_node)
        budget = _check_budget(budget, len(names), per_node)
        if budget == 0:
            return []
        t, s, proto = with_protocols(P, *all_directed(len(names)), self.protocols)
        scores = np.asarray(self.expected_reward([names[k] for k in t], [names[k] for k in s],
                                                 [self.protocols[k] for k in proto]), dtype=np.float64)
        taken = select(scores, t, s, budget, per_node)
        X = concat_features(P, t[taken], s[taken])
        return self._pairings(names, P, t, s, proto, scores, taken, round, dict(zip(taken, X)))


class _UCBPolicy(_BasePolicy):
    """Greedy disjoint selection on a LinUCB score over some context map."""

    def __init__(self, dim: int, *, lam: float, beta0: float, protocols: Sequence[str], clip: float) -> None:
        super().__init__(protocols)
        self.bandit = LinUCB(dim, lam=lam, beta=beta0)
        self.normalizer = RobustZScore(clip=clip)

    def beta(self) -> float:
        return self.bandit.beta

    def validate_feedback(self, pairing: Pairing, reward: float) -> None:
        super().validate_feedback(pairing, reward)
        try:
            self.bandit.check_context(pairing.context)
        except BanditError as exc:
            raise PolicyError(str(exc)) from None

    def feedback(self, pairing: Pairing, reward: float) -> None:
        super().feedback(pairing, reward)
        z = self.normalizer(float(reward))
        self._after_feedback(pairing, z)  # before the update: it may compare z with the prediction
        self.bandit.update(pairing.context, z)

    def _after_feedback(self, pairing: Pairing, z: float) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "bandit": self.bandit.state_dict(), "normalizer": self.normalizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        try:
            self.bandit.load_state_dict(state["bandit"])
            self.normalizer.load_state_dict(state["normalizer"])
        except BanditError as exc:
            raise PolicyError(str(exc)) from None


class LinUCBPolicy(_UCBPolicy):
    name = "linucb"

    def __init__(self, lam: float = 0.01, beta0: float = 1.0, protocols: Sequence[str] = ("text",), clip: float = 5.0) -> None:
        super().__init__(CONCAT_DIM, lam=lam, beta0=beta0, protocols=protocols, clip=clip)
        self.options = {"lam": lam, "beta0": beta0, "clip": clip}

    def config(self) -> dict[str, Any]:
        return {**super().config(), **self.options}

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int, *, per_node: int = 1,
                competence: Competence | None = None) -> list[Pairing]:
        names, P = stack_profiles(profiles)
        per_node = _check_per_node(per_node)
        budget = _check_budget(budget, len(names), per_node)
        if budget == 0:
            return []
        t, s, proto = with_protocols(P, *all_directed(len(names)), self.protocols)
        X = concat_features(P, t, s)
        scores = self.bandit.score(X)
        taken = select(scores, t, s, budget, per_node)
        return self._pairings(names, P, t, s, proto, scores, taken, round, X)


class KnexaPolicy(_UCBPolicy):
    name = "knexa"
    # Options that only weigh a proposal's score: a stored state of another value still fits (knexa_cpm.state).
    SCORING_OPTIONS = ("prior_weight", "beta0", "beta_tau", "max_candidates", "group_size", "shortlist",
                       "budget_categories", "matching")
    MATCHINGS = ("best", "greedy")

    def __init__(
        self,
        lam: float = 1.0,
        beta0: float = 0.5,
        beta_tau: float = 50.0,
        raw: bool = True,
        trust: bool = True,
        protocols: Sequence[str] = ("text",),
        clip: float = 5.0,
        max_candidates: int = 100_000,
        group_size: int = 8,
        shortlist: int = 8,
        seed: int = 0,
        trust_floor: float = 0.1,
        competence: bool = False,
        prior_weight: float = 25.0,
        budget_categories: float = 0.0,
        matching: str = "best",
    ) -> None:
        super().__init__(knexa_dim(raw) + (COMPETENCE_DIM if competence else 0), lam=lam, beta0=beta0,
                         protocols=protocols, clip=clip)
        if max_candidates < 2 or group_size < 2 or shortlist < 0:
            raise PolicyError("max_candidates and group_size must be >= 2, shortlist >= 0")
        if not (math.isfinite(budget_categories) and budget_categories >= 0):
            raise PolicyError("budget_categories must be a finite number >= 0 (0: no cap)")
        if matching not in self.MATCHINGS:
            raise PolicyError(f"matching must be one of {', '.join(self.MATCHINGS)}, got {matching!r}")
        self.options = {
            "lam": lam, "beta0": beta0, "beta_tau": beta_tau, "raw": raw, "trust": trust, "clip": clip,
            "max_candidates": max_candidates, "group_size": group_size, "shortlist": shortlist, "seed": seed,
            "trust_floor": trust_floor, "competence": competence, "prior_weight": prior_weight,
            "budget_categories": float(budget_categories), "matching": matching,
        }
        self.use_competence = bool(competence)
        # (teacher, student) -> [exchanges with feedback, last round]: the pair history the features read.
        self.history: dict[tuple[str, str], list[int]] = {}
        # Node -> its latest dev-set competence per category (CATEGORIES order), as its last profile round sent it,
        # and student -> estimated share of each category's transfer prompts it holds verified answers to.
        self.last_competence: dict[str, list[float]] = {}
        self.held: dict[str, list[float]] = {}
        self.raw = bool(raw)
        self.use_trust = bool(trust)
        self.trust = TrustTracker(floor=trust_floor, seed=seed)
        self.rng = np.random.default_rng(seed)

    def config(self) -> dict[str, Any]:
        return {**super().config(), **self.options}

    def beta(self) -> float:
        return self.options["beta0"] / math.sqrt(1.0 + self.bandit.updates / self.options["beta_tau"])

    def _features(self, P, t, s, proto, trust_scores, names=None, competence=None, round=0) -> np.ndarray:
        logits = np.array([self.protocols[k] == "logits" for k in proto], dtype=np.float64) if len(self.protocols) > 1 else None
        X = knexa_features(P, t, s, logits=logits, trust=trust_scores, raw=self.raw)
        if not self.use_competence:
            return X
        n = len(P)
        C, known = np.zeros((n, len(CATEGORIES))), np.zeros(n, dtype=bool)
        held = np.zeros((n, len(CATEGORIES)))
        for i, name in enumerate(names or []):
            mine = (competence or {}).get(name)
            if mine:
                C[i] = [min(max(float(mine.get(c, 0.0)), 0.0), 1.0) for c in CATEGORIES]
                known[i] = True
                self.last_competence[name] = C[i].tolist()
            if name in self.held:
                held[i] = self.held[name]
        count, recent = np.zeros(len(t)), np.zeros(len(t))
        if names is not None and self.history:
            for k, (a, b) in enumerate(zip(t.tolist(), s.tolist())):
                seen = self.history.get((names[a], names[b]))
                if seen:
                    count[k], recent[k] = seen[0], 1.0 / (1.0 + max(int(round) - seen[1], 0))
        extra = competence_features(C, known, t, s, count, recent, held, self.options["budget_categories"])
        return np.concatenate([X, extra], axis=1)

    def _prior(self, X: np.ndarray) -> np.ndarray:
        """``prior_weight * teach_need_fresh`` (the last competence feature), 0 without competence."""
        if not self.use_competence:
            return np.zeros(len(X))
        return self.options["prior_weight"] * X[:, -1]

    def _candidates(self, P: np.ndarray, trust_scores: np.ndarray, allowed: np.ndarray, beta: float):
        """Directed (teacher, student) candidates: all of them, or a sub-quadratic prefilter.

        Prefilter for N (N - 1) > ``max_candidates``: each agent is scored as
        a teacher of the consortium's mean profile (O(N d^2)) and the
        ``shortlist`` best become candidate teachers of everyone; in addition
        agents are dealt into random groups of ``group_size`` and every
        directed pair inside a group is a candidate (exploration, and pairs
        the shortlist misses). That is N (shortlist + group_size) candidates.
        """
        n = len(P)
        if n * (n - 1) <= self.options["max_candidates"]:
            t, s = all_directed(n)
        else:
            everyone = np.arange(n)
            mean_profile = np.vstack([P, P.mean(axis=0, keepdims=True)])
            virtual = np.full(n, n)
            trust_ext = np.append(trust_scores, 1.0)
            X = knexa_features(mean_profile, everyone, virtual, trust=trust_ext, raw=self.raw)
            if self.use_competence:  # the virtual average student has no competence and no history
                X = np.concatenate([X, np.zeros((n, COMPETENCE_DIM))], axis=1)
            potential = np.where(allowed, self.bandit.score(X, beta), -np.inf)
            k = min(self.options["shortlist"], n)
            top = np.argpartition(-potential, k - 1)[:k] if k else np.zeros(0, dtype=int)
            st = np.repeat(top, n)
            ss = np.tile(everyone, len(top))
            g = self.options["group_size"]
            perm = self.rng.permutation(n)
            pad = (-n) % g
            groups = np.concatenate([perm, perm[:pad]]).reshape(-1, g)
            gi, gj = np.nonzero(~np.eye(g, dtype=bool))
            gt, gs = groups[:, gi].ravel(), groups[:, gj].ravel()
            t, s = np.concatenate([st, gt]), np.concatenate([ss, gs])
            keep = t != s
            t, s = t[keep], s[keep]
            # Duplicates (shortlist pairs also inside a group) are harmless: greedy
            # selection skips the second copy because both agents are used.
        keep = allowed[t]
        return t[keep], s[keep]

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int, *, per_node: int = 1,
                competence: Competence | None = None) -> list[Pairing]:
        names, P = stack_profiles(profiles)
        per_node = _check_per_node(per_node)
        budget = _check_budget(budget, len(names), per_node)
        if budget == 0:
            return []
        self.trust.advance(round)
        trust_scores = self.trust.scores(names) if self.use_trust else np.ones(len(names))
        allowed = self.trust.allowed(names, round) if self.use_trust else np.ones(len(names), dtype=bool)
        beta = self.beta()
        t, s = self._candidates(P, trust_scores, allowed, beta)
        t, s, proto = with_protocols(P, t, s, self.protocols)
        X = self._features(P, t, s, proto, trust_scores, names, competence, round)
        n = len(names)
        scores = self.bandit.score(X, beta, fast=n * (n - 1) > self.options["max_candidates"]) + self._prior(X)
        taken = self._select(scores, t, s, budget, per_node)
        pairings = self._pairings(names, P, t, s, proto, scores, taken, round, X)
        if len(pairings) < budget and not allowed.all():
            pairings += self._pairs_among_gated(names, P, trust_scores, allowed, pairings, budget - len(pairings), round,
                                                beta, competence)
        return pairings

    def _pairs_among_gated(self, names: list[str], P: np.ndarray, trust_scores: np.ndarray, allowed: np.ndarray,
                           pairings: list[Pairing], missing: int, round: int, beta: float,
                           competence: Competence | None) -> list[Pairing]:
        """Pairs that the gate alone would cost: a gated teacher teaches another gated agent left unpaired.

        Without this, two gated agents left over can never pair (neither may
        teach), and a small federation loses a pair every round (issue 15).
        A gated teacher never teaches a trusted student here.
        """
        used = {name for p in pairings for name in (p.teacher, p.student)}
        left = np.array([k for k, name in enumerate(names) if not allowed[k] and name not in used], dtype=int)
        limit = int(math.isqrt(self.options["max_candidates"]))
        left = left[:limit]
        if len(left) < 2:
            return []
        t, s = all_directed(len(left))
        t, s, proto = with_protocols(P, left[t], left[s], self.protocols)
        X = self._features(P, t, s, proto, trust_scores, names, competence, round)
        scores = self.bandit.score(X, beta) + self._prior(X)
        taken = self._select(scores, t, s, missing, per_node=1)
        return self._pairings(names, P, t, s, proto, scores, taken, round, X)

    def _select(self, scores: np.ndarray, t: np.ndarray, s: np.ndarray, budget: int, per_node: int) -> list[int]:
        """The round's pairings under the ``matching`` option: the best total, or best-first (Algorithm 1)."""
        return (select_best if self.options["matching"] == "best" else select)(scores, t, s, budget, per_node)

    def failed_claims(self, pairing: Pairing, count: int) -> None:
        """The student's sandbox failed ``count`` answers the teacher had marked verified: evidence against it.

        One observation at the worst surprise, whatever ``count``: per (teacher, student) the tracker
        averages it with that student's other reports, so one student still has one bounded vote.
        """
        if count > 0:
            self.trust.observe(pairing.teacher, pairing.student, -SURPRISE_BOUND, pairing.round)

    def _after_feedback(self, pairing: Pairing, z: float) -> None:
        # Trust sees only the part of z that the pairing's context does not predict, so that what
        # belongs to the pair (incompatible families, a weak student) is not blamed on the teacher.
        predicted = float(self.bandit.mean(np.asarray(pairing.context, dtype=np.float64)[None, :])[0])
        self.trust.observe(pairing.teacher, pairing.student, z - predicted, pairing.round)
        seen = self.history.setdefault((pairing.teacher, pairing.student), [0, 0])
        seen[0] += 1
        seen[1] = max(seen[1], int(pairing.round))
        teacher, student = self.last_competence.get(pairing.teacher), self.last_competence.get(pairing.student)
        if teacher is not None and student is not None:
            before = self.held.get(pairing.student, [0.0] * len(CATEGORIES))
            self.held[pairing.student] = held_after(np.array(before), np.array(teacher), np.array(student),
                                                      self.options["budget_categories"]).tolist()

    def state_dict(self) -> dict[str, Any]:
        history = [[t, s, c, r] for (t, s), (c, r) in sorted(self.history.items())]
        return {**super().state_dict(), "trust": self.trust.state_dict(), "rng": json.dumps(self.rng.bit_generator.state),
                "history": history, "last_competence": dict(sorted(self.last_competence.items())),
                "held": dict(sorted(self.held.items()))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.trust.load_state_dict(state["trust"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.history = {(str(t), str(s)): [int(c), int(r)] for t, s, c, r in state.get("history", [])}
        # States saved before the transfer-coverage estimate have neither key: start it empty.
        self.last_competence = {str(k): _categories_row(v) for k, v in state.get("last_competence", {}).items()}
        self.held = {str(k): _categories_row(v) for k, v in state.get("held", {}).items()}


def _categories_row(values: Any) -> list[float]:
    """One stored per-category row, checked: a state file is input like any other."""
    row = [float(v) for v in values]
    if len(row) != len(CATEGORIES) or not all(0.0 <= v <= 1.0 for v in row):
        raise PolicyError(f"a per-category row must hold {len(CATEGORIES)} values in [0, 1]")
    return row


POLICIES: dict[str, type] = {
    "random": RandomPolicy,
    "heuristic": HeuristicPolicy,
    "oracle": OraclePolicy,
    "linucb": LinUCBPolicy,
    "knexa": KnexaPolicy,
}
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def make_policy(name: str, **options: Any) -> Policy:
    """Build a policy by name; unknown names or options raise :class:`PolicyError`."""
    cls = POLICIES.get(name)
    if cls is None:
        raise PolicyError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise PolicyError(f"bad options for policy {name!r}: {exc}") from None


# Policies that pair nobody: the LocalOnly baseline runs the whole protocol without exchanges.
NO_PAIRING = "local-only"


class _NoPairing:
    name = NO_PAIRING

    def propose(self, profiles: Any, budget: int, round: int, **_: Any) -> list[Pairing]:
        return []

    def feedback(self, pairing: Pairing, reward: float) -> None:
        raise PolicyError("local-only proposes nothing, so it takes no feedback")

    def validate_feedback(self, pairing: Pairing, reward: float) -> None:
        self.feedback(pairing, reward)

    def config(self) -> dict[str, Any]:
        return {"name": NO_PAIRING}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def build_policy(name: str, seed: int, *, competence: bool = False, budget_categories: float = 0.0) -> Any:
    """A policy by name, seeded where it draws; ``local-only`` pairs nobody.

    ``competence``: the knexa policy reads the nodes' dev-set competence and pair history (its context then
    has :data:`~knexa_cpm.features.COMPETENCE_DIM` more dims); off where competence is not sent yet.
    ``budget_categories``: what one package carries, in categories' worth of transfer prompts (the nodes'
    exchange budget over the transfer prompts per category; 0: everything asked), for knexa's estimate.
    """
    if name == NO_PAIRING:
        return _NoPairing()
    options: dict[str, Any] = {"seed": seed} if name in ("random", "knexa", "linucb") else {}
    if name == "knexa" and competence:
        options["competence"] = True
        options["budget_categories"] = budget_categories
    try:
        return make_policy(name, **options)
    except PolicyError:
        return make_policy(name)
