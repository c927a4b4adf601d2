"""The study's shared warm-ups: which (seed, node) warm-ups pending runs need, and that a cached one is reused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from knexa_lab.inprocess import cached_warmup, seed_daemon_homes, warm_up_all, warmup_key
from knexa_lab.plan import DemoSettings
from knexa_lab.study import StudyFiles, StudySpec
from knexa_lab.study_run import RunTask, warmup_tasks
from knexa_node.daemon.curve import CURVE_FILE, LearningCurve
from knexa_node.daemon.learner import AGENT_DIR
from knexa_node.learn.state import CURRENT, load_state


def _tasks(spec: StudySpec, files: StudyFiles) -> list[RunTask]:
    return [RunTask(policy, seed, spec.settings(policy, seed), files) for policy, seed in spec.runs()]


def test_each_seed_and_node_is_warmed_up_once_for_every_policy_that_starts_warm(tmp_path: Path) -> None:
    files = StudyFiles.at(tmp_path / "s.json")
    spec = StudySpec(nodes=3, rounds=1, seeds=(0, 1), policies=("knexa", "random", "pooled"), warmup_epochs=2)
    wanted = warmup_tasks(_tasks(spec, files))
    assert sorted((t.settings.seed, t.index) for t in wanted) == [(s, i) for s in (0, 1) for i in range(3)]
    assert warmup_tasks(_tasks(StudySpec(nodes=3, seeds=(0,), policies=("pooled",), warmup_epochs=2), files)) == []
    assert warmup_tasks(_tasks(StudySpec(nodes=3, seeds=(0,), policies=("knexa",), warmup_epochs=0), files)) == []


def test_a_cached_warmup_is_not_asked_for_again(tmp_path: Path) -> None:
    files = StudyFiles.at(tmp_path / "s.json")
    spec = StudySpec(nodes=2, rounds=1, seeds=(0,), policies=("knexa", "local-only"), warmup_epochs=1)
    settings = _tasks(spec, files)[0].execution_settings()
    assert settings.warmup_cache == str(files.warmups) and not cached_warmup(settings, 0)
    (files.warmups / warmup_key(settings, 0)).mkdir(parents=True)
    (files.warmups / warmup_key(settings, 0) / CURRENT).write_text("state")
    assert cached_warmup(settings, 0)
    assert [(t.settings.seed, t.index) for t in warmup_tasks(_tasks(spec, files))] == [(0, 1)]


@pytest.mark.parametrize("field, value", [("seed", 1), ("warmup_epochs", 3), ("shard_size", 50), ("lr", 1e-3)])
def test_the_warmup_key_changes_with_what_the_warmup_depends_on(field: str, value: float) -> None:
    base = StudySpec(nodes=2, seeds=(0,), policies=("knexa",), warmup_epochs=1).settings("knexa", 0)
    assert warmup_key(base, 0) == warmup_key(replace(base, policy="random", teachers_per_student=2), 0)
    assert warmup_key(base, 0) != warmup_key(base, 1)
    assert warmup_key(replace(base, **{field: value}), 0) != warmup_key(base, 0)


@pytest.mark.slow
def test_compared_demo_daemons_start_from_one_shared_warmup(tmp_path: Path) -> None:
    settings = DemoSettings(nodes=2, rounds=1, seed=0, models=("embedded:llama-tiny", "embedded:gpt2-tiny"),
                            shard_size=24, warmup_epochs=1, warmup_cache=str(tmp_path / "warmup"))
    entries = list(warm_up_all(settings, tmp_path / "scratch", workers=1))
    assert sorted(e["node"] for e in entries) == [0, 1] and not any("error" in e for e in entries)
    assert list(warm_up_all(settings, tmp_path / "scratch", workers=1)) == []  # cached: nothing to do again
    for policy in ("random", "local-only"):
        layout = seed_daemon_homes(tmp_path / policy, replace(settings, policy=policy))
        for home in layout.nodes:
            curve = LearningCurve(home.state_dir / CURVE_FILE)
            assert [p["phase"] for p in curve.points] == ["warm-up"]  # the participant skips its own warm-up
            state = load_state(home.state_dir / AGENT_DIR)
            assert state is not None and state[2]["optimizer_steps"] > 0
    first = LearningCurve(tmp_path / "random" / "node-1" / "state" / CURVE_FILE).points
    assert first == LearningCurve(tmp_path / "local-only" / "node-1" / "state" / CURVE_FILE).points
