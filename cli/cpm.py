"""`knexa-cpm`: the matchmaker's command line."""

from __future__ import annotations

from pathlib import Path

import typer

from knexa_cli.common import HomeOption, JsonOption
from knexa_cli.cpm_simulate import simulate
from knexa_cli.identity_commands import initialize, show_id
from knexa_cli.node_daemon import LogFormatOption, open_round, show_status, start_daemon, stop_daemon

app = typer.Typer(
    help="knexa CPM: the consortium's matchmaker. Learns who should teach whom; never sees models, data or packages.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(simulate)


@app.command()
def init(
    home: Path = HomeOption,
    name: str = typer.Option(None, "--name", help="Human-readable name."),
    listen: list[str] = typer.Option([], "--listen", help="Listen multiaddr (repeatable). Default /ip4/0.0.0.0/tcp/4000."),
    bootstrap: list[str] = typer.Option([], "--bootstrap", help="Bootstrap peer multiaddr (repeatable)."),
    consortium: str = typer.Option(None, "--consortium", help="Consortium name."),
    force: bool = typer.Option(False, "--force", help="Replace an existing identity and config."),
) -> None:
    """Create a CPM home: Ed25519 identity and config.toml. Prints the peer ID that nodes put in --cpm."""
    initialize(home, name=name or "knexa-cpm", listen=listen, bootstrap=bootstrap, cpm=None, consortium=consortium,
               force=force, default_listen="/ip4/0.0.0.0/tcp/4000", role="CPM")


@app.command("id")
def id_(home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """Print the CPM's peer ID."""
    show_id(home, as_json)


@app.command()
def start(home: Path = HomeOption, log_format: str = LogFormatOption) -> None:
    """Run the CPM daemon in the foreground (same host code as a node; Ctrl-C stops it)."""
    start_daemon(home, log_format, role="cpm", configure="configure_cpm")


@app.command()
def status(home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """Show the running CPM daemon's status."""
    show_status(home, as_json)


@app.command()
def stop(home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """Stop the running CPM daemon."""
    stop_daemon(home, as_json)


round_app = typer.Typer(help="Rounds of the consortium.", no_args_is_help=True)
app.add_typer(round_app, name="round")


@round_app.command("open")
def round_open(
    home: Path = HomeOption,
    round_: int = typer.Option(..., "--round", help="Round number to announce."),
    deadline_s: float = typer.Option(None, "--deadline-s", help="Seconds nodes have to send profiles (default: cpm.round_deadline_s)."),
    as_json: bool = JsonOption,
) -> None:
    """Publish a signed RoundOpen on the consortium's rounds topic (gossip)."""
    open_round(home, round_, deadline_s, as_json)


def main() -> None:
    app()
