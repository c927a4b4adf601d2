"""Benchmark: matchmaking time per round and feedback updates per second at scale.

N = 100, 1,000 and 10,000 agents (d = 32 profiles, the knexa policy with its
candidate prefilter) for two budgets: the paper's min(N/2, 10) pairs and
N/2 (every agent paired). The bandit is warmed with 500 feedbacks first so
that its matrices are not trivial. Medians over repeated rounds; 1 BLAS
thread per process is forced unless you set the variables yourself.
Usage: ``.venv/bin/python bench/cpm_scaling.py [--repeats K]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from knexa_cpm.policies import make_policy  # noqa: E402
from knexa_cpm.sim import Federation, SimConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="100,1000,10000")
    args = parser.parse_args()
    print(f"BLAS threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    print(f"{'N':>6s} {'policy':>7s} {'budget':>6s} {'candidates':>10s} {'propose median s':>16s} {'max s':>7s}")
    for n in (int(x) for x in args.sizes.split(",")):
        profiles = Federation(SimConfig(clients=n, seed=0)).profiles()
        for name in ("knexa", "linucb"):
            if name == "linucb" and n > 1000:
                continue  # all N(N-1) pairs: quadratic by design, shown only for contrast
            for budget in sorted({min(n // 2, 10), n // 2}):
                policy = make_policy(name)
                rng = np.random.default_rng(0)
                warm = policy.propose(profiles, min(n // 2, 10), 0)
                for i in range(500):
                    policy.feedback(warm[i % len(warm)], float(rng.normal()))
                times = []
                for r in range(args.repeats):
                    start = time.perf_counter()
                    pairs = policy.propose(profiles, budget, r)
                    times.append(time.perf_counter() - start)
                assert len(pairs) == budget or name == "knexa"
                candidates = "all" if name == "linucb" or n * (n - 1) <= policy.options["max_candidates"] else \
                    f"~{n * (policy.options['group_size'] + policy.options['shortlist'])}"
                print(f"{n:>6d} {name:>7s} {budget:>6d} {candidates:>10s} {statistics.median(times):>16.3f} {max(times):>7.3f}"
                      f"   ({len(pairs)} pairs)")
    for name in ("linucb", "knexa"):
        policy = make_policy(name)
        pairs = policy.propose(Federation(SimConfig(clients=64, seed=0)).profiles(), 32, 0)
        rewards = np.random.default_rng(1).normal(size=20_000)
        start = time.perf_counter()
        for k, reward in enumerate(rewards):
            policy.feedback(pairs[k % len(pairs)], float(reward))
        elapsed = time.perf_counter() - start
        dim = len(pairs[0].context)
        print(f"feedback updates/s, {name} (d={dim}): {len(rewards) / elapsed:,.0f}")


if __name__ == "__main__":
    main()
