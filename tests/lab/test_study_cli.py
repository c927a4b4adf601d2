"""`knexa-node study` through the real command line: argument errors, and a tiny real study that resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200"}


def knexa_node(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "knexa-node"), "study", *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV)


@pytest.mark.parametrize("args, message", [
    (["--policies", "knexa,oracle"], "--policies: unknown policy 'oracle'"),
    (["--seeds", "0,one"], "--seeds: expected integers"),
    (["--seeds", "1,1"], "--seeds: '1' is listed twice"),
    (["--nodes", "1"], "--nodes: a consortium needs at least 2 nodes"),
    (["--nodes", "4", "--teachers-per-student", "4"], "--teachers-per-student: between 1 and nodes - 1 = 3"),
    (["--dirichlet-alpha", "0"], "--dirichlet-alpha: must be positive"),
    (["--rounds", "0"], "--rounds: at least 1"),
    (["--workers", "-1"], "--workers"),
    (["--transfer-per-category", "0"], "--transfer-per-category: between 1 and 1024"),
    (["--exchange-budget", "0"], "--exchange-budget: between 1 and 100000"),
    (["--nodes", "9", "--shard-size", "600"], "--shard-size: 600 x 9 nodes, but the embedded pool holds 4800"),
])
def test_bad_arguments_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    done = knexa_node(*args, "--out", str(tmp_path / "s.json"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "s.runs").exists()


def test_out_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    done = knexa_node("--out", str(tmp_path))
    assert done.returncode == 2 and "is a directory" in done.stderr


def test_help_explains_the_study() -> None:
    done = knexa_node("--help")
    assert done.returncode == 0
    for option in ("--nodes", "--rounds", "--seeds", "--policies", "--dirichlet-alpha", "--teachers-per-student",
                   "--transfer-per-category", "--exchange-budget", "--json", "--out", "pooled"):
        assert option in done.stdout


@pytest.mark.slow
def test_a_tiny_real_study_writes_its_document_and_plot_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    args = ["--nodes", "2", "--rounds", "1", "--seeds", "0", "--policies", "local-only,pooled,random",
            "--models", "embedded:llama-tiny,embedded:gpt2-tiny", "--shard-size", "24", "--warmup-epochs", "1",
            "--transfer-per-category", "16", "--exchange-budget", "16", "--workers", "2", "--json", "--out", str(out)]
    done = knexa_node(*args, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert json.loads(out.read_text()) == document
    assert set(document["policies"]) == {"local-only", "pooled", "random"}
    for name, policy in document["policies"].items():
        (final,) = policy["final_pass1_by_seed"].values()
        assert list(policy["final_pass1_by_seed"]) == ["0"] and 0.0 <= final <= 1.0
        assert policy["curve"]["labels"] == ["start", "1", "final"] and len(policy["curve_by_seed"]["0"]) == 3
        assert policy["final_pass1"]["mean"] == final and policy["final_pass1"]["ci95"] is None
        assert policy["wall_s_by_seed"]["0"] > 0 and policy["node_seconds_per_round_by_seed"]["0"] > 0
        assert 0.0 <= policy["headroom_by_seed"]["0"] <= 1.0
    assert document["policies"]["random"]["exchanges_by_seed"]["0"] == 1  # 2 nodes: one pair in the round
    assert document["policies"]["local-only"]["exchanges_by_seed"]["0"] == 0
    assert document["policies"]["random"]["pairing_by_seed"]["0"] == {
        "least_learned": 0, "most_learned": 1, "repeated_pairs": 0.0}  # one of the two learned, once
    assert document["headroom"] == document["policies"]["local-only"]["headroom_by_seed"]
    assert "gap_closed" in document["policies"]["random"] and "vs_local_only" in document["policies"]["pooled"]
    assert document["settings"]["teachers_per_student"] == 1 and document["failed"] == []
    assert (document["settings"]["transfer_per_category"], document["settings"]["exchange_budget"]) == (16, 16)
    # The one exchange is in the last round: measured right after it (final), no gain one round later.
    random_run = json.loads((tmp_path / "tiny.runs" / "random-seed0.json").read_text())
    (outcome,) = random_run["exchange_outcomes"]
    assert set(random_run["phases_s"]) >= {"lockstep_local", "lockstep_measure", "lockstep_exchange"}
    assert random_run["phases_s"]["lockstep_local"] > 0 and random_run["phases_s"]["lockstep_exchange"] > 0
    assert outcome["round"] == 1 and outcome["student"] in ("node-0", "node-1") and outcome["gain_next"] is None
    assert outcome["after_basis"] in ("final", "after-exchange") and 0.0 <= outcome["pass1_after"] <= 1.0
    collapse = document["policies"]["random"]["collapse"]
    assert collapse["distillations"] == 1 and collapse["worse"] == int(outcome["pass1_after"] < outcome["pass1_before"])
    assert document["reward_validity"]["eq3"]["n"] == 0
    assert document["policies"]["pooled"]["collapse"]["distillations"] == 0
    png = Path(document["png"])
    assert png == tmp_path / "tiny.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000

    # One warm-up per node, done once and shared by local-only and random (pooled trains its own models).
    assert len([p for p in (tmp_path / "tiny.warmup").iterdir() if not p.name.startswith(".")]) == 2
    assert document["policies"]["local-only"]["curve_by_seed"]["0"][0] == \
        document["policies"]["random"]["curve_by_seed"]["0"][0]
    records = sorted((tmp_path / "tiny.runs").glob("*.json"))
    assert [r.name for r in records] == ["local-only-seed0.json", "pooled-seed0.json", "random-seed0.json"]
    stamps = [r.stat().st_mtime_ns for r in records]
    again = knexa_node(*args, timeout=300)  # resumes: every run is on disk, nothing is measured again
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r.stat().st_mtime_ns for r in records] == stamps
    assert json.loads(again.stdout)["policies"]["pooled"]["final_pass1_by_seed"] == \
        document["policies"]["pooled"]["final_pass1_by_seed"]
    changed = knexa_node(*args[:2], "--rounds", "2", *args[4:], timeout=300)  # the same --out, other settings
    assert changed.returncode == 2 and "measured with other settings" in changed.stderr
