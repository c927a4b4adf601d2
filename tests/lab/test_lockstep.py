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


def test_several_teachers_per_student_distil_in_one_phase_and_warmups_are_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def small_public_sets(config, base=None) -> NodeData:
        data = load_node_data(config, base=base)
        return NodeData(data.train, data.validation, data.transfer[:12], data.dev[:6], data.test[:6])

    monkeypatch.setattr(inprocess, "load_node_data", small_public_sets)
    settings = DemoSettings(nodes=3, rounds=1, policy="random", teachers_per_student=2, shard_size=20,
                            warmup_epochs=1, warmup_cache=str(tmp_path / "warmup"),
                            models=("embedded:llama-tiny", "embedded:gpt2-tiny", "embedded:qwen2-tiny"))
    result = run_lockstep(tmp_path / "first", settings)
    pairs = [pair.split("->") for pair in result.cpm_status["history"][0]["pairs"]]
    assert len(pairs) > 3 // 2  # more than disjoint pairs could give
    for node in result.nodes:
        teachers = [r["teacher"] for r in node["rewards"]]
        assert len(teachers) == len(set(teachers)) <= 2 and node["name"] not in teachers
        assert sum(t == node["name"] for t, _ in pairs) <= 2
        if teachers:  # one distillation phase from all of them
            (phase,) = node["exchanges"]
            assert sorted(phase["teachers"]) == sorted(teachers)
    assert len(list((tmp_path / "warmup").iterdir())) == 3
    again = run_lockstep(tmp_path / "second", DemoSettings(**{**settings.__dict__, "policy": "local-only"}))
    for first, second in zip(result.nodes, again.nodes):
        assert first["val_loss_before"] == second["val_loss_before"]  # the same warm-up state, not a new one
    assert again.cpm_status["history"][0]["pairs"] == []
