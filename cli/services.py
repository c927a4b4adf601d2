"""What `start` installs into the bare daemon, with start-up errors turned into one-line exits.

A node without a model only relays (bootstrap, DHT, gossip): the learning role, and
with it torch and transformers, is never imported for it (cli.lazy), so a relay
is ready in about the time libp2p takes to import. The CPM's role is loaded the
same way, only by ``knexa-cpm start``.
"""

from __future__ import annotations

from knexa_cli.common import fail
from knexa_cli.lazy import load
from knexa_cpm.state import StateError
from knexa_node.audit import AuditError
from knexa_node.daemon.daemon import Daemon
from knexa_node.exchange.replay import ReplayCacheError
from knexa_node.learn.data import DataError
from knexa_node.models import ModelPathError
from knexa_node.privacy.budget import BudgetError

LEARNING_ROLE = "knexa_node.daemon.node_services"  # imports torch, transformers and peft
CPM_ROLE = "knexa_cpm.service"


def configure_node(daemon: Daemon) -> None:
    if not daemon.config.model.path:
        daemon.log.event("relay-only", reason="model.path is empty: this node bootstraps and relays but does not learn")
        return
    try:
        load(LEARNING_ROLE).install_node(daemon)
    except (DataError, ModelPathError, AuditError, ReplayCacheError, BudgetError, ValueError, OSError) as exc:
        fail(f"cannot start node: {exc}", code=1)


def configure_cpm(daemon: Daemon) -> None:
    try:
        load(CPM_ROLE).install(daemon)
    except (StateError, ValueError, OSError) as exc:
        fail(f"cannot start CPM: {exc}", code=1)
