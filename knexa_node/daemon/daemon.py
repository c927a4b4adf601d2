"""The role-neutral daemon: one nursery, one task per concern, and the hooks a role plugs into.

A role (the node's learning, the CPM's matchmaking) sees this class as a
:class:`~knexa_node.daemon.role.RoleHost`:

    daemon = Daemon(home, config, signer, role="node", log=EventLog("json"))
    daemon.add_service(my_service)                 # async def my_service(task_status=...)
    daemon.add_command("profile", handle_profile)  # async def handle_profile(args) -> JSON-able
    daemon.add_status("learner", learner_status)   # def learner_status() -> JSON-able
    daemon.rounds.enter(3)                         # the one owner of the current round (rounds.py)
    daemon.net.set_handler(EXCHANGE_PROTOCOL, ...) # the Network API (knexa_node.net.network)
    await daemon.run()                             # until SIGINT/SIGTERM or `stop`

``run`` takes the home's lock, starts the network (listeners, DHT, gossip,
discovery), the control socket and the registered services in that order,
then prints the ready line. The first SIGINT/SIGTERM (or ``stop``) cancels
everything and the daemon leaves within 5 s; a second signal, or a shutdown
that overruns 5 s, exits at once.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from knexa_node.config import Config
from knexa_node.crypto import Signer
from knexa_node.dashboard.server import DashboardServer
from knexa_node.dashboard.views import DashboardData
from knexa_node.daemon.control import CommandHandler, ControlServer
from knexa_node.daemon.lock import DaemonLock
from knexa_node.daemon.logs import EventLog
from knexa_node.daemon.metrics import MetricsServer
from knexa_node.daemon.rounds import RoundTracker
from knexa_node.daemon.sdnotify import SystemdNotifier
from knexa_node.identity import NodeHome
from knexa_node.net.network import Network
from knexa_node.net.params import NetParams

Service = Callable[..., Awaitable[None]]
"""``async def serve(*, task_status=trio.TASK_STATUS_IGNORED)``: call ``task_status.started()`` when ready."""
STOP_GRACE_S = 5.0


class Daemon:
    def __init__(self, home: NodeHome, config: Config, signer: Signer, *, role: str = "node",
                 log: EventLog | None = None, params: NetParams | None = None) -> None:
        self.home, self.config, self.signer, self.role = home, config, signer, role
        self.log = log or EventLog()
        self.net = Network(signer, params or NetParams.from_config(config), on_event=self.log.event)
        self.rounds = RoundTracker(self.net, config.consortium.name, config.consortium.cpm, self.log.event)
        self._services: list[tuple[str, Service]] = []
        self._status: dict[str, Callable[[], Any]] = {}
        self.commands: dict[str, CommandHandler] = {
            "status": self._cmd_status,
            "peers": self._cmd_peers,
            "stop": self._cmd_stop,
        }
        self._cancel: trio.CancelScope | None = None
        self._stop_requested = trio.Event()
        self.metrics: MetricsServer | None = None
        self.systemd = SystemdNotifier.from_environ()
        if config.metrics.enabled:
            self.add_service(self._serve_metrics, name="metrics")
        self.dashboard: DashboardServer | None = None
        if config.dashboard.enabled:
            self.add_service(self._serve_dashboard, name="dashboard")

    # --- extension points ------------------------------------------------------------------------

    def add_service(self, service: Service, *, name: str | None = None) -> None:
        """Run ``service`` in the daemon's nursery (started after the network, before ready)."""
        self._services.append((name or getattr(service, "__name__", "service"), service))

    def add_command(self, name: str, handler: CommandHandler) -> None:
        """Serve ``name`` on the control socket: ``await handler(args) -> JSON-able``."""
        if name in self.commands:
            raise ValueError(f"control command {name!r} is already registered")
        self.commands[name] = handler

    def add_status(self, name: str, provider: Callable[[], Any]) -> None:
        """Add ``status[name] = provider()`` (JSON-able) to ``knexa-node status``."""
        self._status[name] = provider

    def stop(self) -> None:
        self._stop_requested.set()

    # --- commands --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        out = {"role": self.role, "name": self.config.node.name, "consortium": self.config.consortium.name,
               "pid": os.getpid(), **self.net.status(), "last_round": self.rounds.status(),
               "dashboard": self.dashboard.url if self.dashboard else None}
        for name, provider in self._status.items():
            try:
                out[name] = provider()
            except Exception as exc:  # one broken provider must not hide the rest of the status
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return out

    async def _cmd_status(self, args: dict[str, Any]) -> Any:
        return self.status()

    async def _cmd_peers(self, args: dict[str, Any]) -> Any:
        return self.net.connected_peers()

    async def _cmd_stop(self, args: dict[str, Any]) -> Any:
        self.log.event("stop-requested", via="control")
        self.stop()
        return {"stopping": True, "pid": os.getpid()}

    # --- metrics ---------------------------------------------------------------------------------

    async def _serve_metrics(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Built here, not in __init__, so a bad address or a missing prometheus-client
        # surfaces from run() as a NetError that the CLI reports.
        self.metrics = MetricsServer(self.config.metrics.address, self.net.stats,
                                     peers=lambda: len(self.net.host.get_connected_peers()),
                                     round_=lambda: self.rounds.current, on_event=self.log.event)
        await self.metrics.serve(task_status=task_status)

    async def _serve_dashboard(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        section = self.config.dashboard
        data = DashboardData(self.role, self.home, self.status)
        self.dashboard = DashboardServer(section.address, data.snapshot, allow_remote=section.allow_remote,
                                         token=section.token, on_event=self.log.event)
        await self.dashboard.serve(task_status=task_status)

    # --- main loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        with DaemonLock(self.home.lock_file):
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as outer:
                    self._cancel = trio.CancelScope()
                    outer.start_soon(self._watch_signals, signals)
                    started = time.monotonic()
                    with self._cancel:
                        await self._run_services()
                    self.log.event("stopped", after_s=round(time.monotonic() - started, 3))
                    outer.cancel_scope.cancel()

    async def _run_services(self) -> None:
        self.log.event("starting", role=self.role, peer_id=self.signer.peer_id, listen=list(self.net.params.listen))
        async with trio.open_nursery() as nursery:
            await nursery.start(self.net.serve)
            self.log.event("listening", addrs=self.net.listen_addrs())
            self._warn_unreachable_announce()
            await nursery.start(ControlServer(self.home.control_socket, self.commands).serve)
            for name, service in self._services:
                await nursery.start(service)
                self.log.event("service-started", service=name)
            self.log.ready(self.signer.peer_id, self.net.dialable_addrs(), role=self.role,
                           control=str(self.home.control_socket))
            self.systemd.ready(f"{self.role} {self.signer.peer_id} listening on {', '.join(self.net.listen_addrs())}")
            await self._stop_requested.wait()
            self.systemd.stopping()
            if self._cancel is None:  # run() sets it before starting the services
                raise RuntimeError("Daemon._run_services runs only inside Daemon.run")
            self._cancel.deadline = trio.current_time() + STOP_GRACE_S
            # Let the control client read the answer to `stop` before everything is cancelled.
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    async def _watch_signals(self, signals: Any) -> None:
        async for signum in signals:
            self.log.event("stopping", signal=signal.Signals(signum).name)
            self.stop()
            break
        reason = f"shutdown took more than {STOP_GRACE_S:g} s"
        with trio.move_on_after(STOP_GRACE_S + 0.5):
            async for signum in signals:
                reason = f"second {signal.Signals(signum).name}"
                break
        # Reached only if the graceful stop did not finish first (it cancels this task).
        self.log.event("forced-stop", reason=reason)
        os._exit(1)

    def _warn_unreachable_announce(self) -> None:
        problem = unreachable_announce(self.net.dialable_addrs(), self.net.params.bootstrap)
        if problem is not None:
            self.log.event("warning", problem=problem, announce=self.net.dialable_addrs())


def unreachable_announce(announced: Sequence[str], bootstrap: Sequence[str]) -> str | None:
    """The startup warning when every announced address is loopback while a bootstrap peer is not (else None).

    Depends on addresses only: such a node can dial out, but the remote peers
    that learn its addresses (identify, DHT) cannot dial back.
    """
    if bootstrap and announced and all(_is_loopback(a) for a in announced) and not all(_is_loopback(b) for b in bootstrap):
        return ("this node announces only loopback addresses but its bootstrap peers are remote; "
                "they cannot dial back. Set node.announce to a reachable address.")
    return None


def _is_loopback(addr: str) -> bool:
    parts = addr.split("/")
    if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
        try:
            return ipaddress.ip_address(parts[2]).is_loopback
        except ValueError:
            return False
    return parts[1:2] == ["dns4"] and parts[2:3] == ["localhost"]
