"""Run policies against the synthetic federation and summarize them: :func:`simulate`.

Pure (no I/O besides an optional progress callback); returns a JSON-ready
dict. Each policy runs on its own copy of the federation built from the same
seed, so all policies start from the same agents and see the same reward
noise (common random numbers): per-seed differences are paired.

Figures per policy (mean over seeds, with a 95% Student-t interval):

- ``final_pass``: mean Pass@1-proxy of the honest agents after the last round;
- ``gain_over_random``: (final - final of random) / final of random, the
  relative gain in final Pass@1-proxy (the paper's "+x% over random");
- ``oracle_gap_closed``: (final - final of random) / (final of oracle - final
  of random): 0 is random, 1 is the greedy oracle;
- ``cumulative_regret``: sum over rounds of (greedy oracle matching's expected
  reward on the policy's own state - expected reward of the chosen pairs),
  in percentage points;
- ``mean_js``: mean JS divergence of the data histograms of chosen pairs;
- ``feedback_per_s`` and ``matchmaking_ms``: time in ``feedback`` and ``propose``.

``random`` and ``oracle`` always run as the yardsticks.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from knexa_cpm.features import js_divergence
from knexa_cpm.policies import POLICY_NAMES, PolicyError, make_policy
from knexa_cpm.sim import Federation, SimConfig

# Two-sided 95% Student-t quantiles by degrees of freedom.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    if df <= 0:
        return float("nan")
    keys = [k for k in sorted(_T95) if k <= df]
    return _T95[keys[-1]] if df <= 30 else 1.96


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean and half-width of a 95% confidence interval (NaN half-width for one value)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {"mean": float("nan"), "ci95": float("nan")}
    half = t95(len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "ci95": half}


def default_budget(clients: int) -> int:
    """k = min(N/2, 10), as in the authors' most faithful simulator."""
    return max(1, min(clients // 2, 10))


def run_one(policy_name: str, config: SimConfig, rounds: int, budget: int,
            options: Mapping[str, Any] | None = None, on_round: Callable[[], None] | None = None) -> dict[str, Any]:
    """One policy, one seed: curves and timings."""
    fed = Federation(config)
    opts = dict(options or {})
    if policy_name == "oracle":
        opts["expected_reward"] = fed.expected_reward
    if policy_name in ("random", "knexa"):
        opts.setdefault("seed", config.seed)
    policy = make_policy(policy_name, **opts)
    protocols = getattr(policy, "protocols", ("text",))
    curve, regret_curve, js_values = [fed.mean_pass()], [0.0], []
    regret = 0.0
    propose_s = feedback_s = 0.0
    feedbacks = 0
    chosen_teachers: list[str] = []
    for r in range(rounds):
        profiles = fed.profiles()
        start = time.perf_counter()
        pairs = policy.propose(profiles, budget, r)
        propose_s += time.perf_counter() - start
        best = fed.best_matching_value(budget, protocols)
        rewards, expected = fed.exchange([(p.teacher, p.student, p.protocol) for p in pairs])
        regret += best - float(expected.sum())
        if pairs:
            t = fed.indices([p.teacher for p in pairs])
            s = fed.indices([p.student for p in pairs])
            js_values.extend(js_divergence(fed.hist[t], fed.hist[s]).tolist())
        chosen_teachers.extend(p.teacher for p in pairs)
        start = time.perf_counter()
        for pairing, reward in zip(pairs, rewards):
            policy.feedback(pairing, float(reward))
        feedback_s += time.perf_counter() - start
        feedbacks += len(pairs)
        fed.end_round()
        curve.append(fed.mean_pass())
        regret_curve.append(regret)
        if on_round is not None:
            on_round()
    malicious = {fed.names[k] for k in np.nonzero(fed.malicious)[0]}
    return {
        "curve": curve, "regret_curve": regret_curve,
        "initial_pass": curve[0], "final_pass": curve[-1], "cumulative_regret": regret,
        "mean_js": float(np.mean(js_values)) if js_values else float("nan"),
        "feedback_per_s": feedbacks / feedback_s if feedback_s > 0 else float("nan"),
        "matchmaking_ms": 1000.0 * propose_s / max(rounds, 1),
        "malicious_teacher_rate": (sum(t in malicious for t in chosen_teachers) / len(chosen_teachers)) if chosen_teachers else 0.0,
    }


def simulate(
    clients: int = 32,
    rounds: int = 100,
    seeds: int = 5,
    heterogeneity: str = "high",
    policies: Sequence[str] = ("random", "heuristic", "linucb", "knexa", "oracle"),
    setting: str = "nonadditive",
    budget: int | None = None,
    malicious: int = 0,
    policy_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run every policy on ``seeds`` federations and summarize (see the module docstring)."""
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        raise PolicyError(f"unknown policies {unknown}; choose from {', '.join(POLICY_NAMES)}")
    if rounds < 1 or seeds < 1:
        raise PolicyError("rounds and seeds must be at least 1")
    names = list(dict.fromkeys(["random", *policies, "oracle"]))
    budget = default_budget(clients) if budget is None else int(budget)
    total = len(names) * seeds * rounds
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for seed in range(seeds):
        config = SimConfig(clients=clients, heterogeneity=heterogeneity, setting=setting, malicious=malicious, seed=seed)
        for name in names:
            options = (policy_options or {}).get(name)
            runs[name].append(run_one(name, config, rounds, budget, options, tick))

    random_final = np.array([r["final_pass"] for r in runs["random"]])
    oracle_final = np.array([r["final_pass"] for r in runs["oracle"]])
    summary: dict[str, Any] = {}
    for name in names:
        final = np.array([r["final_pass"] for r in runs[name]])
        gain = final / np.maximum(random_final, 1e-12) - 1.0
        gap = oracle_final - random_final
        closed = np.where(np.abs(gap) > 1e-12, (final - random_final) / np.where(np.abs(gap) > 1e-12, gap, 1.0), np.nan)
        curves = np.array([r["curve"] for r in runs[name]])
        regrets = np.array([r["regret_curve"] for r in runs[name]])
        summary[name] = {
            "final_pass": mean_ci(final),
            "gain_over_random": mean_ci(gain),
            "oracle_gap_closed": mean_ci(closed[np.isfinite(closed)]),
            "cumulative_regret": mean_ci([r["cumulative_regret"] for r in runs[name]]),
            "mean_js": mean_ci([r["mean_js"] for r in runs[name]]),
            "feedback_per_s": float(np.nanmedian([r["feedback_per_s"] for r in runs[name]])),
            "matchmaking_ms": float(np.median([r["matchmaking_ms"] for r in runs[name]])),
            "malicious_teacher_rate": mean_ci([r["malicious_teacher_rate"] for r in runs[name]]),
            "curve": curves.mean(axis=0).tolist(),
            "regret_curve": regrets.mean(axis=0).tolist(),
        }
    return {
        "config": {"clients": clients, "rounds": rounds, "seeds": seeds, "heterogeneity": heterogeneity,
                   "setting": setting, "budget": budget, "malicious": malicious, "policies": names},
        "policies": summary,
    }
