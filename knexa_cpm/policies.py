"""The matchmaking policy interface and its implementations; :func:`make_policy` builds one.

Every policy answers two calls, used alike by the CPM service, the simulator
and the benchmarks::

    pairs = policy.propose(profiles, budget, round)   # Mapping[str, ndarray] -> list[Pairing]
    policy.feedback(pairing, reward)                  # after the student reports

A :class:`Pairing` names the teacher, the student, the protocol (``"text"``:
decoded predictions, works across tokenizers; ``"logits"``: only between
agents of the same family) and the context vector the policy scored;
feedback needs nothing but the pairing and the reward, so replaying a
journal of ``(pairing, reward)`` rebuilds the state exactly
(:mod:`knexa_cpm.state`). At most one pairing per agent per round
(disjoint pairs), at most ``budget`` pairings.

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
  so that a round stays sub-quadratic.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from knexa_cpm.bandit import BanditError, LinUCB, RobustZScore
from knexa_cpm.features import (
    CONCAT_DIM, PASS1, concat_features, knexa_dim, knexa_features, pair_js,
)
from knexa_cpm.trust import TrustTracker
from knexa_node.profile import FAMILY_SLICE, PROFILE_DIM

PROTOCOLS: tuple[str, ...] = ("text", "logits")

ExpectedReward = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]


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

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int) -> list[Pairing]: ...
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


def greedy_disjoint(scores: np.ndarray, t: np.ndarray, s: np.ndarray, budget: int) -> list[int]:
    """Indices of candidates taken best-first so that no agent appears twice (supplement Alg. 1)."""
    order = np.argsort(-scores, kind="stable")
    # Plain Python ints: indexing numpy arrays item by item is ~10x slower.
    used: set[int] = set()
    taken: list[int] = []
    if budget <= 0:
        return taken
    for k, a, b in zip(order.tolist(), t[order].tolist(), s[order].tolist()):
        if a in used or b in used:
            continue
        used.add(a); used.add(b)
        taken.append(k)
        if len(taken) >= budget:
            break
    return taken


def _check_budget(budget: int, n: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise PolicyError(f"budget must be an integer, got {budget!r}")
    return max(0, min(int(budget), n // 2))


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

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int) -> list[Pairing]:
        names, P = stack_profiles(profiles)
        budget = _check_budget(budget, len(names))
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

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int) -> list[Pairing]:
        names, P = stack_profiles(profiles)
        budget = _check_budget(budget, len(names))
        if budget == 0:
            return []
        i, j = np.triu_indices(len(names), k=1)
        higher = P[i, PASS1] >= P[j, PASS1]
        t, s = np.where(higher, i, j), np.where(higher, j, i)
        scores = pair_js(P, t, s)
        taken = greedy_disjoint(scores, t, s, budget)
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

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int) -> list[Pairing]:
        names, P = stack_profiles(profiles)
        budget = _check_budget(budget, len(names))
        if budget == 0:
            return []
        t, s, proto = with_protocols(P, *all_directed(len(names)), self.protocols)
        scores = np.asarray(self.expected_reward([names[k] for k in t], [names[k] for k in s],
                                                 [self.protocols[k] for k in proto]), dtype=np.float64)
        taken = greedy_disjoint(scores, t, s, budget)
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

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int) -> list[Pairing]:
        names, P = stack_profiles(profiles)
        budget = _check_budget(budget, len(names))
        if budget == 0:
            return []
        t, s, proto = with_protocols(P, *all_directed(len(names)), self.protocols)
        X = concat_features(P, t, s)
        scores = self.bandit.score(X)
        taken = greedy_disjoint(scores, t, s, budget)
        return self._pairings(names, P, t, s, proto, scores, taken, round, X)


class KnexaPolicy(_UCBPolicy):
    name = "knexa"

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
    ) -> None:
        super().__init__(knexa_dim(raw), lam=lam, beta0=beta0, protocols=protocols, clip=clip)
        if max_candidates < 2 or group_size < 2 or shortlist < 0:
            raise PolicyError("max_candidates and group_size must be >= 2, shortlist >= 0")
        self.options = {
            "lam": lam, "beta0": beta0, "beta_tau": beta_tau, "raw": raw, "trust": trust, "clip": clip,
            "max_candidates": max_candidates, "group_size": group_size, "shortlist": shortlist, "seed": seed,
            "trust_floor": trust_floor,
        }
        self.raw = bool(raw)
        self.use_trust = bool(trust)
        self.trust = TrustTracker(floor=trust_floor, seed=seed)
        self.rng = np.random.default_rng(seed)

    def config(self) -> dict[str, Any]:
        return {**super().config(), **self.options}

    def beta(self) -> float:
        return self.options["beta0"] / math.sqrt(1.0 + self.bandit.updates / self.options["beta_tau"])

    def _features(self, P, t, s, proto, trust_scores) -> np.ndarray:
        logits = np.array([self.protocols[k] == "logits" for k in proto], dtype=np.float64) if len(self.protocols) > 1 else None
        return knexa_features(P, t, s, logits=logits, trust=trust_scores, raw=self.raw)

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

    def propose(self, profiles: Mapping[str, np.ndarray], budget: int, round: int) -> list[Pairing]:
        names, P = stack_profiles(profiles)
        budget = _check_budget(budget, len(names))
        if budget == 0:
            return []
        self.trust.advance(round)
        trust_scores = self.trust.scores(names) if self.use_trust else np.ones(len(names))
        allowed = self.trust.allowed(names, round) if self.use_trust else np.ones(len(names), dtype=bool)
        beta = self.beta()
        t, s = self._candidates(P, trust_scores, allowed, beta)
        t, s, proto = with_protocols(P, t, s, self.protocols)
        X = self._features(P, t, s, proto, trust_scores)
        n = len(names)
        scores = self.bandit.score(X, beta, fast=n * (n - 1) > self.options["max_candidates"])
        taken = greedy_disjoint(scores, t, s, budget)
        pairings = self._pairings(names, P, t, s, proto, scores, taken, round, X)
        if len(pairings) < budget and not allowed.all():
            pairings += self._pairs_among_gated(names, P, trust_scores, allowed, pairings, budget - len(pairings), round, beta)
        return pairings

    def _pairs_among_gated(self, names: list[str], P: np.ndarray, trust_scores: np.ndarray, allowed: np.ndarray,
                           pairings: list[Pairing], missing: int, round: int, beta: float) -> list[Pairing]:
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
        X = self._features(P, t, s, proto, trust_scores)
        scores = self.bandit.score(X, beta)
        taken = greedy_disjoint(scores, t, s, missing)
        return self._pairings(names, P, t, s, proto, scores, taken, round, X)

    def _after_feedback(self, pairing: Pairing, z: float) -> None:
        # Trust sees only the part of z that the pairing's context does not predict, so that what
        # belongs to the pair (incompatible families, a weak student) is not blamed on the teacher.
        predicted = float(self.bandit.mean(np.asarray(pairing.context, dtype=np.float64)[None, :])[0])
        self.trust.observe(pairing.teacher, pairing.student, z - predicted, pairing.round)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "trust": self.trust.state_dict(), "rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.trust.load_state_dict(state["trust"])
        self.rng.bit_generator.state = json.loads(state["rng"])


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

    def propose(self, profiles: Any, budget: int, round: int) -> list[Pairing]:
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


def build_policy(name: str, seed: int) -> Any:
    """A policy by name, seeded where it draws; ``local-only`` pairs nobody."""
    if name == NO_PAIRING:
        return _NoPairing()
    options: dict[str, Any] = {"seed": seed} if name in ("random", "knexa", "linucb") else {}
    try:
        return make_policy(name, **options)
    except PolicyError:
        return make_policy(name)
