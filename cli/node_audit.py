"""`knexa-node audit`: verify, show, export and cross-check signed exchange logs; repair a torn tail.

Read commands work on a log file or on a node home (``--home``), without
the daemon: logs are files that auditors receive. Exit status: 0 intact /
in agreement, 1 a problem found in a log, 2 a usage or I/O error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import typer
from rich.console import Console

from knexa_cli.audit_layout import entry_row, print_entries
from knexa_cli.common import HomeOption, JsonOption, fail, print_json, resolve_home
from knexa_node.audit import (
    AuditError,
    AuditLog,
    CheckpointStore,
    LogView,
    checkpoint_path,
    cross_check,
    log_path,
    make_checkpoint,
    receipt_heads,
    verify_file,
)
from knexa_node.identity import IdentityError, load_identity
from knexa_node.wire import Checkpoint, Envelope

EXIT_PROBLEM = 1

audit_app = typer.Typer(help="Verify, show, export and cross-check the signed exchange log.", no_args_is_help=True)

FileArgument = typer.Argument(None, help="A log file (default: the log in the node home).", show_default=False)
CheckpointsOption = typer.Option([], "--checkpoints", help="Checkpoint store file seen by other nodes (repeatable).")
CounterpartOption = typer.Option([], "--counterpart-log", help="Another node's log: the log heads this node signed "
                                 "into its receipts there are checked too (repeatable).")


def _log_file(file: Path | None, home: Path | None) -> Path:
    if file is not None and home is not None:
        fail("give either a log FILE or --home, not both")
    if file is not None:
        return file.expanduser()
    return log_path(resolve_home(home))


def _load_checkpoints(paths: list[Path]) -> list[tuple[Envelope, Checkpoint]]:
    found: list[tuple[Envelope, Checkpoint]] = []
    for path in paths:
        try:
            found += list(CheckpointStore.load(path.expanduser()))
        except AuditError as exc:
            fail(str(exc))
    return found


def _receipt_heads(paths: list[Path]) -> list[tuple[Envelope, Checkpoint]]:
    found: list[tuple[Envelope, Checkpoint]] = []
    for path in paths:
        found += [(envelope, head) for _, envelope, head in receipt_heads(_read(path.expanduser()).entries)]
    return found


def _read(path: Path, checkpoints: Sequence[tuple[Envelope, Checkpoint]] = ()) -> LogView:
    try:
        return verify_file(path, checkpoints=checkpoints)
    except AuditError as exc:
        fail(str(exc))


@audit_app.command()
def verify(file: Path = FileArgument, home: Path = HomeOption, checkpoints: list[Path] = CheckpointsOption,
           counterparts: list[Path] = CounterpartOption, as_json: bool = JsonOption) -> None:
    """Check the hash chain, every signature and receipt, sequence, time, and the checkpoints given.

    Checkpoints come from checkpoint stores (--checkpoints) and from the log heads this node signed into
    receipts that counterparts keep in their logs (--counterpart-log).
    """
    path = _log_file(file, home)
    report = _read(path, _load_checkpoints(checkpoints) + _receipt_heads(counterparts)).report
    if as_json:
        print_json({"file": str(path), **report.to_json()})
    elif report.ok:
        typer.echo(f"{path}: intact: {report.entries} entries by {report.owner}, "
                   f"{report.checkpoints_checked} checkpoints agree")
    else:
        typer.echo(f"{path}: NOT intact: {report.problem} ({report.entries} entries verified before it)")
    if not report.ok:
        raise typer.Exit(EXIT_PROBLEM)


@audit_app.command()
def show(file: Path = FileArgument, home: Path = HomeOption,
         round_: int = typer.Option(None, "--round", help="Only entries of this round."),
         peer: str = typer.Option(None, "--peer", help="Only entries with this counterpart peer ID."),
         as_json: bool = JsonOption) -> None:
    """The log as a table, or one record per entry where the terminal is narrow (a problem is named below)."""
    path = _log_file(file, home)
    view = _read(path)
    entries = [e for e in view.entries
               if (round_ is None or e.event.round == round_) and (peer is None or e.event.peer == peer)]
    if as_json:
        print_json({"file": str(path), "verify": view.report.to_json(), "entries": [e.to_json() for e in entries]})
    else:
        print_entries(Console(), f"{path}\nowner {view.report.owner}", [entry_row(e) for e in entries])
        if not view.report.ok:
            typer.echo(f"NOT intact: {view.report.problem}")
    if not view.report.ok:
        raise typer.Exit(EXIT_PROBLEM)


@audit_app.command()
def export(file: Path = FileArgument, home: Path = HomeOption,
           as_json: bool = typer.Option(True, "--json", help="JSON (the only format).")) -> None:
    """Every verified entry as one JSON document, with the verification report."""
    path = _log_file(file, home)
    view = _read(path)
    print_json({"file": str(path), "owner": view.report.owner,
                "created": view.header.created if view.header else None,
                "verify": view.report.to_json(), "entries": [e.to_json() for e in view.entries]})
    if not view.report.ok:
        raise typer.Exit(EXIT_PROBLEM)


@audit_app.command("cross-check")
def cross_check_command(log_a: Path = typer.Argument(..., help="One organization's log file."),
                        log_b: Path = typer.Argument(..., help="The other organization's log file."),
                        as_json: bool = JsonOption) -> None:
    """Check that two organizations' logs agree on their common exchanges; list every mismatch."""
    view_a, view_b = _read(log_a.expanduser()), _read(log_b.expanduser())
    if view_a.header is None or view_b.header is None:
        bad = log_a if view_a.header is None else log_b
        fail(f"{bad}: not a readable audit log: {(view_a if view_a.header is None else view_b).report.problem}")
    result = cross_check(view_a, view_b)
    problems = {name: v.report.to_json() for name, v in (("a", view_a), ("b", view_b)) if not v.report.ok}
    if as_json:
        print_json({**result.to_json(), "ok": result.ok and not problems, "verify_problems": problems})
    else:
        for name, problem in problems.items():
            typer.echo(f"log {name} is NOT intact (only its verified prefix was compared): {problem['problem']}")
        typer.echo(f"{result.common} common exchanges between a={result.a_owner} and b={result.b_owner}; "
                   f"{len(result.mismatches)} mismatches")
        for m in result.mismatches:
            typer.echo(f"  proposal {m.proposal_id.hex()} [{m.kind}] {m.detail}"
                       f" (a seq {m.a_seq}, b seq {m.b_seq}; a={m.to_json()['a_value']}, b={m.to_json()['b_value']})")
    if not result.ok or problems:
        raise typer.Exit(EXIT_PROBLEM)


