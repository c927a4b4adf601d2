"""The node's learning agent behind one lock, for a trio daemon.

Torch work is blocking and not thread-safe on one model, so every use of the
agent goes through :meth:`Learner.call`: one worker thread at a time, the
trio loop stays free for the network. Loading the model also happens in a
thread, after the daemon is ready, so a slow model load never delays the
ready line or the control socket.

The learning engine itself (``knexa_node.learn.agent``: torch, transformers,
peft) is imported by that load, in its thread, through :func:`learning_engine`:
importing it took most of a learning node's start-up (43 s of 43.5 s to the
model on a loaded 2-core machine, against 3.5 s for a relay). Like
``knexa_cli.lazy``, a deferral on purpose, not a way around an import cycle.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import trio

from knexa_node.config import Config
from knexa_node.daemon.datasets import NodeData

if TYPE_CHECKING:
    from knexa_node.learn.agent import Agent, AgentConfig

T = TypeVar("T")
AGENT_DIR = "agent"  # the agent's state, in the home's state directory


def learning_engine(module: str = "agent") -> ModuleType:
    """``knexa_node.learn.<module>``, imported on first use (torch, transformers, peft come with it)."""
    return importlib.import_module(f"knexa_node.learn.{module}")


def agent_config(config: Config, *, total_rounds: int) -> AgentConfig:
    learning = config.learning
    engine = learning_engine()
    return engine.AgentConfig(
        train_mode=engine.default_train_mode(config.model.path),
        lora_rank=config.model.lora_rank,
        lr=learning.lr,
        warmup_fraction=learning.warmup_fraction,
        batch_size=learning.batch_size,
        generation_batch_size=learning.generation_batch_size,
        grad_accumulation=learning.grad_accumulation,
        device=config.model.device,
        prompt_format=config.model.prompt_format,
        total_rounds=max(total_rounds, 1),
        alpha_start=learning.alpha_start,
        alpha_end=learning.alpha_end,
        temperature_start=learning.temperature_start,
        temperature_end=learning.temperature_end,
        reward_gamma=learning.reward_gamma,
        reward_delta=learning.reward_delta,
        kd_filter=learning.kd_filter,
        verify=learning.verify,
        teacher_samples=learning.teacher_samples,
        teacher_temperature=learning.teacher_temperature,
        answers_per_prompt=learning.answers_per_prompt,
        untested=learning.untested,
        min_mean_logprob=learning.min_mean_logprob,
        check_received=learning.check_received,
        exchange_budget=learning.exchange_budget,
        weak_pass1=learning.weak_pass1,
        distill_epochs=learning.distill_epochs,
        received_memory=learning.received_memory,
        replay_after=learning.replay_after,
        skip_held=learning.skip_held,
        distill_guard=learning.distill_guard,
        seed=config.data.seed * 1000 + config.data.shard,
    )


def evaluation_point(agent: Agent, data: NodeData, round_: int, phase: str) -> dict[str, Any]:
    """A node's measurement: greedy Pass@1 on its test set with its interval, private and public losses."""
    started = time.monotonic()
    report = agent.evaluate(data.test, samples=1)
    return {
        "round": round_, "phase": phase, "time": time.time(),
        "pass1": report.pass_at[1].value, "pass1_ci": [report.pass_at[1].low, report.pass_at[1].high],
        "pass5": report.pass_at[1].value if 5 not in report.pass_at else report.pass_at[5].value,
        "val_loss": agent.validation_loss(), "dev_loss": agent.validation_loss(data.dev),
        "per_category": report.per_category, "test_problems": report.problems,
        "seconds": time.monotonic() - started,
    }


class Learner:
    def __init__(self, config: Config, state_dir: Path, data: NodeData, *, total_rounds: int = 0,
                 model_cache: Path | None = None, on_event: Callable[..., None] | None = None) -> None:
        self.config, self.state_dir, self.data = config, Path(state_dir), data
        self.total_rounds, self.model_cache = total_rounds or config.learning.schedule_rounds, model_cache
        self.agent: Agent | None = None
        self.busy: str = "loading"
        self._lock = trio.Lock()
        self._loaded = trio.Event()
        self.load_error: str | None = None
        self.on_event = on_event
        self.seconds: dict[str, float] = {}  # busy time by kind of work ("local epoch", "distilling", ...)

    def _load(self) -> Agent:
        return learning_engine().Agent(self.config.model.path, self.state_dir / AGENT_DIR,
                                       agent_config(self.config, total_rounds=self.total_rounds),
                                       train=self.data.train, validation=self.data.validation, model_cache=self.model_cache)

    @property
    def model_state(self) -> str:
        """``loading`` until the model is built, then ``ready`` or ``failed`` (see ``load_error``)."""
        if not self._loaded.is_set():
            return "loading"
        return "ready" if self.agent is not None else "failed"

    async def load(self) -> None:
        """Build the agent in a worker thread; log ``model-ready`` with the seconds it took.

        Until it has finished, :meth:`call` waits (exchanges and round steps queue
        behind it, each bounded by its own deadline) and ``status`` says ``loading``.
        """
        started = trio.current_time()
        try:
            self.agent = await trio.to_thread.run_sync(self._load)
        except Exception as exc:  # a bad model directory: reported in status, the daemon keeps serving
            self.load_error = f"{type(exc).__name__}: {exc}"[:500]
            raise
        finally:
            self.busy = "idle"
            self.seconds["loading"] = trio.current_time() - started
            self._loaded.set()
        if self.on_event is not None:
            self.on_event("model-ready", seconds=round(self.seconds["loading"], 3), model=self.config.model.path)

    async def call(self, fn: Callable[[Agent], T], *, doing: str = "working") -> T:
        """Run ``fn(agent)`` in a worker thread, one at a time."""
        await self._loaded.wait()
        if self.agent is None:
            raise RuntimeError(f"the model could not be loaded: {self.load_error}")
        agent = self.agent
        async with self._lock:
            self.busy = doing
            started = trio.current_time()
            try:
                return await trio.to_thread.run_sync(fn, agent)
            finally:
                self.busy = "idle"
                seconds = trio.current_time() - started
                kind = doing.split(" (")[0]
                self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds
                if self.on_event is not None:
                    self.on_event("learner-busy", doing=doing, seconds=round(seconds, 3))

    def status(self) -> dict[str, Any]:
        agent = self.agent
        return {
            "busy": self.busy,
            "model_state": self.model_state,
            "load_error": self.load_error,
            "model": dict(agent.describe()) if agent is not None else None,
            "data": self.data.sizes(),
            "busy_seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }
