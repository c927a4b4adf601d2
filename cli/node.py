"""`knexa-node`: the node's command line (a thin client of the node daemon and its files)."""

from __future__ import annotations

from pathlib import Path

import typer

from knexa_cli.common import HomeOption, JsonOption
from knexa_cli.identity_commands import initialize, show_id
from knexa_cli.node_audit import audit_app
from knexa_cli.node_daemon import LogFormatOption, show_peers, show_status, start_daemon, stop_daemon
from knexa_cli.node_model import eval_command, model_app
from knexa_cli.node_demo import demo
from knexa_cli.node_doctor import doctor
from knexa_cli.node_study import study
from knexa_node.config import render_reference

app = typer.Typer(
    help="knexa node: fine-tune your language model with other organizations, peer to peer, without pooling data or weights.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(audit_app, name="audit")
app.add_typer(model_app, name="model")
app.command("eval")(eval_command)
app.command()(demo)
app.command()(doctor)
app.command()(study)


@app.command()
def init(
    home: Path = HomeOption,
    name: str = typer.Option(None, "--name", help="Human-readable node name."),
    listen: list[str] = typer.Option([], "--listen", help="Listen multiaddr (repeatable). Default /ip4/0.0.0.0/tcp/4001."),
    bootstrap: list[str] = typer.Option([], "--bootstrap", help="Bootstrap peer multiaddr with /p2p/<peer ID> (repeatable)."),
    cpm: str = typer.Option(None, "--cpm", help="Peer ID of the consortium's trusted CPM."),
    consortium: str = typer.Option(None, "--consortium", help="Consortium name."),
    model: str = typer.Option(None, "--model", help="Local Hugging Face model directory or embedded:<name>; without it the node only relays."),
    force: bool = typer.Option(False, "--force", help="Replace an existing identity and config."),
) -> None:
    """Create a node home: Ed25519 identity (mode 0600) and a commented config.toml. Prints the peer ID."""
    initialize(home, name=name, listen=listen, bootstrap=bootstrap, cpm=cpm, consortium=consortium, force=force,
               default_listen="/ip4/0.0.0.0/tcp/4001", role="node", model=model)


@app.command("id")
def id_(home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """Print this node's peer ID (the same every time for the same home)."""
    show_id(home, as_json)


@app.command("config-reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown), generated from the schema."""
    typer.echo(render_reference())


@app.command()
def start(home: Path = HomeOption, log_format: str = LogFormatOption) -> None:
    """Run the node daemon in the foreground (Ctrl-C stops it). Prints a ready line and the join line."""
    start_daemon(home, log_format, role="node", configure="configure_node")


@app.command()
def status(home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """Show the running daemon's status: peer ID, addresses, peers, DHT, gossip meshes, drop counters."""
    show_status(home, as_json)


@app.command()
def peers(home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """List connected peers with their addresses."""
    show_peers(home, as_json)


@app.command()
def stop(home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """Stop the running daemon and wait until it has left."""
    stop_daemon(home, as_json)


def main() -> None:
    app()
