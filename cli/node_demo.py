"""`knexa-node demo`: a local consortium on 127.0.0.1, with live progress and a final report."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.live import Live

from knexa_cli.common import fail, print_json
from knexa_cli.lazy import load
from knexa_lab.orchestrate import DemoResult, run_demo
from knexa_lab.plan import DEFAULT_MODELS, DemoLayout, DemoSettings, demo_shard_size
from knexa_lab.processes import DemoError

POLICIES = ("knexa", "linucb", "random", "heuristic", "local-only", "central-kd")


def _print_dashboards(console: Console, layout: DemoLayout) -> None:
    names = ["cpm", *(f"node-{i}" for i in range(len(layout.nodes)))]
    for name, url in zip(names, layout.dashboards):
        console.print(f"dashboard {name}: {url}", highlight=False, soft_wrap=True)


def _warm_up_once(settings: DemoSettings, root: Path, console: Console) -> None:
    inprocess = load("knexa_lab.inprocess")  # torch
    console.print(f"warming up {settings.nodes} nodes once ({settings.warmup_epochs} epochs each, "
                  f"{os.cpu_count() or 1} at a time); every compared policy starts from them")
    for entry in inprocess.warm_up_all(settings, root / "warmup-work", os.cpu_count() or 1):
        if "error" in entry:
            raise DemoError(f"warm-up of node {entry['node']} failed: {entry['error']}")
        console.print(f"  node-{entry['node']} warmed up ({entry['wall_s']:.0f} s)")


def _run_one(workdir: Path, settings: DemoSettings, console: Console, quiet: bool,
             layout: DemoLayout | None = None) -> DemoResult:
    if settings.policy == "central-kd":
        run_central_kd = load("knexa_lab.central").run_central_kd  # torch: only for this baseline
        if quiet:
            return run_central_kd(workdir, settings)
        with console.status("central-kd baseline (one process)") as spinner:
            return run_central_kd(workdir, settings, on_progress=lambda m: spinner.update(f"central-kd: {m}"))
    on_ready = (lambda layout: _print_dashboards(console, layout)) if settings.dashboard else None
    if quiet:
        return run_demo(workdir, settings, on_ready=on_ready, layout=layout)
    live_table = load("knexa_lab.report").live_table
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        return run_demo(workdir, settings, layout=layout, on_snapshot=lambda snap: live.update(live_table(snap, settings.rounds)),
                        on_ready=on_ready)


def demo(
    nodes: int = typer.Option(4, "--nodes", min=2, max=16, help="Number of node daemons."),
    rounds: int = typer.Option(3, "--rounds", min=1, max=100, help="Rounds of the full protocol."),
    workdir: Path = typer.Option(None, "--workdir", help="Where every home, log and the PNG are kept (default: a new temporary directory)."),
    policy: str = typer.Option("knexa", "--policy", help=f"Matchmaking policy: {', '.join(POLICIES)}."),
    compare: str = typer.Option("", "--compare", help="Comma-separated policies to run one after the other and print side by side (e.g. knexa,random,local-only)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the task, the shards and the models' training order."),
    model: list[str] = typer.Option([], "--model", help="Model per node (repeatable, cycled): embedded:<name>, pretrained:smollm2-135m, or a local HF directory."),
    protocol: str = typer.Option("text", "--protocol", help="Package kind: text or logits (logits only between nodes sharing a tokenizer)."),
    alpha: float = typer.Option(0.1, "--dirichlet-alpha", help="Skew of the private shards over categories (0.1: each node knows few, so exchanges have something to move)."),
    shard_size: int | None = typer.Option(None, "--shard-size", min=0, show_default=False, help="Private problems per node (default: 600, or an equal share of the embedded pool's 4,800 problems when the nodes cannot all have 600; 0: an equal share)."),
    lr: float = typer.Option(2e-3, "--lr", help="Learning rate of the embedded (tiny, from-scratch) models."),
    pretrained_lr: float = typer.Option(2e-4, "--pretrained-lr", help="Learning rate of the LoRA adapter on a node whose --model is a pretrained directory."),
    warmup_epochs: int = typer.Option(8, "--warmup-epochs", min=0, help="Local epochs each node trains before round 1 (its starting model; the tiny embedded models need ~8 epochs of a 600-problem shard to know their own categories). With --compare they are trained once and shared by the policies."),
    round_deadline: float = typer.Option(600.0, "--round-deadline", min=30.0, help="Seconds the CPM waits for every profile before pairing, and the life of a proposal (raise it for a pretrained node on a CPU)."),
    teachers_per_student: int = typer.Option(1, "--teachers-per-student", min=1, max=15, help="c: teachers per student and students per teacher in a round (1: the paper's disjoint pairs)."),
    transfer: int = typer.Option(64, "--transfer-per-category", min=1, max=1024, help="Public transfer prompts per category that teachers answer from (the embedded task's own 16; more come from a further draw, the private, dev and test sets unchanged)."),
    budget: int = typer.Option(256, "--exchange-budget", min=1, max=100_000, help="Transfer prompts a teacher answers per request at most: its compute per package, and how much a student can learn from one exchange."),
    dp: bool = typer.Option(False, "--dp", help="Turn on the differential-privacy layer."),
    dashboard: bool = typer.Option(False, "--dashboard", help="Every daemon serves its dashboard page on a loopback port; the URLs are printed once they listen."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary at the end instead of tables."),
) -> None:
    """Run a whole consortium here: a CPM and N nodes as separate processes on 127.0.0.1, R rounds of the protocol."""
    # SIGTERM (a scheduler, a CI timeout) must still stop the daemons: let `finally` run.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    policies = [p.strip() for p in compare.split(",") if p.strip()] if compare else [policy]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        fail(f"--policy/--compare: unknown policy {unknown[0]!r} (choose from {', '.join(POLICIES)})")
    if protocol not in ("text", "logits"):
        fail("--protocol must be text or logits")
    try:
        shard_size = demo_shard_size(nodes, shard_size)
    except ValueError as exc:
        fail(f"--shard-size: {exc}")
    report = load("knexa_lab.report")  # matplotlib and rich tables
    root = workdir or Path(tempfile.mkdtemp(prefix="knexa-demo-"))
    # Wide tables when writing to a file or pipe (rich would wrap them at 80 columns).
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 150)
    results = []
    # Compared policies start from the same nodes: each node warms up once, all at a time, before the first run.
    shared_warmup = str(root / "warmup") if len(policies) > 1 and warmup_epochs > 0 else ""
    for index, name in enumerate(policies):
        settings = DemoSettings(nodes=nodes, rounds=rounds, policy=name, seed=seed, models=tuple(model) or DEFAULT_MODELS,
                                protocol=protocol, dirichlet_alpha=alpha, shard_size=shard_size, lr=lr, pretrained_lr=pretrained_lr,
                                warmup_epochs=warmup_epochs, dp=dp, round_deadline_s=round_deadline,
                                teachers_per_student=teachers_per_student, transfer_per_category=transfer,
                                exchange_budget=budget, proposal_ttl_s=round_deadline, dashboard=dashboard, warmup_cache=shared_warmup)
        where = root / name if len(policies) > 1 else root
        try:
            if shared_warmup and index == 0:
                _warm_up_once(settings, root, console)
            # Homes laid out once: seeded with the shared warm-up, then handed to the run as they are.
            layout = load("knexa_lab.inprocess").seed_daemon_homes(where, settings) if shared_warmup else None
            if not as_json:
                console.rule(f"policy {name}: {nodes} nodes, {rounds} rounds, homes in {where}")
            result = _run_one(where, settings, console, as_json, layout)
        except DemoError as exc:
            fail(f"demo failed: {exc}", code=1)
        results.append(result)
        (where / "summary.json").write_text(json.dumps(report.summary(result), indent=2, default=str))
        if not as_json:
            report.print_report(console, result)
    png = report.plot_curves(results, root / "learning-curves.png")
    if as_json:
        documents = [report.summary(r) for r in results]
        print_json(documents[0] if len(documents) == 1 else {"policies": documents, "plot": str(png)})
        return
    if len(results) > 1:
        console.print(report.compare_table(results))
    console.print(f"learning curves: {png}")
