"""Running a study: every (policy, seed) in its own one-thread process, all cores busy, resumable.

Each run is one of the in-process consortia (the lock-step runner for the
CPM's policies, Central-KD, the pooled upper bound) in a fresh process with
one torch thread, ``workers`` of them at a time. A run writes its record
(:func:`knexa_lab.study.run_record`) atomically as soon as it finishes; the
study then only collects. ``workers=1`` runs everything in this process.

The nodes' warm-up does not depend on the policy, so it is done first, once
per (seed, node), one process each, and kept in ``<study>.warmup/``
(:func:`knexa_lab.inprocess.warm_up_node`); every run of that seed starts
from it. Without that, each policy would warm up the same nodes again: with
the several epochs tiny models need, most of a study's time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from knexa_lab.central import run_central_kd
from knexa_lab.inprocess import WarmupTask, cached_warmup, run_warmup_task
from knexa_lab.lockstep import run_lockstep
from knexa_lab.pool import each, one_line_error
from knexa_lab.orchestrate import DemoResult, _build_models
from knexa_lab.plan import DemoSettings
from knexa_lab.pooled import run_pooled
from knexa_lab.study import LOCKSTEP_POLICIES, StudyFiles, StudySpec, finished_runs, run_record
from knexa_node.fsutil import atomic_write_text

RUNNERS: dict[str, Callable[..., DemoResult]] = {"central-kd": run_central_kd, "pooled": run_pooled}
# Runners that start from the nodes' warm-up (pooled trains its own models on the pooled data).
WARM_STARTED = ("central-kd", *LOCKSTEP_POLICIES)


@dataclass(frozen=True)
class RunTask:
    policy: str
    seed: int
    settings: DemoSettings
    files: StudyFiles

    def execution_settings(self) -> DemoSettings:
        """The settings the run executes with: its record's, plus the study's warm-up cache (a detail of where)."""
        return replace(self.settings, warmup_cache=str(self.files.warmups))


def warmup_tasks(tasks: list[RunTask]) -> list[WarmupTask]:
    """Every (seed, node) warm-up the pending runs start from and the cache does not hold yet."""
    wanted: dict[tuple[int, int], WarmupTask] = {}
    for task in tasks:
        settings = task.execution_settings()
        if task.policy not in WARM_STARTED or settings.warmup_epochs < 1:
            continue
        for index in range(settings.nodes):
            if (task.seed, index) not in wanted and not cached_warmup(settings, index):
                wanted[(task.seed, index)] = WarmupTask(settings, index, task.files.work)
    return list(wanted.values())


def execute_run(task: RunTask) -> dict[str, Any]:
    """One run, start to record on disk. Returns the record, or ``{"error": ...}`` (nothing written: a rerun retries)."""
    torch.set_num_threads(1)
    started_wall, started_cpu = time.monotonic(), time.process_time()
    task.files.work.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{task.policy}-seed{task.seed}-", dir=task.files.work))
    try:
        runner = RUNNERS.get(task.policy, run_lockstep)
        result = runner(workdir, task.execution_settings())
        record = run_record(task.policy, task.seed, task.settings, result.nodes,
                            wall_s=time.monotonic() - started_wall, cpu_s=time.process_time() - started_cpu,
                            history=result.cpm_status.get("history"), phases_s=result.phases_s)
    except Exception as exc:  # one failed run must not end the others; its error is reported, not stored
        return {"policy": task.policy, "seed": task.seed,
                "error": one_line_error(exc), "traceback": traceback.format_exc()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    task.files.runs.mkdir(parents=True, exist_ok=True)
    atomic_write_text(task.files.record(task.policy, task.seed), json.dumps(record, indent=1))
    return record


def run_study(spec: StudySpec, files: StudyFiles, *, workers: int,
              on_done: Callable[[dict[str, Any]], None] | None = None,
              on_warmup: Callable[[dict[str, Any], int], None] | None = None) -> list[dict[str, Any]]:
    """Run what is not on disk yet; return every run's record (and error entries for runs that failed).

    ``on_warmup(entry, total)`` is called as each node's warm-up ends (before any run starts).
    """
    done = finished_runs(spec, files)
    tasks = [RunTask(policy, seed, spec.settings(policy, seed), files)
             for policy, seed in spec.runs() if (policy, seed) not in done]
    results = [done[key] for key in spec.runs() if key in done]
    if not tasks:
        return results
    shutil.rmtree(files.work, ignore_errors=True)  # homes a killed study left behind; no run of it is running now
    _build_models(tasks[0].settings)  # once, before the runs (each would otherwise race to build them)
    report = on_done or (lambda record: None)
    warmups = warmup_tasks(tasks)
    warmed = on_warmup or (lambda entry, total: None)
    for entry in each(run_warmup_task, warmups, workers):
        warmed(entry, len(warmups))
    for record in each(execute_run, tasks, workers):
        results.append(record)
        report(record)
    if files.work.exists() and not any(files.work.iterdir()):
        files.work.rmdir()  # every run removed its homes
    return results
