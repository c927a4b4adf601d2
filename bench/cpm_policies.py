"""Benchmark: matchmaking policies on the synthetic federation (issue 4 targets).

100 rounds, 5 seeds, 32 clients, budget min(N/2, 10) pairs; the non-additive
and the paper-like linear setting at high heterogeneity, and the
non-additive setting at low heterogeneity. Prints per policy the mean
final Pass@1-proxy, gain over random, share of the random->oracle gap
closed and cumulative regret, each with a 95% CI over seeds, and the
targets' verdicts. Usage: ``.venv/bin/python bench/cpm_policies.py [--rounds R --seeds S --clients N --json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from knexa_cpm.runner import simulate  # noqa: E402

POLICIES = ["random", "heuristic", "linucb", "knexa", "oracle"]
CASES = [("nonadditive", "high"), ("linear", "high"), ("nonadditive", "low"), ("linear", "low")]


def fmt(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['ci95'] * scale:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    everything = {}
    for setting, het in CASES:
        start = time.perf_counter()
        result = simulate(clients=args.clients, rounds=args.rounds, seeds=args.seeds, heterogeneity=het,
                          setting=setting, policies=POLICIES)
        everything[f"{setting}/{het}"] = result
        p = result["policies"]
        print(f"\n== {setting}, {het} heterogeneity: {args.clients} clients, {args.rounds} rounds, {args.seeds} seeds, "
              f"{result['config']['budget']} pairs/round ({time.perf_counter() - start:.0f} s)")
        print(f"{'policy':10s} {'final Pass@1 %':>16s} {'gain vs random %':>17s} {'gap closed':>13s} {'regret pp':>14s} {'mean JS':>7s}")
        for name, s in p.items():
            print(f"{name:10s} {fmt(s['final_pass'], 100):>16s} {fmt(s['gain_over_random'], 100, 1):>17s} "
                  f"{fmt(s['oracle_gap_closed']):>13s} {fmt(s['cumulative_regret'], 1, 0):>14s} {s['mean_js']['mean']:7.3f}")
        closed = p["knexa"]["oracle_gap_closed"]["mean"]
        verdicts = [f"knexa closes {100 * closed:.0f}% of the random->oracle gap (target >= 75%): {'MET' if closed >= 0.75 else 'NOT MET'}"]
        if setting == "nonadditive":
            better = p["knexa"]["final_pass"]["mean"] > p["linucb"]["final_pass"]["mean"]
            verdicts.append(f"knexa beats linucb: {'MET' if better else 'NOT MET'}")
        if het == "low":
            best_other = max(s["final_pass"]["mean"] for n, s in p.items() if n not in ("knexa", "oracle"))
            ok = p["knexa"]["final_pass"]["mean"] >= best_other
            verdicts.append(f"knexa loses to no non-oracle policy: {'MET' if ok else 'NOT MET'}")
        for v in verdicts:
            print("  " + v)
    if args.json:
        print(json.dumps(everything))


if __name__ == "__main__":
    main()
