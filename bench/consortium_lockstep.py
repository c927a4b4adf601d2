"""Policies on real agents, many seeds: the lock-step consortium (knexa_lab.lockstep), one process per run.

    .venv/bin/python bench/consortium_lockstep.py --model DIR --model embedded:llama-tiny \\
        --model embedded:neox-tiny --model embedded:gpt2-tiny --rounds 5 --seeds 0 1 2 \\
        --policies knexa random local-only --parallel 9 --out mixed.json
    .venv/bin/python bench/consortium_lockstep.py --model DIR --rounds 5 --seeds 0 \\
        --policies knexa local-only --humaneval --out smollm2.json

The issue-14 study on 8 embedded nodes (verified, targeted exchanges; ``knexa@2``
is the knexa policy with c = 2 teachers per student; warm-ups are shared by
the policies of one seed through ``--warmup-cache``)::

    .venv/bin/python bench/consortium_lockstep.py --model embedded:llama-tiny --model embedded:neox-tiny \
        --model embedded:gpt2-tiny --model embedded:qwen2-tiny --nodes 8 --shard-size 300 \
        --dirichlet-alpha 0.1 --warmup-epochs 10 --rounds 3 --seeds 0 1 \
        --policies local-only random@2 knexa@2 knexa@1 --parallel 2 --out study.json

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
    label, seed = args.one.split(":")
    policy, per_node = split_label(label)
    settings = DemoSettings(nodes=args.nodes or len(args.model), rounds=args.rounds, policy=policy, seed=int(seed),
                            models=tuple(args.model), dirichlet_alpha=args.dirichlet_alpha, shard_size=args.shard_size,
                            lr=args.lr, pretrained_lr=args.pretrained_lr, protocol=args.protocol,
                            generation_batch_size=args.generation_batch, batch_size=args.batch_size,
                            warmup_epochs=args.warmup_epochs, epochs_per_round=args.epochs_per_round,
                            teachers_per_student=per_node, verify=args.verify, targeted=not args.untargeted,
                            exchange_budget=args.exchange_budget, teacher_samples=args.teacher_samples,
                            distill_epochs=args.distill_epochs, received_memory=args.received_memory,
                            reward=args.reward, warmup_cache=args.warmup_cache)
    checkpoint = (humaneval_checkpoint(args.humaneval_limit, args.humaneval_tokens, args.humaneval_batch)
                  if args.humaneval else None)
    result = run_lockstep(Path(args.workdir), settings, checkpoint=checkpoint,
                          on_progress=lambda m: print(f"[{policy}:{seed}] {m}", file=sys.stderr, flush=True))
    out = summary(result)
    out["label"] = label
    for node in out["nodes"]:
        curve = node.pop("curve", None) or []
        # Pass@1 after each round's local phase, then the final one: the last exchange's effect on the test set.
        node["pass1_by_round"] = [[p["round"], p["phase"], p["pass1"]] for p in curve]
    Path(args.result).write_text(json.dumps(out, default=str))


def split_label(label: str) -> tuple[str, int]:
    """``knexa@2`` -> ("knexa", 2); a bare name has c = 1."""
    name, _, per_node = label.partition("@")
    return name, int(per_node or 1)


def mean_ci(values: list[float]) -> dict[str, Any]:
    from scipy import stats

    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return {"mean": float(a.mean()) if len(a) else None, "ci95": None, "n": len(a)}
    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))
    return {"mean": float(a.mean()), "ci95": [float(a.mean() - half), float(a.mean() + half)], "n": len(a)}


def node_seconds_per_round(run: dict[str, Any]) -> float:
    """The run's wall time over nodes x rounds (one torch thread per run): what one node-round costs."""
    return run["wall_s"] / (len(run["nodes"]) * max(run["rounds"], 1))


