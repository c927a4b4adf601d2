"""`knexa-node doctor`: one line per check (ok / warn / fail) with advice; exit 1 when any check fails."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from knexa_cli.common import HomeOption, JsonOption, print_json, resolve_home
from knexa_cli.lazy import load
from knexa_node.doctor.checks import Check, local_checks, worst
from knexa_node.identity import IdentityError, load_identity

EXIT_FAILED = 1
_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def doctor(home: Path = HomeOption, as_json: bool = JsonOption,
           offline: bool = typer.Option(False, "--offline", help="Skip the network checks (bootstrap peers, CPM, clock).")) -> None:
    """Check a node home before or while it runs: config, file modes, addresses, disk, model, sandbox, peers, CPM, clock.

    While the daemon runs, the network checks ask it; otherwise a short-lived host
    under the node's identity dials the bootstrap peers and asks the CPM.
    Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed.
    """
    node_home = resolve_home(home)
    checks, config = local_checks(node_home)
    if config is not None and not offline:
        try:
            signer = load_identity(node_home)
        except IdentityError:
            signer = None  # already a failed "files" check
        logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # failed dials are verdicts here, not log noise
        checks += load("knexa_node.doctor.probe").network_checks(node_home, config, signer)
    verdict = worst(checks)
    if as_json:
        print_json({"home": str(node_home.root), "verdict": verdict, "checks": [c.to_json() for c in checks]})
    else:
        for check in checks:
            _print(check)
        typer.echo(f"verdict: {verdict}")
    if verdict == "fail":
        raise typer.Exit(EXIT_FAILED)


def _print(check: Check) -> None:
    typer.echo(f"{_MARK[check.level]}  {check.name:<10} {check.message}")
    if check.advice and check.level != "ok":
        typer.echo(f"{'':16}-> {check.advice}")
