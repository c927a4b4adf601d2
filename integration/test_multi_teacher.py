"""Several teachers per student in the networked daemons: `knexa-node demo --teachers-per-student 2`, real processes.

Three nodes and a CPM, one round, c = 2: every node is the student of both
others and the teacher of both. Asserts that every student fetched two
packages with a targeted request, distilled them in ONE phase, and sent two
feedbacks that the CPM journaled; that the profiles carried competence to
the policy; and that every audit log verifies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_demo import knexa_node, processes_using

pytestmark = pytest.mark.slow


def events(home: str) -> list[dict]:
    lines = (Path(home) / "logs" / "daemon.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_every_student_distils_two_packages_once_and_reports_both(tmp_path: Path) -> None:
    workdir = tmp_path / "consortium"
    result = knexa_node("demo", "--nodes", "3", "--rounds", "1", "--teachers-per-student", "2", "--workdir",
                        str(workdir), "--shard-size", "60", "--warmup-epochs", "0", "--round-deadline", "300",
                        "--exchange-budget", "16", "--transfer-per-category", "16",
                        "--json", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert processes_using(workdir) == []

    cpm = summary["cpm"]
    assert cpm["rounds_closed"] == 1 and cpm["proposals"] == 6, cpm  # every directed pair of 3 nodes
    assert cpm["feedback"] == cpm["bandit_updates"] == 6 and cpm["failed_exchanges"] == 0, cpm
    paired = [e for e in events(str(workdir / "cpm")) if e.get("event") == "paired"]
    assert [(e["pairs"], e["with_competence"]) for e in paired] == [(6, 3)]

    for node in summary["nodes"]:
        log = events(node["home"])
        phases = [e for e in log if e.get("event") == "distil-phase"]
        assert len(phases) == 1 and phases[0]["packages"] == 2, phases  # one phase, both packages
        sent = [e for e in log if e.get("event") == "feedback-sent"]
        assert len(sent) == 2 and not any(e["failed"] for e in sent) and all(e["answer"] == "ok" for e in sent), sent
        served = [e for e in log if e.get("event") == "request-received"]
        assert len(served) == 2 and all(isinstance(e["categories"], list) for e in served), served
        assert len(node["rewards"]) == 2 and {r["reward_kind"] for r in node["rewards"]} == {"covered"}
        assert node["audit"]["ok"], node["audit"]
        verified = knexa_node("audit", "verify", "--home", node["home"], "--json")
        assert verified.returncode == 0 and json.loads(verified.stdout)["ok"] is True, verified.stdout + verified.stderr
