"""Where a demo's wall time went, from the daemons' own event logs (issue 8's measure).

    .venv/bin/python bench/demo_breakdown.py WORKDIR

Reads `<workdir>/*/logs/daemon.log` (JSON events) and `<workdir>/summary.json`
and prints, per node and in total, the seconds spent in learning (local
epochs, evaluations, distillation, building packages), in exchanges on the
wire (stream open to receipt, including the teacher's package build), in
matchmaking (the CPM's policy), and the demo's own phases.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def main(workdir: Path) -> None:
    summary = json.loads((workdir / "summary.json").read_text())
    report: dict = {"wall_s": summary["wall_s"], "demo_phases_s": summary["phases_s"], "nodes": {}}
    # exchange_wire: the students' exchange time (stream open to receipt), which includes the
    # teacher building its package (also counted under "learning: building package" if logged).
    totals: dict[str, float] = {"exchange_wire": 0.0, "matchmaking": 0.0}
    for log in sorted(workdir.glob("node-*/logs/daemon.log")):
        node = {"learning": {}, "exchange_as_student_s": 0.0}
        for e in events(log):
            if e.get("event") == "learner-busy":
                kind = str(e.get("doing", "")).split(" (")[0]
                node["learning"][kind] = node["learning"].get(kind, 0.0) + e.get("seconds", 0.0)
            elif e.get("event") == "exchange" and e.get("role") == "student":
                node["exchange_as_student_s"] += e.get("seconds", 0.0)
        report["nodes"][log.parent.parent.name] = node
        for kind, seconds in node["learning"].items():
            totals["learning: " + kind] = totals.get("learning: " + kind, 0.0) + seconds
        totals["exchange_wire"] += node["exchange_as_student_s"]
    for e in events(workdir / "cpm" / "logs" / "daemon.log"):
        if e.get("event") == "paired":
            totals["matchmaking"] += e.get("matchmaking_s", 0.0)
    report["totals_s"] = {k: round(v, 4) for k, v in totals.items()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
