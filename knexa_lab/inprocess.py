"""The demo's consortium built in one process: the same homes, models, shards and agent settings.

For the runs that do without daemons (the Central-KD baseline, and the
lock-step runner used to measure on machines where the network cannot run):
each node's config is written by :func:`lay_out` exactly as for the networked
demo, then read back, so both paths train identical agents on identical data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from knexa_node.config import Config, load_config
from knexa_node.daemon.datasets import NodeData, load_node_data
from knexa_node.identity import NodeHome
from knexa_node.daemon.curve import CURVE_FILE
from knexa_node.daemon.learner import AGENT_DIR, agent_config, evaluation_point
from knexa_lab.orchestrate import DemoResult, cached_model_names
from knexa_lab.plan import DemoLayout, DemoSettings, lay_out
from knexa_lab.pool import each, one_line_error
from knexa_lab.processes import DemoError
from knexa_node.learn.agent import Agent
from knexa_node.learn.embedded import resolve_model_path
from knexa_node.fsutil import atomic_write_text
from knexa_node.learn.state import CURRENT
from knexa_node.models import ModelPathError

WARMUP_POINT = "warmup-point.json"  # beside a cached state: its warm-up measurement (a daemon's first curve point)


@dataclass
class LocalNode:
    name: str
    peer_id: str
    model: str
    agent: Agent
    data: NodeData
    curve: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. another benchmark before/after
    as_student: int = 0
    as_teacher: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    rewards: list[dict[str, Any]] = field(default_factory=list)
    competence: dict[str, float] = field(default_factory=dict)  # dev-set Pass@1 per category, this round
    exchange_log: list[dict[str, Any]] = field(default_factory=list)  # per round as student: before/after, counts


def measure(node: LocalNode, round_: int, phase: str) -> dict[str, Any]:
    """The participant's evaluation (:func:`evaluation_point`), added to the node's curve."""
    point = evaluation_point(node.agent, node.data, round_, phase)
    node.curve.append(point)
    return point


def warmup_key(settings: DemoSettings, index: int) -> str:
    """What a node's warm-up depends on: equal keys give identical warm-up states (every policy of one seed)."""
    parts = (settings.seed, index, settings.nodes, settings.models[index % len(settings.models)],
             settings.dirichlet_alpha, settings.shard_size, settings.lr, settings.pretrained_lr, settings.batch_size,
             settings.warmup_epochs, settings.rounds, torch.__version__)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _from_cache(cache: Path | None, key: str, state_dir: Path) -> bool:
    """Copy a cached warm-up state into a fresh ``state_dir``; True when there was one."""
    if cache is None or not (cache / key / CURRENT).exists() or (state_dir / CURRENT).exists():
        return False
    shutil.copytree(cache / key, state_dir, dirs_exist_ok=True)
    return True


def _to_cache(cache: Path | None, key: str, agent: Agent, point: dict[str, Any] | None = None) -> None:
    """Publish a warm-up state (and its measurement) atomically; another run of the same seed may race: first wins."""
    if cache is None:
        return
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f".{key}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(agent.save().parent, staging)
    if point is not None:
        (staging / WARMUP_POINT).write_text(json.dumps(point))
    try:
        os.rename(staging, cache / key)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)


def _load_agent(home: NodeHome, settings: DemoSettings, state_name: str) -> tuple[Config, NodeData, Agent]:
    config = load_config(home.config_file)
    data = load_node_data(config, base=home.root)
    agent = Agent(config.model.path, home.state_dir / state_name, agent_config(config, total_rounds=settings.rounds),
                  train=data.train, validation=data.validation)
    return config, data, agent


def _cache_dir(settings: DemoSettings) -> Path | None:
    """The warm-up cache of ``settings``, None without one."""
    return Path(settings.warmup_cache) if settings.warmup_cache else None


def cached_warmup(settings: DemoSettings, index: int) -> bool:
    """Whether node ``index``'s warm-up is already in ``settings.warmup_cache``."""
    cache = _cache_dir(settings)
    return cache is not None and (cache / warmup_key(settings, index) / CURRENT).exists()


def warm_up_node(workdir: Path, settings: DemoSettings, index: int) -> None:
    """Run node ``index``'s warm-up alone and publish it, with its measurement, to ``settings.warmup_cache``.

    A study does this for every node of a seed before that seed's runs, on all
    cores, so that the runs (every policy of the seed) start from it instead of
    each warming up the same nodes again; the demo's ``--compare`` does it for
    the daemons of every policy it compares (:func:`seed_daemon_home`).
    """
    if not settings.warmup_cache or settings.warmup_epochs < 1 or cached_warmup(settings, index):
        return
    layout = lay_out(workdir, settings)
    build_models_here(settings)
    _, data, agent = _load_agent(layout.nodes[index], settings, "agent-warmup")
    for _ in range(settings.warmup_epochs):
        agent.local_epoch()
    point = evaluation_point(agent, data, 0, "warm-up")
    _to_cache(_cache_dir(settings), warmup_key(settings, index), agent, point)


@dataclass(frozen=True)
class WarmupTask:
    """One node's warm-up for :func:`knexa_lab.pool.each`: settings carry the cache; ``scratch`` holds its homes."""

    settings: DemoSettings
    index: int
    scratch: Path


