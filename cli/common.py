"""Helpers shared by the command lines: error exits, JSON output, home resolution."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from knexa_node.identity import NodeHome, default_home

EXIT_USAGE = 2

HomeOption = typer.Option(None, "--home", help="Node home directory (default: $KNEXA_HOME or ~/.knexa).", show_default=False)
JsonOption = typer.Option(False, "--json", help="Print one JSON document for scripts.")


def resolve_home(home: Path | None) -> NodeHome:
    return NodeHome((home or default_home()).expanduser().resolve())


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print a one-line error (no traceback) and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
