"""The node's learning role, installed into the role-neutral daemon: the learner, the exchanges and the rounds.

A relay never imports this module (``knexa_cli.services``); a learning node imports it
without torch, which its model load brings in after the ready line (``learner.learning_engine``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from knexa_node.daemon.datasets import load_node_data
from knexa_node.daemon.exchanges import ExchangeService
from knexa_node.daemon.learner import Learner, learning_engine
from knexa_node.daemon.participant import Participant
from knexa_node.daemon.role import RoleHost
from knexa_node.learn.memory import check_model_memory
from knexa_node.models import EMBEDDED_PREFIX

if TYPE_CHECKING:
    from knexa_node.learn.agent import Agent

T = TypeVar("T")


def install_node(daemon: RoleHost) -> Participant:
    """Wire learning, exchange and round participation into a node daemon (data errors raise here, before start).

    A node without a model (``model.path = ""``) only relays and installs nothing of this role.
    """
    if not daemon.config.model.path:
        raise ValueError("model.path is empty: a relay has no learning role to install")
    model = daemon.config.model
    if model.max_memory_gb > 0 and not model.path.startswith(EMBEDDED_PREFIX):
        # Refuse before start a model that cannot fit (MemoryGuardError names the sizes). Resolving a
        # pretrained model may convert it, so only this guard loads the learning engine before start.
        check_model_memory(learning_engine("embedded").resolve_model_path(model.path), model.max_memory_gb,
                           train_mode=learning_engine().default_train_mode(model.path))
    data = load_node_data(daemon.config, base=daemon.home.root)
    learner = Learner(daemon.config, daemon.home.state_dir, data, on_event=daemon.log.event)
    private_texts = [p.prompt + p.solution for p in (*data.train, *data.validation)]

    async def build_call(fn: Callable[[Agent], T]) -> T:
        return await learner.call(fn, doing="building package")

    # The teacher checks a proposal's round against the daemon's current round (its one owner: daemon.rounds).
    exchanges = ExchangeService(daemon, build_call, data.transfer, private_texts,
                                current_round=lambda: daemon.rounds.current)
    participant = Participant(daemon, learner, exchanges)
    exchanges.add_teacher_listener(participant.on_taught)
    exchanges.install()
    participant.install()
    return participant
