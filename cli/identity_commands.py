"""`init` and `id`, shared by knexa-node and knexa-cpm (a CPM is a node with another role)."""

from __future__ import annotations

from pathlib import Path

import typer

from knexa_cli.common import fail, print_json, resolve_home
from knexa_node.config import Config, ConfigError, load_config, parse_config, render_config
from knexa_node.crypto import Signer
from knexa_node.fsutil import atomic_write_text
from knexa_node.identity import IdentityError, NodeHome, create_identity, load_identity


def initialize(
    home_dir: Path | None,
    *,
    name: str | None,
    listen: list[str],
    bootstrap: list[str],
    cpm: str | None,
    consortium: str | None,
    force: bool,
    default_listen: str,
    role: str,
    model: str | None = None,
) -> None:
    home = resolve_home(home_dir)
    config = Config()
    config.node.listen = list(listen) or [default_listen]
    config.node.bootstrap = list(bootstrap)
    if name:
        config.node.name = name
    if cpm:
        config.consortium.cpm = cpm
    if consortium:
        config.consortium.name = consortium
    if model:
        config.model.path = model
    # Validate through the same path as loading, so flags get the same clear errors.
    text = render_config(config)
    try:
        parse_config(text, "command-line flags")
    except ConfigError as exc:
        flag = {"node.listen": "--listen", "node.bootstrap": "--bootstrap", "consortium.cpm": "--cpm",
                "consortium.name": "--consortium", "node.name": "--name"}.get((exc.key or "").split("[")[0], exc.key)
        fail(f"{flag}: {exc.problem}")
    if home.config_file.exists() and not force:
        fail(f"{home.config_file} already exists (use --force to overwrite config and identity)")
    try:
        signer = create_identity(home, force=force)
    except IdentityError as exc:
        fail(str(exc))
    atomic_write_text(home.config_file, text, mode=0o600)
    typer.echo(f"initialized {role} home {home.root}")
    typer.echo(signer.peer_id)


def load_home(home_dir: Path | None) -> tuple[NodeHome, Config, Signer]:
    """The home's paths, config and identity; a problem exits with its one-line error."""
    home = resolve_home(home_dir)
    try:
        signer = load_identity(home)
        config = load_config(home.config_file)
    except (IdentityError, ConfigError) as exc:
        fail(str(exc))
    return home, config, signer


def show_id(home_dir: Path | None, as_json: bool) -> None:
    _, config, signer = load_home(home_dir)
    peer_id = signer.peer_id
    addrs = [f"{addr}/p2p/{peer_id}" for addr in (config.node.announce or config.node.listen)]
    if as_json:
        print_json({"peer_id": peer_id, "addrs": addrs, "name": config.node.name, "consortium": config.consortium.name})
    else:
        typer.echo(peer_id)
