"""How `knexa-node audit show` lays out entries for the width it has.

A table of twelve columns needs ~150 columns; squeezed into 80 (a small
terminal, or a pipe, which rich treats as 80 wide) rich folded every header
and value into fragments (``roun d``). So the layout is chosen from the
width: all columns where they fit, the essential ones in a medium terminal,
and one record per entry (``key: value`` lines) below that. ``--json``
always carries every field.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

# (header, key): the order of the wide table and of the record layout.
FIELDS: tuple[tuple[str, str], ...] = (
    ("seq", "seq"), ("time (UTC)", "time"), ("round", "round"), ("kind", "kind"), ("outcome", "outcome"),
    ("peer", "peer"), ("proposal", "proposal"), ("protocol", "protocol"), ("package", "package"),
    ("bytes", "bytes"), ("receipt", "receipt"), ("metrics", "metrics"),
)
# What an operator scans for first; shown when the whole table does not fit.
ESSENTIAL = ("seq", "time", "round", "kind", "outcome", "peer", "bytes")
_HEADERS = {key: header for header, key in FIELDS}


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _metrics_text(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def entry_row(entry: Any) -> dict[str, str]:
    """One verified log entry as display strings, keyed as in :data:`FIELDS`."""
    ev = entry.event
    return {
        "seq": str(entry.seq), "time": _when(entry.time), "round": str(ev.round), "kind": ev.kind,
        "outcome": ev.outcome, "peer": ev.peer[-8:] if ev.peer else "", "proposal": ev.proposal_id.hex()[:8],
        "protocol": ev.protocol, "package": ev.package_hash.hex()[:12],
        "bytes": str(ev.package_size) if ev.package_size else "", "receipt": "signed" if ev.receipt else "",
        "metrics": _metrics_text(dict(ev.metrics)),
    }


def _table_width(keys: Sequence[str], rows: Sequence[dict[str, str]]) -> int:
    """Columns the table of ``keys`` needs: each column's widest cell, two spaces between columns, one spare."""
    return sum(max([len(_HEADERS[k]), *(len(row[k]) for row in rows)]) for k in keys) + 2 * (len(keys) - 1) + 1


def choose_layout(width: int, rows: Sequence[dict[str, str]]) -> tuple[str, list[str]]:
    """``(layout, columns)``: every column if they fit ``width``, the essential ones if those do, else records."""
    every = [key for _, key in FIELDS]
    if _table_width(every, rows) <= width:
        return "wide", every
    if _table_width(ESSENTIAL, rows) <= width:
        return "medium", list(ESSENTIAL)
    return "records", every


def print_entries(console: Console, title: str, rows: Sequence[dict[str, str]]) -> str:
    """Print ``rows`` in the layout that fits ``console.width``; returns the layout used."""
    layout, keys = choose_layout(console.width, rows)
    console.print(title, overflow="fold", highlight=False)
    if layout == "records":
        for row in rows:
            console.print("")
            for key in keys:
                if row[key]:
                    console.print(f"{_HEADERS[key]:>10}: {row[key]}", soft_wrap=True, highlight=False)
        return layout
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0))
    for key in keys:
        table.add_column(_HEADERS[key], no_wrap=True)
    for row in rows:
        table.add_row(*(row[key] for key in keys))
    console.print(table)
    if layout == "medium":
        console.print("(proposal, protocol, package, receipt and metrics: --json, or a wider terminal)",
                      soft_wrap=True, highlight=False)
    return layout
