"""Run a local consortium end to end and collect what it did.

The orchestrator is a client like any operator: it starts the daemons, then
only talks to their control sockets (status, metrics, evaluate, stop) and
reads their audit logs. It never reaches into a daemon's memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from knexa_node.audit import AuditError, log_path, verify_file
from knexa_lab.plan import DemoLayout, DemoSettings, lay_out
from knexa_lab.processes import DaemonProcess, DemoError
from knexa_node.learn.embedded_catalog import built_embedded_dir
from knexa_node.models import parse_model_path

READY_TIMEOUT_S = 180.0
POLL_S = 1.0
# One-thread torch per daemon: N nodes share a small machine without oversubscription.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Snapshot:
    """What the live view shows: the CPM's and every node's status at one moment."""

    elapsed_s: float
    cpm: dict[str, Any]
    nodes: list[dict[str, Any]]


@dataclass
class DemoResult:
    settings: DemoSettings
    workdir: Path
    cpm_peer: str
    cpm_status: dict[str, Any]
    nodes: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    phases_s: dict[str, float] = field(default_factory=dict)


def cached_model_names(settings: DemoSettings) -> list[str]:
    """The settings' models that live in the model cache (embedded or imported), not in a directory of their own."""
    return sorted({m for m in settings.models[: settings.nodes] if parse_model_path(m).kind != "directory"})


def _embedded_and_built(name: str) -> bool:
    ref = parse_model_path(name)
    return ref.kind == "embedded" and built_embedded_dir(ref.name) is not None


def _build_models(settings: DemoSettings) -> None:
    """Build the embedded models and import the pretrained ones once, before the daemons start (not in N racing daemons).

    In a child process, so that the orchestrator never imports torch; a process that loads the models itself
    uses :func:`knexa_lab.inprocess.build_models_here` (a child costs seconds of interpreter and torch start).
    """
    names = [name for name in cached_model_names(settings) if not _embedded_and_built(name)]
    if not names:  # all built already: no child (seconds of interpreter and torch start) to find that out
        return
    done = subprocess.run([sys.executable, "-m", "knexa_node.learn.build_embedded", *names], capture_output=True, text=True,
                          env={**os.environ, **CHILD_ENV}, timeout=900)
    if done.returncode != 0:
        raise DemoError(f"preparing the models failed:\n{done.stderr[-2000:]}")


def run_demo(workdir: Path, settings: DemoSettings, *, on_snapshot: Callable[[Snapshot], None] | None = None,
             on_ready: Callable[[DemoLayout], None] | None = None, timeout_s: float = 3600.0,
             layout: DemoLayout | None = None) -> DemoResult:
    """Start the consortium, follow it through ``settings.rounds`` rounds, evaluate, stop it.

    ``on_ready(layout)`` is called once every daemon listens (e.g. to print the dashboards' URLs).
    ``layout``: homes already laid out in ``workdir`` for ``settings`` (seeded with a shared warm-up), else made here.
    """
    started = time.monotonic()
    phases: dict[str, float] = {}
    layout = layout or lay_out(workdir, settings)
    mark = time.monotonic()
    _build_models(settings)
    phases["build_models"] = time.monotonic() - mark
    env = {**CHILD_ENV, "KNEXA_MODEL_CACHE": os.environ.get("KNEXA_MODEL_CACHE", "")}
    env = {k: v for k, v in env.items() if v}
    nodes = [DaemonProcess(f"node-{i}", home, "knexa-node", env=env) for i, home in enumerate(layout.nodes)]
    cpm = DaemonProcess("cpm", layout.cpm, "knexa-cpm", env=env)
    everyone = [*nodes, cpm]
    try:
        mark = time.monotonic()
        nodes[0].start()
        nodes[0].wait_ready(READY_TIMEOUT_S)
        for process in [*nodes[1:], cpm]:
            process.start()
        for process in [*nodes[1:], cpm]:
            process.wait_ready(READY_TIMEOUT_S)
        phases["start_daemons"] = time.monotonic() - mark
        if on_ready:
            on_ready(layout)
        mark = time.monotonic()
        cpm_status = _wait_for_rounds(layout, settings, cpm, nodes, started, on_snapshot, timeout_s)
        phases["rounds"] = time.monotonic() - mark
        mark = time.monotonic()
        finals = [process.control("evaluate", {"phase": "final"}, timeout=600.0) for process in nodes]
        reports = [process.control("metrics") for process in nodes]
        statuses = [process.control("status") for process in nodes]
        phases["final_evaluation"] = time.monotonic() - mark
    finally:
        for process in everyone:
            process.stop()
    leftovers = [p.name for p in everyone if p.alive()]
    if leftovers:
        raise DemoError(f"daemons still running after stop: {', '.join(leftovers)}")
    result = DemoResult(settings, workdir, layout.cpm_peer, cpm_status)
    for i, (final, report, status) in enumerate(zip(finals, reports, statuses)):
        model_name = settings.models[i % len(settings.models)]
        result.nodes.append(_node_summary(i, layout, model_name, final, report, status))
    result.wall_s = time.monotonic() - started
    result.phases_s = phases
    return result


