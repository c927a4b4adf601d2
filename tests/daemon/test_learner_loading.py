"""Work that arrives while the model loads waits for it (bounded by the caller's deadline); a failed load answers with why.

The Learner is the real one; only what its worker thread builds is replaced
(the real model build is covered by test_light_daemon.py).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

from knexa_node.config import Config
from knexa_node.daemon.datasets import NodeData
from knexa_node.daemon.learner import Learner


class BuiltAgent:
    def describe(self) -> dict[str, str]:
        return {"model": "built"}

    def __str__(self) -> str:
        return "the agent"


class GatedLearner(Learner):
    """Its model build blocks (in the worker thread) until the test opens the gate."""

    def __init__(self, tmp_path: Any, *, fails: bool = False) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        super().__init__(Config(), tmp_path, NodeData([], [], [], [], []),
                         on_event=lambda name, **fields: self.events.append((name, fields)))
        self.gate, self.fails = threading.Event(), fails

    def _load(self) -> Any:
        self.gate.wait(timeout=30)
        if self.fails:
            raise OSError("no such model directory")
        return BuiltAgent()


async def test_a_call_before_the_model_is_ready_waits_for_it(tmp_path):
    learner = GatedLearner(tmp_path)
    answers: list[str] = []

    async def early_exchange() -> None:
        answers.append(await learner.call(lambda agent: f"built with {agent}", doing="building package"))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(learner.load)
            nursery.start_soon(early_exchange)
            await trio.testing.wait_all_tasks_blocked()
            assert learner.status()["model_state"] == "loading" and answers == []
            learner.gate.set()
    assert answers == ["built with the agent"]
    assert learner.status()["model_state"] == "ready"
    ready = [fields for name, fields in learner.events if name == "model-ready"]
    assert len(ready) == 1 and ready[0]["seconds"] >= 0


async def test_a_call_after_a_failed_load_is_answered_with_the_reason(tmp_path):
    learner = GatedLearner(tmp_path, fails=True)
    learner.gate.set()
    with trio.fail_after(30):
        with pytest.raises(OSError):
            await learner.load()
        with pytest.raises(RuntimeError, match="no such model directory"):
            await learner.call(lambda agent: agent)
    assert learner.status()["model_state"] == "failed"
    assert "model-ready" not in [name for name, _ in learner.events]