def run_warmup_task(task: WarmupTask) -> dict[str, Any]:
    """:func:`warm_up_node` in a scratch directory; ``{"error": ...}`` if it failed (its runs then warm up alone)."""
    torch.set_num_threads(1)
    started = time.monotonic()
    task.scratch.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"warmup-seed{task.settings.seed}-node{task.index}-", dir=task.scratch))
    entry: dict[str, Any] = {"seed": task.settings.seed, "node": task.index}
    try:
        warm_up_node(workdir, task.settings, task.index)
    except Exception as exc:  # noqa: BLE001 - reported to the caller; the runs can still warm up alone
        return {**entry, "error": one_line_error(exc)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {**entry, "wall_s": time.monotonic() - started}


def warm_up_all(settings: DemoSettings, scratch: Path, workers: int) -> Iterator[dict[str, Any]]:
    """Every node's warm-up into ``settings.warmup_cache``, ``workers`` at a time; one entry per node as it ends."""
    tasks = [WarmupTask(settings, index, scratch) for index in range(settings.nodes) if not cached_warmup(settings, index)]
    try:
        yield from each(run_warmup_task, tasks, workers)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def seed_daemon_homes(workdir: Path, settings: DemoSettings) -> DemoLayout:
    """Lay out a demo's homes and give every node daemon its cached warm-up (:func:`seed_daemon_home`)."""
    layout = lay_out(workdir, settings)
    for index, home in enumerate(layout.nodes):
        seed_daemon_home(settings, index, home)
    return layout


def seed_daemon_home(settings: DemoSettings, index: int, home: NodeHome) -> bool:
    """Give a node daemon's fresh home the cached warm-up: its agent state and the warm-up point of its curve.

    The daemon's participant then finds its warm-up done and starts with round 1.
    False (nothing written) when the cache does not hold it or the home already has a state.
    """
    key = warmup_key(settings, index)
    cache = _cache_dir(settings)
    if cache is None or not (cache / key / WARMUP_POINT).exists():
        return False
    if not _from_cache(cache, key, home.state_dir / AGENT_DIR):
        return False
    point = (cache / key / WARMUP_POINT).read_text()
    atomic_write_text(home.state_dir / CURVE_FILE, point.strip() + "\n")
    return True


def build_models_here(settings: DemoSettings) -> None:
    """Build or import the settings' cached models in this process, which loads them next anyway (race-safe)."""
    for name in cached_model_names(settings):
        try:
            resolve_model_path(name)
        except ModelPathError as exc:
            raise DemoError(f"preparing the models failed: {exc}") from None


def prepare_nodes(workdir: Path, settings: DemoSettings, say: Callable[[str], None],
                  *, state_name: str = "agent-local") -> tuple[DemoLayout, list[LocalNode]]:
    """Lay out the homes, build the embedded models, load every agent and run its warm-up.

    With ``settings.warmup_cache`` a node's warm-up is done once per
    :func:`warmup_key` and reused (the policies of one seed share it).
    """
    layout = lay_out(workdir, settings)
    build_models_here(settings)
    cache = _cache_dir(settings)
    nodes = []
    for i, home in enumerate(layout.nodes):
        key = warmup_key(settings, i)
        cached = settings.warmup_epochs > 0 and _from_cache(cache, key, home.state_dir / state_name)
        config, data, agent = _load_agent(home, settings, state_name)
        node = LocalNode(f"node-{i}", layout.node_peers[i], config.model.path, agent, data)
        if not cached:
            for _ in range(settings.warmup_epochs):
                agent.local_epoch()
            if settings.warmup_epochs > 0:
                _to_cache(cache, key, agent)
        measure(node, 0, "warm-up" if settings.warmup_epochs else "initial")
        nodes.append(node)
        say(f"{node.name} ready ({agent.model_type}, {len(data.train)} private problems)")
    return layout, nodes


def node_entry(node: LocalNode, *, audit_note: str) -> dict[str, Any]:
    """The node's line of the demo summary, in the networked demo's shape."""
    before, final = node.curve[0], node.curve[-1]
    return {
        "name": node.name, "peer_id": node.peer_id, "home": "", "model": node.model,
        "model_type": node.agent.model_type, "parameters": node.agent.total_parameters,
        "pass1_before": before["pass1"], "pass1_after": final["pass1"], "pass1_after_ci": final.get("pass1_ci"),
        "val_loss_before": before["val_loss"], "val_loss_after": final["val_loss"],
        "dev_loss_before": before["dev_loss"], "dev_loss_after": final["dev_loss"],
        "exchanges_as_student": node.as_student, "exchanges_as_teacher": node.as_teacher, "failed_exchanges": 0,
        "bytes_received": node.bytes_received, "bytes_sent": node.bytes_sent, "epsilon_spent": 0.0,
        "rewards": node.rewards, "curve": node.curve, "extra": node.extra,
        "audit": {"ok": None, "entries": 0, "problem": audit_note},
        "status": {"round": node.agent.round, "phase": "done"},
    }


def finish(result: DemoResult, layout: DemoLayout, nodes: list[LocalNode], *, audit_note: str) -> DemoResult:
    for node, home in zip(nodes, layout.nodes):
        measure(node, result.settings.rounds, "final")
        entry = node_entry(node, audit_note=audit_note)
        entry["home"] = str(home.root)
        result.nodes.append(entry)
    return result