def exchange_effects(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Collapse check: the dev-set Pass@1 of students right before and after their distillation phases."""
    phases = [e for r in runs for n in r["nodes"] for e in n.get("exchanges", []) if e.get("dev_pass1_pre") is not None]
    if not phases:
        return {}
    deltas = [e["dev_pass1_post"] - e["dev_pass1_pre"] for e in phases]
    items = [e["items_used"] for e in phases]
    failed = sum(e["items_failed"] for e in phases)
    return {"phases": len(phases), "mean_dev_pass1_delta": float(np.mean(deltas)),
            "share_worse": float(np.mean([d < 0 for d in deltas])), "mean_items_used": float(np.mean(items)),
            "items_failed_at_student": failed, "claims_failed": sum(e["claims_failed"] for e in phases)}


def ratios(runs: list[dict[str, Any]], top: str, bottom: str) -> dict[str, Any]:
    """Paired by seed: mean final Pass@1 of ``top`` over ``bottom``."""
    a = {r["seed"]: r["mean_pass1_after"] for r in runs if r.get("label", r["policy"]) == top}
    b = {r["seed"]: r["mean_pass1_after"] for r in runs if r.get("label", r["policy"]) == bottom}
    seeds = sorted(set(a) & set(b))
    per_seed = {s: (a[s] / b[s] if b[s] else None) for s in seeds}
    values = [v for v in per_seed.values() if v is not None]
    return {"by_seed": per_seed, "of_means": (float(np.mean([a[s] for s in seeds]) / np.mean([b[s] for s in seeds]))
                                               if seeds and np.mean([b[s] for s in seeds]) else None),
            "mean": mean_ci(values) if values else None}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_policy.setdefault(run.get("label", run["policy"]), []).append(run)
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
        row["final_pass1_by_seed"] = {r["seed"]: r["mean_pass1_after"] for r in group}
        row["warmup_pass1_by_seed"] = {r["seed"]: r["mean_pass1_before"] for r in group}
        row["node_seconds_per_round"] = mean_ci([node_seconds_per_round(r) for r in group])
        row["phases_s"] = {k: float(np.mean([r["phases_s"].get(k, 0.0) for r in group])) for k in group[0]["phases_s"]}
        row["exchange_effects"] = exchange_effects(group)
        table[policy] = row
    labels = list(table)
    for top in [label for label in labels if split_label(label)[0] not in ("local-only", "random")]:
        for bottom in [label for label in labels if split_label(label)[0] in ("local-only", "random")]:
            table[top][f"ratio_to_{bottom}"] = ratios(runs, top, bottom)
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
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--epochs-per-round", type=int, default=1)
    parser.add_argument("--verify", default="tests", choices=["tests", "off"])
    parser.add_argument("--untargeted", action="store_true", help="students ask for no categories")
    parser.add_argument("--exchange-budget", type=int, default=64)
    parser.add_argument("--teacher-samples", type=int, default=2)
    parser.add_argument("--distill-epochs", type=int, default=2)
    parser.add_argument("--received-memory", type=int, default=2000)
    parser.add_argument("--reward", default="covered", choices=["covered", "eq3"])
    parser.add_argument("--warmup-cache", default="", help="default: <workdir>/warmup (shared by the runs)")
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
    if not args.warmup_cache:
        args.warmup_cache = str(root / "warmup")
    # Embedded models are built once here, not raced by the runs.
    from knexa_lab.orchestrate import _build_models
    from knexa_lab.plan import DemoSettings

    _build_models(DemoSettings(nodes=len(args.model), models=tuple(args.model)))
    # Policy-major: the first runs are one per seed, so each seed's warm-up is done once and then reused.
    jobs = [(p, s) for p in args.policies for s in args.seeds]
    pending, running, runs, failed = list(jobs), [], [], []
    started = time.monotonic()
    passthrough = sys.argv[1:]
    while pending or running:
        while pending and len(running) < args.parallel:
            policy, seed = pending.pop(0)
            where = root / f"{policy}-{seed}"
            command = [sys.executable, __file__, *passthrough, "--warmup-cache", args.warmup_cache,
                       "--one", f"{policy}:{seed}", "--workdir", str(where),
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
