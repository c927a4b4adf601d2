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
from typing import Callable

from knexa_lab.inprocess import finish, measure, prepare_nodes
from knexa_lab.orchestrate import DemoResult
from knexa_lab.plan import DemoSettings
from knexa_node.learn.central import ensemble_packages


def run_central_kd(workdir: Path, settings: DemoSettings, *, on_progress: Callable[[str], None] | None = None) -> DemoResult:
    started = time.monotonic()
    say = on_progress or (lambda message: None)
    layout, nodes = prepare_nodes(workdir, settings, say, state_name="agent-central")
    for round_ in range(1, settings.rounds + 1):
        for node in nodes:
            for _ in range(settings.epochs_per_round):
                node.agent.local_epoch()
        packages = [node.agent.teacher_package(nodes[0].data.transfer, protocol="text").payload for node in nodes]
        ensemble = ensemble_packages(packages, round_index=round_)
        for node in nodes:
            node.agent.distill(ensemble, node.data.transfer, dev=node.data.dev)
            node.as_student += 1
            node.as_teacher += 1
            node.bytes_received += len(ensemble)
            if round_ < settings.rounds:  # the last round is measured once, as "final"
                measure(node, round_, "after-round")
            node.agent.finish_round()
        say(f"round {round_}/{settings.rounds} done")
    result = DemoResult(settings, workdir, "", {"rounds_closed": settings.rounds, "counters": {}, "bandit_updates": 0})
    finish(result, layout, nodes, audit_note="central baseline: no peer-to-peer exchange, no log")
    result.wall_s = time.monotonic() - started
    result.phases_s = {"central": result.wall_s}
    return result
