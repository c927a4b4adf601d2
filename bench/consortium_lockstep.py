"""Policies on real agents, many seeds: the lock-step consortium (knexa_lab.lockstep), one process per run.

    .venv/bin/python bench/consortium_lockstep.py --model DIR --model embedded:llama-tiny \\
        --model embedded:neox-tiny --model embedded:gpt2-tiny --rounds 5 --seeds 0 1 2 \\
        --policies knexa random local-only --parallel 9 --out mixed.json
    .venv/bin/python bench/consortium_lockstep.py --model DIR --rounds 5 --seeds 0 \\
        --policies knexa local-only --humaneval --out smollm2.json

Each (policy, seed) runs in its own subprocess (``--parallel`` at a time,
``--threads`` torch threads each), from the same layout rules, shards and
agent settings as ``knexa-node demo``. With ``--humaneval`` every node whose
model is a directory (not ``embedded:``) is also evaluated on HumanEval
(greedy, chat template when the tokenizer has one) before round 1 and after
the last round. Prints a table and one JSON object (also written to --out):
per run and node Pass@1 before/after; per policy the mean over seeds with a
95% Student-t interval, and how often each model was picked as teacher by round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def humaneval_checkpoint(limit: int | None, max_new_tokens: int, batch_size: int):
    from knexa_node.learn.evaluate import evaluate_loaded, load_benchmark

    problems = load_benchmark("humaneval", limit=limit)

    def check(node, phase: str) -> None:
        if node.model.startswith("embedded:"):
            return
        agent = node.agent
        agent.model.eval()
        result = evaluate_loaded(agent.model, agent.tokenizer, problems, benchmark="humaneval",
                                 model_dir=str(agent.model_dir), batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, device=str(agent.device))
        p = result.pass_at[1]
        node.extra[f"humaneval_{phase}"] = {"problems": result.problems, "correct": result.correct, "pass1": p.value,
                                            "ci": [p.low, p.high], "seconds": round(result.generation_seconds, 1),
                                            "prompt_format": result.prompt_format}
        print(f"[{node.name}] humaneval {phase}: {result.correct}/{result.problems}", file=sys.stderr, flush=True)

    return check


def run_one(args: argparse.Namespace) -> None:
    import torch

    from knexa_lab.lockstep import run_lockstep
    from knexa_lab.plan import DemoSettings
    from knexa_lab.report import summary

    torch.set_num_threads(args.threads)
    policy, seed = args.one.split(":")
    settings = DemoSettings(nodes=args.nodes or len(args.model), rounds=args.rounds, policy=policy, seed=int(seed),
                            models=tuple(args.model), dirichlet_alpha=args.dirichlet_alpha, shard_size=args.shard_size,
                            lr=args.lr, pretrained_lr=args.pretrained_lr, protocol=args.protocol,
                            generation_batch_size=args.generation_batch)
    checkpoint = (humaneval_checkpoint(args.humaneval_limit, args.humaneval_tokens, args.humaneval_batch)
                  if args.humaneval else None)
    result = run_lockstep(Path(args.workdir), settings, checkpoint=checkpoint,
                          on_progress=lambda m: print(f"[{policy}:{seed}] {m}", file=sys.stderr, flush=True))
    out = summary(result)
    for node in out["nodes"]:
        node.pop("curve", None)
    Path(args.result).write_text(json.dumps(out, default=str))


def mean_ci(values: list[float]) -> dict[str, Any]:
    from scipy import stats

    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return {"mean": float(a.mean()) if len(a) else None, "ci95": None, "n": len(a)}
    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))
    return {"mean": float(a.mean()), "ci95": [float(a.mean() - half), float(a.mean() + half)], "n": len(a)}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_policy.setdefault(run["policy"], []).append(run)
    table: dict[str, Any] = {}
    for policy, group in by_policy.items():
        embedded = [[n for n in r["nodes"] if n["model"].startswith("embedded:")] for r in group]
        pretrained = [[n for n in r["nodes"] if not n["model"].startswith("embedded:")] for r in group]
        row: dict[str, Any] = {
            "seeds": [r["seed"] for r in group],
            "all_nodes_after": mean_ci([r["mean_pass1_after"] for r in group]),
            "all_nodes_gain": mean_ci([r["mean_pass1_after"] - r["mean_pass1_before"] for r in group]),
        }
        if any(embedded):
            row["embedded_after"] = mean_ci([float(np.mean([n["pass1_after"] for n in e])) for e in embedded if e])
            row["embedded_gain"] = mean_ci([float(np.mean([n["pass1_after"] - n["pass1_before"] for n in e]))
                                            for e in embedded if e])
        if any(pretrained):
            row["pretrained_after"] = mean_ci([float(np.mean([n["pass1_after"] for n in p])) for p in pretrained if p])
            he = [n["extra"] for p in pretrained for n in p if "humaneval_after" in n.get("extra", {})]
            if he:
                row["humaneval_before"] = mean_ci([e["humaneval_before"]["pass1"] for e in he])
                row["humaneval_after"] = mean_ci([e["humaneval_after"]["pass1"] for e in he])
        # Who taught, by round: the share of pairs whose teacher runs a pretrained model.
        teach: dict[int, list[float]] = {}
        for run in group:
            kinds = {n["name"]: ("pretrained" if not n["model"].startswith("embedded:") else "embedded")
                     for n in run["nodes"]}
            for entry in run["cpm"]["history"] or []:
                teachers = [pair.split("->")[0] for pair in entry["pairs"]]
                if teachers:
                    share = sum(kinds[t] == "pretrained" for t in teachers) / len(teachers)
                    teach.setdefault(entry["round"], []).append(share)
        row["pretrained_teacher_share_by_round"] = {r: float(np.mean(v)) for r, v in sorted(teach.items())}
        row["wall_s"] = mean_ci([r["wall_s"] for r in group])
        table[policy] = row
    return table


def print_table(table: dict[str, Any]) -> None:
    def fmt(cell: dict[str, Any] | None) -> str:
        if not cell or cell["mean"] is None:
            return "-"
        ci = cell["ci95"]
        return f"{100 * cell['mean']:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")

    columns = ["all_nodes_after", "all_nodes_gain", "embedded_after", "embedded_gain", "pretrained_after",
               "humaneval_before", "humaneval_after"]
    print("policy".ljust(12) + "".join(c.ljust(24) for c in columns), file=sys.stderr)
    for policy, row in table.items():
        print(policy.ljust(12) + "".join(fmt(row.get(c)).ljust(24) for c in columns), file=sys.stderr)
        print(" " * 12 + f"pretrained teacher share by round: {row['pretrained_teacher_share_by_round']}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="per node, as knexa-node demo --model")
    parser.add_argument("--nodes", type=int, default=0, help="default: one per --model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--policies", nargs="+", default=["knexa", "random", "local-only"])
    parser.add_argument("--shard-size", type=int, default=600)
    parser.add_argument("--dirichlet-alpha", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--pretrained-lr", type=float, default=2e-4)
    parser.add_argument("--protocol", default="text")
    parser.add_argument("--generation-batch", type=int, default=32, help="prompts decoded together (GPU: 128)")
    parser.add_argument("--humaneval", action="store_true")
    parser.add_argument("--humaneval-limit", type=int, default=None)
    parser.add_argument("--humaneval-tokens", type=int, default=256)
    parser.add_argument("--humaneval-batch", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--out", default="")
    parser.add_argument("--collect", default="", help="only aggregate the per-run results already in this directory")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args)
        return
    if args.collect:  # e.g. after a run was cut short: every finished (policy, seed) left its JSON
        runs = [json.loads(f.read_text()) for f in sorted(Path(args.collect).glob("*-[0-9]*.json"))]
        table = aggregate(runs)
        print_table(table)
        print(json.dumps({"collected": args.collect, "by_policy": table, "runs": runs}, indent=1, default=str))
        return
    if not args.model:
        parser.error("--model is required (once per node)")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="knexa-lockstep-"))
    root.mkdir(parents=True, exist_ok=True)
    # Embedded models are built once here, not raced by the runs.
    from knexa_lab.orchestrate import _build_models
    from knexa_lab.plan import DemoSettings

    _build_models(DemoSettings(nodes=len(args.model), models=tuple(args.model)))
    jobs = [(p, s) for s in args.seeds for p in args.policies]
    pending, running, runs, failed = list(jobs), [], [], []
    started = time.monotonic()
    passthrough = sys.argv[1:]
    while pending or running:
        while pending and len(running) < args.parallel:
            policy, seed = pending.pop(0)
            where = root / f"{policy}-{seed}"
            command = [sys.executable, __file__, *passthrough, "--one", f"{policy}:{seed}", "--workdir", str(where),
                       "--result", str(root / f"{policy}-{seed}.json")]
            log = open(root / f"{policy}-{seed}.log", "w")
            running.append((policy, seed, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(2)
        for job in list(running):
            policy, seed, process, log = job
            if process.poll() is None:
                continue
            running.remove(job)
            log.close()
            result = root / f"{policy}-{seed}.json"
            if process.returncode == 0 and result.exists():
                runs.append(json.loads(result.read_text()))
                print(f"[{time.monotonic() - started:.0f}s] {policy}:{seed} done", file=sys.stderr, flush=True)
            else:
                failed.append(f"{policy}:{seed}")
                print(f"[{time.monotonic() - started:.0f}s] {policy}:{seed} FAILED, see {root}/{policy}-{seed}.log",
                      file=sys.stderr, flush=True)
    table = aggregate(runs)
    print_table(table)
    out = {"models": args.model, "rounds": args.rounds, "seeds": args.seeds, "shard_size": args.shard_size,
           "dirichlet_alpha": args.dirichlet_alpha, "lr": args.lr, "pretrained_lr": args.pretrained_lr,
           "wall_s": round(time.monotonic() - started, 1), "failed": failed, "by_policy": table, "runs": runs}
    text = json.dumps(out, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
