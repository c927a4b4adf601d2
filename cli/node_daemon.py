"""`start`, `status`, `peers`, `stop` (and the CPM's `round open`): the daemon and its thin clients.

``start`` runs the daemon in the foreground; every other command only talks to
the running daemon's control socket (``<home>/control.sock``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import trio
import typer

from knexa_cli.common import fail, print_json, resolve_home
from knexa_cli.identity_commands import load_home
from knexa_node.daemon.control import ControlError, call
from knexa_cli.lazy import load
from knexa_node.daemon.lock import LockError
from knexa_node.daemon.logs import FORMATS, EventLog
from knexa_node.identity import NodeHome
from knexa_node.net.errors import NetError

LogFormatOption = typer.Option("human", "--log-format", help="Event lines: human or json (one JSON object per line).")
STOP_WAIT_S = 10.0


def _configure_logging() -> None:
    # py-libp2p logs every failed dial and DHT read at WARNING/ERROR: that is expected churn,
    # and the daemon reports what matters as events. KNEXA_LIBP2P_LOG=DEBUG shows it.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("libp2p").setLevel(os.environ.get("KNEXA_LIBP2P_LOG", "CRITICAL").upper())


def start_daemon(home_dir: Path | None, log_format: str, *, role: str, configure: str | None = None) -> None:
    """Run the daemon of ``home_dir`` in the foreground until stopped.

    ``configure`` names a function of :mod:`knexa_cli.services` that installs the
    role's services (learning, exchanges, matchmaking) before the daemon runs.
    """
    if log_format not in FORMATS:
        fail(f"--log-format must be one of {', '.join(FORMATS)}")
    home, config, signer = load_home(home_dir)
    _configure_logging()
    host_errors = (NetError, load("knexa_node.net.host").HostError)
    daemon = load("knexa_node.daemon.daemon").Daemon(home, config, signer, role=role, log=EventLog(log_format))
    if configure is not None:
        getattr(load("knexa_cli.services"), configure)(daemon)
    try:
        trio.run(daemon.run)
    except LockError as exc:
        fail(str(exc))
    except host_errors as exc:
        fail(f"network: {exc}", code=1)
    except OSError as exc:
        fail(f"{exc.strerror or exc} ({exc.filename or ''})", code=1)


def _call(home: NodeHome, cmd: str, args: dict[str, Any] | None = None) -> Any:
    try:
        return call(home.control_socket, cmd, args)
    except ControlError as exc:
        fail(str(exc), code=1)


def show_status(home_dir: Path | None, as_json: bool) -> None:
    status = _call(resolve_home(home_dir), "status")
    if as_json:
        print_json(status)
        return
    typer.echo(f"{status['role']} {status['name']} ({status['peer_id']}), consortium {status['consortium']}, up {status['uptime_s']:.0f} s")
    typer.echo("listening: " + ", ".join(status["listen_addrs"]))
    typer.echo(f"peers: {len(status['connected_peers'])}, DHT routing table: {status['dht_routing_table_size']}")
    for name, topic in status["topics"].items():
        typer.echo(f"topic {name}: mesh {topic['mesh']}, peers {topic['peers']}")
    dropped = status["counters"]["dropped"]
    typer.echo("dropped messages: " + (", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "none"))
    last = status.get("last_round")
    typer.echo(f"last round: {last['round']} from {last['cpm']}" if last else "last round: none seen")
    for line in _role_lines(status):
        typer.echo(line)


def _role_lines(status: dict[str, Any]) -> list[str]:
    """The learner, exchanges and matchmaker sections of a status, one line each."""
    lines = []
    learner = status.get("learner")
    if learner:
        metrics = learner.get("last_metrics") or {}
        pass1 = f", Pass@1 {100 * metrics['pass1']:.1f}%" if "pass1" in metrics else ""
        lines.append(f"learner: round {learner['round']}, {learner['phase']} for {learner['round_running_s']:.0f} s, "
                     f"doing {(learner.get('learner') or {}).get('busy', '-')}{pass1}")
    exchanges = status.get("exchanges")
    if exchanges:
        lines.append(f"exchanges: {exchanges.get('counts')}, {exchanges.get('bytes_sent', 0):,} bytes sent, "
                     f"{exchanges.get('bytes_received', 0):,} received, epsilon spent {exchanges.get('epsilon_spent', 0.0):.2f}, "
                     f"audit entries {(exchanges.get('audit') or {}).get('entries', 0)}")
    cpm = status.get("cpm")
    if cpm:
        current = cpm.get("round") or {}
        lines.append(f"matchmaker: policy {cpm['policy']}, round {current.get('round', cpm.get('last_round'))} "
                     f"({current.get('phase', '-')}: {current.get('profiles', 0)} profiles, {current.get('proposals', 0)} pairs, "
                     f"{current.get('feedback', 0)} rewards), members {len(cpm.get('members') or []) or 'open'}, "
                     f"bandit updates {cpm.get('bandit_updates', 0)}, counters {cpm.get('counters')}")
        trust = cpm.get("trust") or {}
        if trust.get("bottom"):
            lines.append("lowest trust: " + ", ".join(f"{agent[-8:]} {score}" for agent, score in trust["bottom"]))
    return lines


def show_peers(home_dir: Path | None, as_json: bool) -> None:
    peers = _call(resolve_home(home_dir), "peers")
    if as_json:
        print_json(peers)
        return
    if not peers:
        typer.echo("no connected peers")
    for peer in peers:
        typer.echo(f"{peer['peer_id']}  {' '.join(peer['addrs'])}")


def stop_daemon(home_dir: Path | None, as_json: bool) -> None:
    home = resolve_home(home_dir)
    result = _call(home, "stop")
    deadline = time.monotonic() + STOP_WAIT_S
    while home.control_socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = not home.control_socket.exists()
    if as_json:
        print_json({"stopped": stopped, "pid": result.get("pid")})
    elif stopped:
        typer.echo(f"stopped daemon (pid {result.get('pid')})")
    if not stopped:
        fail(f"the daemon (pid {result.get('pid')}) did not stop within {STOP_WAIT_S:g} s", code=1)


def open_round(home_dir: Path | None, round_: int, deadline_s: float | None, as_json: bool) -> None:
    args: dict[str, Any] = {"round": round_}
    if deadline_s is not None:
        args["deadline_s"] = deadline_s
    result = _call(resolve_home(home_dir), "round-open", args)
    if as_json:
        print_json(result)
    else:
        typer.echo(f"announced round {result['round']} on {result['topic']} (mesh {result['mesh'].get('mesh', 0)})")