@audit_app.command()
def repair(home: Path = HomeOption) -> None:
    """Keep a torn last record (left by a crash) aside in a side file, and continue the log after it."""
    node_home = resolve_home(home)
    try:
        signer = load_identity(node_home)
        with AuditLog.open_home(node_home, signer, create=False, repair=True) as log:
            typer.echo(f"{log.path}: {log.count} entries, head seq {log.head_seq}; ready for appends")
    except (IdentityError, AuditError) as exc:
        fail(str(exc))


@audit_app.command()
def checkpoint(home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """Sign a checkpoint of the log's head and add it to the node's checkpoint store (the daemon does this itself)."""
    node_home = resolve_home(home)
    try:
        signer = load_identity(node_home)
        with AuditLog.open_home(node_home, signer, create=False) as log, \
                CheckpointStore.open(checkpoint_path(node_home)) as store:
            envelope = make_checkpoint(log, signer)
            store.add(envelope.to_bytes())
    except (IdentityError, AuditError) as exc:
        fail(str(exc))
    summary = {"seq": log.head_seq, "head_hash": log.head_hash.hex(), "round": log.head_round,
               "store": str(store.path), "envelope": envelope.to_bytes().hex()}
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"checkpoint of seq {summary['seq']} head {summary['head_hash']} added to {summary['store']}")
