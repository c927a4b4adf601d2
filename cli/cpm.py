"""`knexa-cpm`: the matchmaker's command line."""

from __future__ import annotations

from pathlib import Path

import typer

from knexa_cli.common import HomeOption, JsonOption
from knexa_cli.identity_commands import initialize, show_id

app = typer.Typer(
    help="knexa CPM: the consortium's matchmaker. Learns who should teach whom; never sees models, data or packages.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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


def main() -> None:
    app()
