"""Pass@1 after R rounds of the real networked demo, per policy, over several seeds (issue 8's measure).

    .venv/bin/python bench/demo_policies.py --seeds 0 1 2 --policies knexa linucb random local-only \
        --nodes 4 --rounds 3 --out bench/out/demo-policies

Each (seed, policy) is one `knexa-node demo --json` run: separate daemons on
127.0.0.1, the full protocol. Prints, per policy, the mean over seeds of the
nodes' mean Pass@1 after the last round, the gain over the start, a 95%
t-interval over seeds, and the relative gain over random.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean, stdev

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (math.nan, math.nan)
    half = T95.get(len(values) - 1, 1.96) * stdev(values) / math.sqrt(len(values))
    return (mean(values) - half, mean(values) + half)


def run(seed: int, policy: str, args: argparse.Namespace) -> dict:
    workdir = Path(args.out) / f"seed-{seed}" / policy
    command = [str(Path(sys.executable).parent / "knexa-node"), "demo", "--nodes", str(args.nodes), "--rounds",
               str(args.rounds), "--policy", policy, "--seed", str(seed), "--workdir", str(workdir), "--json"]
    if args.shard_size:
        command += ["--shard-size", str(args.shard_size)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"{policy} seed {seed} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    summary["bench_wall_s"] = time.monotonic() - started
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--policies", nargs="+", default=["knexa", "linucb", "random", "local-only"])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default="bench/out/demo-policies")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {p: [] for p in args.policies}
    for seed in args.seeds:
        for policy in args.policies:
            summary = run(seed, policy, args)
            results[policy].append(summary)
            print(f"seed {seed} {policy:10s} pass1 {summary['mean_pass1_before']:.3f} -> {summary['mean_pass1_after']:.3f} "
                  f"({summary['bench_wall_s']:.0f} s, audit {'ok' if summary['audit_ok'] else 'FAILED'})", flush=True)
    table = {}
    for policy, runs in results.items():
        after = [r["mean_pass1_after"] for r in runs]
        gain = [r["mean_pass1_after"] - r["mean_pass1_before"] for r in runs]
        table[policy] = {"pass1_after": mean(after), "pass1_after_ci95": interval(after), "gain": mean(gain),
                         "gain_ci95": interval(gain), "per_seed": after, "wall_s": mean(r["bench_wall_s"] for r in runs)}
    if "random" in table:
        for policy, row in table.items():
            row["relative_to_random"] = row["pass1_after"] / table["random"]["pass1_after"] - 1
    print(json.dumps({"nodes": args.nodes, "rounds": args.rounds, "seeds": args.seeds, "policies": table}, indent=2))


if __name__ == "__main__":
    main()
