"""What a role sees of the daemon it installs into: :class:`RoleHost`.

The daemon (:class:`~knexa_node.daemon.daemon.Daemon`) is role-neutral: lock,
network, control socket, logs, metrics, round announcements. A role (the
node's learning: ``node_services.install_node``; the matchmaker:
``knexa_cpm.service.install``) installs its services, commands and status
sections through these hooks, and moves the daemon's current round
(``rounds.enter``). Tests give a role a fake host with the same shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from knexa_node.config import Config
from knexa_node.crypto import Signer
from knexa_node.daemon.control import CommandHandler
from knexa_node.daemon.logs import EventLog
from knexa_node.daemon.rounds import RoundTracker
from knexa_node.identity import NodeHome
from knexa_node.net.network import Network


class RoleHost(Protocol):
    home: NodeHome
    config: Config
    signer: Signer
    net: Network
    log: EventLog
    rounds: RoundTracker

    def add_service(self, service: Callable[..., Awaitable[None]], *, name: str | None = None) -> None:
        """Run ``async def service(*, task_status)`` in the daemon's nursery."""

    def add_command(self, name: str, handler: CommandHandler) -> None:
        """Serve ``name`` on the control socket."""

    def add_status(self, name: str, provider: Callable[[], Any]) -> None:
        """Add ``status[name] = provider()``."""
