"""Candidates per second through the sandbox, per backend, on a batch shaped like the verified exchange.

A batch is ``--candidates`` answers to embedded-task transfer problems
(192 problems, 16 per category): by default 70% the reference solution
(passes), 28% a wrong body (fails), 2% an endless loop (times out after
``--timeout`` s). It is checked with :func:`knexa_node.learn.evaluate.check_completions`
(the call the learning code makes) over ``--workers`` sandboxes, once per
backend, after one warm-up call. Also prints the pass/fail-only rate (no
timeouts), which is the per-candidate process cost, and the CPU time the
sandbox processes used per candidate (steadier than wall time when the
machine is shared; a timeout's endless loop counts its CPU second).

    .venv/bin/python bench/sandbox_throughput.py [--candidates 200] [--workers 2]

Runs on any checkout whose ``check_completions`` has this signature (main's
included), so before/after figures come from the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import time

from knexa_node.learn.data import embedded_task
from knexa_node.learn.evaluate import check_completions
from knexa_node.learn.sandbox import SandboxLimits, detect_backend


def batch(n: int, seed: int, timeouts: float) -> tuple[list, list[str], list[str]]:
    """(problems, completions, expected statuses) for ``n`` candidates."""
    transfer = embedded_task(seed).transfer
    rng = random.Random(seed)
    problems, completions, expected = [], [], []
    for i in range(n):
        problem = transfer[i % len(transfer)]
        draw = rng.random()
        if draw < timeouts:
            completions.append("    while True:\n        pass\n")
            expected.append("timeout")
        elif draw < 0.3:
            completions.append("    return None\n")
            expected.append("failed")
        else:
            completions.append(problem.solution)
            expected.append("passed")
        problems.append(problem)
    return problems, completions, expected


def _children_cpu() -> float:
    """CPU seconds of the sandbox processes so far: steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(backend: str, problems: list, completions: list[str], expected: list[str], limits: SandboxLimits,
            workers: int) -> dict[str, object]:
    check_completions(problems[:4], completions[:4], limits, workers=1, backend=backend)  # warm-up
    cpu_before = _children_cpu()
    started = time.monotonic()
    results = check_completions(problems, completions, limits, workers=workers, backend=backend)
    seconds = time.monotonic() - started
    cpu = _children_cpu() - cpu_before
    statuses = [r.status for r in results]
    agree = sum(s == e for s, e in zip(statuses, expected))
    return {"backend": backend, "candidates": len(problems), "seconds": round(seconds, 3),
            "per_second": round(len(problems) / seconds, 1), "cpu_ms_per_candidate": round(1000 * cpu / len(problems), 2),
            "agree_with_expected": agree,
            "statuses": {s: statuses.count(s) for s in sorted(set(statuses))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", default="auto", help="comma-separated: nsjail,guard (auto: both that work here)")
    args = parser.parse_args()
    limits = SandboxLimits(timeout_s=args.timeout, cpu_s=max(1, int(args.timeout)))
    backends = args.backends.split(",") if args.backends != "auto" else sorted({"guard", detect_backend()})
    print(f"# load: {os.getloadavg()}")
    for backend in backends:
        for label, share in (("mix (2% timeouts)", 0.02), ("pass/fail only", 0.0)):
            problems, completions, expected = batch(args.candidates, args.seed, share)
            try:
                row = measure(backend, problems, completions, expected, limits, args.workers)
            except Exception as exc:  # a backend that refuses here (e.g. guard as root without nobody access)
                row = {"backend": backend, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps({"batch": label, **row}), flush=True)


if __name__ == "__main__":
    main()
