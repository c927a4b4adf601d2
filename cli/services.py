"""What `start` installs into the bare daemon, with start-up errors turned into one-line exits."""

from __future__ import annotations

from knexa_cli.common import fail
from knexa_cpm import service as cpm_service
from knexa_cpm.state import StateError
from knexa_node.audit import AuditError
from knexa_node.daemon.daemon import Daemon
from knexa_node.daemon.node_services import install_node
from knexa_node.exchange.replay import ReplayCacheError
from knexa_node.learn.data import DataError
from knexa_node.models import ModelPathError
from knexa_node.privacy.budget import BudgetError


def configure_node(daemon: Daemon) -> None:
    try:
        install_node(daemon)
    except (DataError, ModelPathError, AuditError, ReplayCacheError, BudgetError, ValueError, OSError) as exc:
        fail(f"cannot start node: {exc}", code=1)


def configure_cpm(daemon: Daemon) -> None:
    try:
        cpm_service.install(daemon)
    except (StateError, ValueError, OSError) as exc:
        fail(f"cannot start CPM: {exc}", code=1)