def _wait_for_rounds(layout: DemoLayout, settings: DemoSettings, cpm: DaemonProcess, nodes: list[DaemonProcess],
                     started: float, on_snapshot: Callable[[Snapshot], None] | None, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        for process in [cpm, *nodes]:
            if not process.alive():
                raise DemoError(f"{process.name} died:\n{process.log_tail()}")
        cpm_status = cpm.control("cpm-status")
        node_statuses = [_safe_status(p) for p in nodes]
        if on_snapshot:
            on_snapshot(Snapshot(time.monotonic() - started, cpm_status, node_statuses))
        rounds_done = cpm_status.get("rounds_closed", 0) >= settings.rounds
        idle = all((s.get("learner") or {}).get("phase") == "waiting" for s in node_statuses)
        if rounds_done and idle:
            return cpm_status
        if time.monotonic() > deadline:
            raise DemoError(f"the consortium did not finish {settings.rounds} rounds in {timeout_s:.0f} s")
        time.sleep(POLL_S)


def served_as_teacher(exchanges: dict[str, Any]) -> int:
    """Completed exchanges in the teacher role, from a node's ``exchanges`` status."""
    return int((exchanges.get("counts") or {}).get("teacher", {}).get("done", 0))


def _safe_status(process: DaemonProcess) -> dict[str, Any]:
    try:
        return process.control("status", timeout=5.0)
    except DemoError as exc:
        return {"error": str(exc)}


def _first(metrics: list[dict[str, Any]], phases: tuple[str, ...]) -> dict[str, Any] | None:
    return next((m for m in metrics if m.get("phase") in phases), None)


def _node_summary(index: int, layout: DemoLayout, model_name: str, final: dict[str, Any],
                  report: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    metrics = report.get("metrics", [])
    before = _first(metrics, ("warm-up", "initial")) or (metrics[0] if metrics else {})
    home = layout.nodes[index]
    try:
        view = verify_file(log_path(home))
        audit = {"ok": view.report.ok, "entries": len(view.entries),
                 "problem": None if view.report.problem is None else str(view.report.problem)}
    except (AuditError, OSError) as exc:
        audit = {"ok": False, "entries": 0, "problem": str(exc)}
    exchanges = status.get("exchanges", {})
    learner = status.get("learner", {})
    model = (learner.get("learner") or {}).get("model") or {}
    return {
        "name": f"node-{index}",
        "peer_id": layout.node_peers[index],
        "home": str(home.root),
        "model": model_name,
        "model_type": model.get("model_type"),
        "parameters": model.get("parameters"),
        "pass1_before": before.get("pass1"),
        "pass1_after": final.get("pass1"),
        "pass1_after_ci": final.get("pass1_ci"),
        "val_loss_before": before.get("val_loss"),
        "val_loss_after": final.get("val_loss"),
        "dev_loss_before": before.get("dev_loss"),
        "dev_loss_after": final.get("dev_loss"),
        "exchanges_as_student": report.get("counts", {}).get("as_student", 0),
        "exchanges_as_teacher": served_as_teacher(exchanges),
        "failed_exchanges": report.get("counts", {}).get("failed", 0),
        "bytes_received": report.get("counts", {}).get("bytes_received", 0),
        "bytes_sent": exchanges.get("bytes_sent", 0),
        "epsilon_spent": exchanges.get("epsilon_spent", 0.0),
        "rewards": report.get("rewards", []),
        "curve": [{"round": m.get("round"), "phase": m.get("phase"), "pass1": m.get("pass1"),
                   "val_loss": m.get("val_loss"), "dev_loss": m.get("dev_loss")} for m in [*metrics]],
        "audit": audit,
        "status": {"round": learner.get("round"), "phase": learner.get("phase")},
    }
