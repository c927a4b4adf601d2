"""The data-pooling upper bound: one model of each node's kind trained on every node's private data.

What a consortium could reach if its members gave up privacy and pooled
their private shards: for each model kind in the consortium, one agent is
trained on the union of all nodes' private training (and validation) splits,
with the same epoch budget as the consortium's nodes (warm-up, then
``epochs_per_round`` per round), and evaluated on the same test set at the
same points. A node's result is its kind's pooled model; nodes of one kind
share it (their pooled data would be the same), so it is trained once.
No exchange, no CPM: it exists to be compared against, not deployed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from knexa_lab.inprocess import LocalNode, build_models_here, measure, node_entry
from knexa_lab.orchestrate import DemoResult
from knexa_lab.plan import DemoSettings, lay_out
from knexa_node.config import load_config
from knexa_node.daemon.datasets import NodeData, load_node_data
from knexa_node.daemon.learner import agent_config
from knexa_node.learn.agent import Agent

AUDIT_NOTE = "pooled baseline: private data pooled, no exchange, no log"


def run_pooled(workdir: Path, settings: DemoSettings, *, on_progress: Callable[[str], None] | None = None) -> DemoResult:
    started = time.monotonic()
    say = on_progress or (lambda message: None)
    layout = lay_out(workdir, settings)
    build_models_here(settings)
    configs = [load_config(home.config_file) for home in layout.nodes]
    shards = [load_node_data(config, base=home.root) for config, home in zip(configs, layout.nodes)]
    train = [p for data in shards for p in data.train]
    validation = [p for data in shards for p in data.validation]
    public = shards[0]  # transfer, dev and test are the same on every node
    pooled = NodeData(train, validation, public.transfer, public.dev, public.test)
    by_kind: dict[str, LocalNode] = {}
    for i, (config, home) in enumerate(zip(configs, layout.nodes)):
        kind = config.model.path
        if kind in by_kind:
            continue
        agent = Agent(kind, home.state_dir / "agent-pooled", agent_config(config, total_rounds=settings.rounds),
                      train=train, validation=validation)
        node = LocalNode(f"pooled-{kind.replace('embedded:', '')}", layout.node_peers[i], kind, agent, pooled)
        for _ in range(settings.warmup_epochs):
            agent.local_epoch()
        measure(node, 0, "warm-up" if settings.warmup_epochs else "initial")
        by_kind[kind] = node
        say(f"{node.name} ready ({agent.model_type}, {len(train)} pooled private problems)")
    for round_ in range(1, settings.rounds + 1):
        for node in by_kind.values():
            for _ in range(settings.epochs_per_round):
                node.agent.local_epoch()
            if round_ < settings.rounds:  # the last round is measured once, as "final"
                measure(node, round_, "after-local")
            node.agent.finish_round()
        say(f"round {round_}/{settings.rounds} done")
    for node in by_kind.values():
        measure(node, settings.rounds, "final")
    result = DemoResult(settings, workdir, "", {"rounds_closed": settings.rounds, "counters": {}, "bandit_updates": 0})
    for i, (config, home) in enumerate(zip(configs, layout.nodes)):
        entry = node_entry(by_kind[config.model.path], audit_note=AUDIT_NOTE)
        entry.update(name=f"node-{i}", peer_id=layout.node_peers[i], home=str(home.root),
                     pooled_model=by_kind[config.model.path].name)
        result.nodes.append(entry)
    result.wall_s = time.monotonic() - started
    result.phases_s = {"pooled": result.wall_s}
    return result
