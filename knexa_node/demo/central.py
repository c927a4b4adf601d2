"""The Central-KD baseline of the paper's Table 4: a server that sees every client's package.

By construction this baseline is centralized (a server collects the clients'
answers on the transfer set, ensembles them, and sends the ensemble back), so
it runs in one process: no CPM, no peer-to-peer exchange, the same agents,
shards, schedules and evaluation as the networked demo. It exists to be
compared against, not deployed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from knexa_node.config import load_config
from knexa_node.daemon.datasets import load_node_data
from knexa_node.daemon.learner import agent_config
from knexa_node.demo.orchestrate import DemoResult, _build_models
from knexa_node.demo.plan import DemoSettings, lay_out
from knexa_node.learn.agent import Agent
from knexa_node.learn.central import ensemble_packages


def _metrics(agent: Agent, data: Any, round_: int, phase: str) -> dict[str, Any]:
    report = agent.evaluate(data.test, samples=1)
    return {"round": round_, "phase": phase, "pass1": report.pass_at[1].value,
            "val_loss": agent.validation_loss(), "dev_loss": agent.validation_loss(data.dev)}


def run_central_kd(workdir: Path, settings: DemoSettings, *, on_progress: Callable[[str], None] | None = None) -> DemoResult:
    started = time.monotonic()
    say = on_progress or (lambda message: None)
    layout = lay_out(workdir, settings)
    _build_models(settings)
    agents, datas, curves = [], [], []
    for i, home in enumerate(layout.nodes):
        config = load_config(home.config_file)
        data = load_node_data(config, base=home.root)
        agent = Agent(config.model.path, home.state_dir / "agent-central", agent_config(config, total_rounds=settings.rounds),
                      train=data.train, validation=data.validation)
        for _ in range(settings.warmup_epochs):
            agent.local_epoch()
        agents.append(agent)
        datas.append(data)
        curves.append([_metrics(agent, data, 0, "warm-up")])
        say(f"node-{i} ready")
    received = [0] * len(agents)
    for round_ in range(1, settings.rounds + 1):
        for agent in agents:
            for _ in range(settings.epochs_per_round):
                agent.local_epoch()
        packages = [agent.teacher_package(datas[0].transfer, protocol="text").payload for agent in agents]
        ensemble = ensemble_packages(packages, round_index=round_)
        for i, (agent, data) in enumerate(zip(agents, datas)):
            agent.distill(ensemble, data.transfer, dev=data.dev)
            received[i] += len(ensemble)
            curves[i].append(_metrics(agent, data, round_, "after-round"))
            agent.finish_round()
        say(f"round {round_}/{settings.rounds} done")
    result = DemoResult(settings, workdir, "", {"rounds_closed": settings.rounds, "counters": {}, "bandit_updates": 0})
    for i, (agent, data) in enumerate(zip(agents, datas)):
        final = {**curves[i][-1], "phase": "final"}
        curves[i].append(final)
        before = curves[i][0]
        result.nodes.append({
            "name": f"node-{i}", "peer_id": layout.node_peers[i], "home": str(layout.nodes[i].root),
            "model": settings.models[i % len(settings.models)], "model_type": agent.model_type,
            "parameters": agent.total_parameters,
            "pass1_before": before["pass1"], "pass1_after": final["pass1"], "pass1_after_ci": None,
            "val_loss_before": before["val_loss"], "val_loss_after": final["val_loss"],
            "dev_loss_before": before["dev_loss"], "dev_loss_after": final["dev_loss"],
            "exchanges_as_student": settings.rounds, "exchanges_as_teacher": settings.rounds, "failed_exchanges": 0,
            "bytes_received": received[i], "bytes_sent": 0, "epsilon_spent": 0.0, "rewards": [],
            "curve": curves[i], "audit": {"ok": None, "entries": 0, "problem": "central baseline: no peer-to-peer exchange, no log"},
            "status": {"round": settings.rounds, "phase": "done"},
        })
    result.wall_s = time.monotonic() - started
    result.phases_s = {"central": result.wall_s}
    return result
