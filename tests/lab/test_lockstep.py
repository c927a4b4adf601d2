"""The lock-step consortium on real (tiny, embedded) agents: pairs form, students distil, the policy learns."""

from __future__ import annotations

from pathlib import Path

import pytest

from knexa_lab.lockstep import run_lockstep
from knexa_node.daemon.datasets import NodeData, load_node_data
from knexa_lab import inprocess
from knexa_lab.plan import DemoSettings

pytestmark = pytest.mark.slow


def test_one_round_pairs_distils_and_feeds_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def small_public_sets(config, base=None) -> NodeData:  # the real sets, cut: a round in seconds, not minutes
        data = load_node_data(config, base=base)
        return NodeData(data.train, data.validation, data.transfer[:24], data.dev[:16], data.test[:16])

    monkeypatch.setattr(inprocess, "load_node_data", small_public_sets)
    seen: list[tuple[str, str]] = []
    settings = DemoSettings(nodes=2, rounds=1, policy="knexa", models=("embedded:llama-tiny", "embedded:gpt2-tiny"),
                            shard_size=40, warmup_epochs=0)
    result = run_lockstep(tmp_path, settings, checkpoint=lambda node, phase: seen.append((node.name, phase)))

    assert seen == [("node-0", "before"), ("node-1", "before"), ("node-0", "after"), ("node-1", "after")]
    history = result.cpm_status["history"]
    assert len(history) == 1 and len(history[0]["pairs"]) == 1  # budget: half the members
    teacher, student = history[0]["pairs"][0].split("->")
    assert teacher != student
    nodes = {n["name"]: n for n in result.nodes}
    assert nodes[student]["exchanges_as_student"] == 1 and nodes[teacher]["exchanges_as_teacher"] == 1
    assert nodes[student]["bytes_received"] == nodes[teacher]["bytes_sent"] > 0
    (reward,) = nodes[student]["rewards"]
    assert reward["teacher"] == teacher and reward["protocol"] == "text"
    assert result.cpm_status["bandit_updates"] == 1 and result.cpm_status["mean_reward"] == reward["reward"]
    for node in result.nodes:
        assert [p["phase"] for p in node["curve"]] == ["initial", "after-local", "final"]
        assert 0.0 <= node["pass1_after"] <= 1.0
