"""What the dashboard shows, built from what the daemon already keeps: pure functions and file reads.

The page's JSON (``GET /api/dashboard``) is one object:

- ``role``: ``node`` or ``cpm``; ``generated_at``: Unix time;
- ``status``: exactly ``knexa-node status --json`` (or ``knexa-cpm status --json``);
- ``curve``: the node's evaluation points (``state/metrics.jsonl``: round, phase, pass1, dev_loss, ...);
- ``exchanges``: one row per exchange in the node's audit log (proposal, round, role, peer, outcome,
  bytes, reward, distillation losses, items used (those that passed the student's re-check), audit seqs);
- ``audit``: the log's verification (``ok``, ``entries``, ``problem``).

Reading and verifying the audit log costs time proportional to its size, so
:class:`AuditCache` re-reads it only when the file changed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from knexa_node.audit import AuditError, log_path, verify_file
from knexa_node.identity import NodeHome

# Entries kinds that say which side of an exchange this node was on.
_TEACHER_KINDS = {"package-sent", "guardrail-redactions", "dp-epsilon-spent"}
_STUDENT_KINDS = {"package-received", "distillation", "reward-reported"}
MAX_EXCHANGE_ROWS = 200


def exchange_rows(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """Group audit entries by proposal into one row per exchange, newest last."""
    rows: dict[bytes, dict[str, Any]] = {}
    for entry in entries:
        ev = entry.event
        if not ev.proposal_id.strip(b"\0"):
            continue  # entries that belong to no exchange (e.g. refusals of outsiders)
        metrics = dict(ev.metrics)
        row = rows.setdefault(ev.proposal_id, {
            "proposal": ev.proposal_id.hex()[:16], "round": ev.round, "role": None, "peer": ev.peer,
            "protocol": ev.protocol, "outcome": ev.outcome, "bytes": 0, "reward": None, "loss_before": None,
            "loss_after": None, "items_used": None, "seqs": [], "time": entry.time,
        })
        row["seqs"].append(entry.seq)
        row["outcome"] = ev.outcome
        if ev.peer:
            row["peer"] = ev.peer
        if isinstance(metrics.get("role"), str):
            row["role"] = metrics["role"]
        elif ev.kind in _TEACHER_KINDS:
            row["role"] = "teacher"
        elif ev.kind in _STUDENT_KINDS:
            row["role"] = "student"
        if ev.package_size:
            row["bytes"] = ev.package_size
        for key in ("reward", "loss_before", "loss_after"):
            if isinstance(metrics.get(key), (int, float)):
                row[key] = float(metrics[key])
        if isinstance(metrics.get("items_used"), int):  # the distillation entry: items that passed the re-check
            row["items_used"] = metrics["items_used"]
    return list(rows.values())[-MAX_EXCHANGE_ROWS:]


class AuditCache:
    """The audit log's exchange rows and verification, re-read only when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int] | None = None
        self._value: tuple[list[dict[str, Any]], dict[str, Any]] = ([], {"ok": None, "entries": 0, "problem": None})

    def read(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return [], {"ok": None, "entries": 0, "problem": None}
        key = (info.st_size, info.st_mtime_ns)
        if key != self._key:
            try:
                view = verify_file(self.path)
                report = view.report.to_json()
                self._value = (exchange_rows(view.entries),
                               {"ok": report["ok"], "entries": report["entries"], "problem": report["problem"]})
            except AuditError as exc:
                self._value = ([], {"ok": False, "entries": 0, "problem": {"reason": str(exc)}})
            self._key = key
        return self._value


def read_curve(path: Path, limit: int = 500) -> list[dict[str, Any]]:
    """The node's evaluation points (one JSON object a line); an unreadable file is an empty curve."""
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, OSError):
        return []
    points = []
    for line in lines[-limit:]:
        try:
            point = json.loads(line)
        except ValueError:
            continue
        if isinstance(point, dict):
            points.append(point)
    return points


class DashboardData:
    """Assembles ``/api/dashboard`` for one daemon: its status provider and its home's files."""

    def __init__(self, role: str, home: NodeHome, status: Callable[[], dict[str, Any]]) -> None:
        self.role, self.home, self.status = role, home, status
        self.audit = AuditCache(log_path(home))

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "generated_at": time.time(), "status": self.status()}
        if self.role == "node":
            exchanges, audit = self.audit.read()
            out.update(curve=read_curve(self.home.state_dir / "metrics.jsonl"), exchanges=exchanges, audit=audit)
        return out
