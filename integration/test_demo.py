"""The main job at its smallest: `knexa-node demo` with 3 node daemons and a CPM as real processes.

Asserts that exchanges happened, rewards reached the CPM, the bandit state
changed, every audit log verifies (through the real CLI, and the logs of a
teacher and its student cross-check), and no process is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def knexa_node(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "knexa-node"), *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def processes_using(path: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(path) in part for part in proc.info["cmdline"] or []):
                found.append(f"{proc.info['pid']} {' '.join(proc.info['cmdline'])[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_smallest_demo_runs_the_whole_protocol(tmp_path: Path) -> None:
    workdir = tmp_path / "consortium"
    result = knexa_node("demo", "--nodes", "3", "--rounds", "2", "--workdir", str(workdir), "--shard-size", "240",
                        "--warmup-epochs", "1", "--exchange-budget", "16", "--transfer-per-category", "16",
                        "--json", timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)

    assert processes_using(workdir) == []
    cpm = summary["cpm"]
    assert cpm["rounds_closed"] == 2
    assert cpm["proposals"] >= 2  # one disjoint pair per round with 3 nodes
    assert cpm["feedback"] >= 1, "no reward reached the CPM"
    assert cpm["bandit_updates"] == cpm["feedback"] >= 1
    assert (workdir / "cpm" / "state" / "cpm" / "journal.bin").stat().st_size > 0 or \
        (workdir / "cpm" / "state" / "cpm" / "snapshot.bin").exists()

    nodes = summary["nodes"]
    assert len(nodes) == 3
    assert sum(n["exchanges_as_student"] for n in nodes) >= 1
    assert sum(n["exchanges_as_teacher"] for n in nodes) >= 1
    assert sum(n["bytes_received"] for n in nodes) > 0
    for node in nodes:
        assert node["peer_id"].startswith("12D3KooW")
        assert node["audit"]["ok"], node["audit"]
        assert 0.0 <= node["pass1_after"] <= 1.0 and node["val_loss_after"] > 0
        verified = knexa_node("audit", "verify", "--home", node["home"], "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert json.loads(verified.stdout)["ok"] is True

    student = next(n for n in nodes if n["exchanges_as_student"])
    teacher_id = student["rewards"][0]["teacher"]
    teacher = next(n for n in nodes if n["peer_id"] == teacher_id)
    crossed = knexa_node("audit", "cross-check", str(Path(student["home"]) / "audit" / "exchange.log"),
                         str(Path(teacher["home"]) / "audit" / "exchange.log"), "--json")
    assert crossed.returncode == 0, crossed.stdout + crossed.stderr
    assert (workdir / "learning-curves.png").stat().st_size > 10_000
