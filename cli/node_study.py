"""`knexa-node study`: every policy x seed of a consortium on this machine, compared paired by seed."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from knexa_cli.common import fail, print_json
from knexa_cli.lazy import load
from knexa_lab.plan import DEFAULT_MODELS
from knexa_lab.processes import DemoError
from knexa_lab.study import (POLICIES, StudyError, StudyFiles, StudySpec, check, finished_runs, parse_list, parse_policies,
                             parse_seeds)
from knexa_node.fsutil import atomic_write_text


def study(
    nodes: int = typer.Option(8, "--nodes", help="Nodes in the consortium (models cycle through --models)."),
    rounds: int = typer.Option(6, "--rounds", help="Rounds per run."),
    seeds: str = typer.Option("0,1,2,3,4", "--seeds", help="Comma-separated seeds; each seed draws the task, the shards and the training order, the same for every policy (paired)."),
    policies: str = typer.Option(",".join(POLICIES), "--policies", help=f"Comma-separated policies among {', '.join(POLICIES)}. pooled: one model of each kind trained on all nodes' private data (the upper bound of pooling)."),
    alpha: float = typer.Option(0.1, "--dirichlet-alpha", help="Skew of the private shards over the 12 categories (small: each node knows few)."),
    teachers: int = typer.Option(1, "--teachers-per-student", help="c: teachers per student and students per teacher in a round (1: the paper's disjoint pairs)."),
    models: str = typer.Option(",".join(DEFAULT_MODELS), "--models", help="Comma-separated models, cycled over the nodes: embedded:<name>, pretrained:<name> or a local HF directory."),
    shard_size: int = typer.Option(0, "--shard-size", help="Private problems per node (0: an equal share of the embedded pool)."),
    warmup_epochs: int = typer.Option(8, "--warmup-epochs", help="Local epochs before round 1, done once per seed and node and shared by the policies (the tiny embedded models need ~8 to know their own categories)."),
    epochs_per_round: int = typer.Option(1, "--epochs-per-round", help="Local epochs in each round (pooled: the same epochs on the pooled data)."),
    transfer: int = typer.Option(StudySpec.transfer_per_category, "--transfer-per-category", help="Public transfer prompts per category that teachers answer from (the embedded task's own 16; more come from a further draw, the private, dev and test sets unchanged)."),
    budget: int = typer.Option(StudySpec.exchange_budget, "--exchange-budget", help="Transfer prompts a teacher answers per request at most (its compute per package)."),
    workers: int = typer.Option(0, "--workers", help="Runs at a time, one process and one torch thread each (0: one per core; 1: in this process)."),
    out: Path = typer.Option(Path("study.json"), "--out", help="The study's JSON document; beside it <name>.png (curves) and <name>.runs/ (one record per finished run: a rerun with the same --out skips them)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON document instead of the table (progress goes to stderr)."),
) -> None:
    """Measure policies on a lock-step consortium of real agents: every (policy, seed) run, a table and a PNG.

    Each run is the whole consortium in one process (the CPM's policy, the
    agents' local epochs, packages and distillation, without the network),
    on all cores at once. The table gives the mean final Pass@1 per policy
    with its 95% interval over seeds, the ratios to local-only and to random
    paired by seed, and the share of the gap from local-only to pooled each
    policy closes. Interrupted? Run the same command again: finished runs are kept.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # `finally` ends the workers
    try:
        spec = check(StudySpec(nodes=nodes, rounds=rounds, seeds=parse_seeds(seeds), policies=parse_policies(policies),
                               dirichlet_alpha=alpha, teachers_per_student=teachers,
                               models=tuple(parse_list(models, "--models")),
                               shard_size=shard_size, warmup_epochs=warmup_epochs, epochs_per_round=epochs_per_round,
                               transfer_per_category=transfer, exchange_budget=budget))
    except StudyError as exc:
        fail(str(exc))
    if workers < 0:
        fail(f"--workers: 0 (one per core) or more, got {workers}")
    if out.is_dir():
        fail(f"--out: {out} is a directory; name the JSON file to write")
    files = StudyFiles.at(out)
    workers = workers or os.cpu_count() or 1
    study_run, report = load("knexa_lab.study_run"), load("knexa_lab.study_report")  # torch, matplotlib
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 150)
    total = len(spec.runs())
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"{total} runs on {min(workers, total)} processes", total=total)

        def done(record: dict) -> None:
            if "error" in record:
                progress.console.print(f"[red]{record['policy']} seed {record['seed']} failed:[/] {record['error']}")
            else:
                progress.console.print(f"{record['policy']} seed {record['seed']}: final Pass@1 "
                                       f"{100 * record['final_pass1']:.1f}% ({record['wall_s']:.0f} s)")
            progress.advance(bar)

        warm_bar = None

        def warmed(entry: dict, total: int) -> None:
            nonlocal warm_bar
            if warm_bar is None:
                warm_bar = progress.add_task(f"{total} node warm-ups (shared by the policies of a seed)", total=total)
            if "error" in entry:
                progress.console.print(f"[yellow]warm-up of seed {entry['seed']} node {entry['node']} failed "
                                       f"(its runs warm up alone):[/] {entry['error']}")
            progress.advance(warm_bar)

        try:
            kept = len(finished_runs(spec, files))
            progress.update(bar, completed=kept, description=f"{total} runs ({kept} kept from {files.runs.name}), "
                                                             f"{min(workers, total - kept) or 1} processes")
            records = study_run.run_study(spec, files, workers=workers, on_done=done, on_warmup=warmed)
        except StudyError as exc:
            fail(str(exc))
        except DemoError as exc:
            fail(f"study failed: {str(exc).splitlines()[0]}", code=1)
        except KeyboardInterrupt:
            fail(f"interrupted: finished runs are kept in {files.runs}; the same command resumes", code=130)
    document = report.study_document(spec, records, workers=workers, wall_s=time.monotonic() - started, png=files.png)
    report.plot_study(document, files.png)
    files.document.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(files.document, json.dumps(document, indent=1))
    if as_json:
        print_json(document)
    else:
        console.print(report.study_table(document))
        console.print(f"study: {files.document}   curves: {files.png}   runs: {files.runs}")
    if document["failed"]:
        fail(f"{len(document['failed'])} run(s) failed (first: {document['failed'][0]['error']}); "
             "the same command retries them", code=1)
