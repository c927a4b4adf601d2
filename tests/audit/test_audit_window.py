"""The audit window (issue 15, finding 6): a receipt pins the student's log up to the head it signed.

An owner who rewrites or cuts entries up to a head that a counterpart holds
in a receipt is caught by ``cross_check`` and by ``verify`` given those heads;
entries after the last head anyone holds can still be rewritten unseen, and
the tests say so exactly (docs/threat-model.md, "Audit log").
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from audit_fixtures import StepClock, make_exchange
from typer.testing import CliRunner

from knexa_cli.node import app

from knexa_node.audit import AuditLog, cross_check, events, receipt_heads, verify_file
from knexa_node.audit.framing import scan_frames
from knexa_node.audit.verify import LOG_MAGIC
from knexa_node.crypto import Signer
from knexa_node.wire import Envelope, Receipt, open_envelope, seal_envelope
from knexa_node.wire.codec import pack, unpack


def _history(tmp: Path) -> tuple[Signer, Path, Path, Path, int]:
    """Round 0: b teaches a. Round 1: a teaches b, and b's receipt pins b's log.

    Returns b's signer, the two logs, a copy of b's log taken before its round-0
    entries (to rewrite from), and the seq of the head b signed.
    """
    cpm, a, b = Signer.generate(), Signer.generate(), Signer.generate()
    clock = StepClock()
    fork = tmp / "b-fork.log"
    with AuditLog.open(tmp / "a.log", a, clock=clock) as log_a, AuditLog.open(tmp / "b.log", b, clock=clock) as log_b:
        log_b.append(events.proposal_refused(make_exchange(cpm, b, a, 0).proposal, b.peer_id, "busy"))
        shutil.copy(tmp / "b.log", fork)  # b's log before the entries it will later rewrite
        first = make_exchange(cpm, b, a, 0)
        log_b.append(events.proposal_accepted(first.proposal, b.peer_id))
        log_b.append(events.package_sent(first.header, first.receipt_envelope))
        second = make_exchange(cpm, a, b, 1)
        head = (log_b.count, log_b.head_hash)  # what b's daemon passes to fetch_package
        receipt = Receipt(proposal_id=second.proposal.proposal_id, round=1, teacher=a.peer_id, student=b.peer_id,
                          payload_hash=second.header.payload_hash, payload_size=second.header.payload_size,
                          log_entries=head[0], log_head=head[1])
        log_a.append(events.package_sent(second.header, seal_envelope(b, receipt).to_bytes()))
        log_b.append(events.package_received(second.header_envelope, second.header))
    return b, tmp / "a.log", tmp / "b.log", fork, head[0] - 1


def _rewrite(fork: Path, owner: Signer, *, entries: int) -> None:
    """The owner appends ``entries`` invented entries to its own copy, re-signing them (it has the key)."""
    cpm, other = Signer.generate(), Signer.generate()
    with AuditLog.open(fork, owner, clock=StepClock(1_900_000_000.0)) as log:
        for round_ in range(entries):
            log.append(events.proposal_refused(make_exchange(cpm, owner, other, round_).proposal, owner.peer_id, "x"))


def test_the_receipt_pins_the_students_head(tmp_path: Path) -> None:
    _, path_a, path_b, _, head_seq = _history(tmp_path)
    view_a, view_b = verify_file(path_a), verify_file(path_b)
    heads = receipt_heads(view_a.entries)
    assert [(c.seq, c.head_hash) for _, _, c in heads] == [(head_seq, view_b.entries[head_seq].hash)]
    assert not [m for m in cross_check(view_a, view_b).mismatches if m.kind in ("rewritten", "truncated")]
    assert verify_file(path_b, checkpoints=[(e, c) for _, e, c in heads]).report.ok


def test_rewriting_entries_up_to_the_pinned_head_is_detected(tmp_path: Path) -> None:
    b, path_a, _, fork, head_seq = _history(tmp_path)
    _rewrite(fork, b, entries=4)  # the same length, other entries from seq 1 on
    view_a, rewritten = verify_file(path_a), verify_file(fork)
    assert rewritten.report.ok  # on its own, a re-signed history verifies
    result = cross_check(view_a, rewritten)
    assert [m.kind for m in result.mismatches if m.kind in ("rewritten", "truncated")] == ["rewritten"]
    heads = [(e, c) for _, e, c in receipt_heads(view_a.entries)]
    report = verify_file(fork, checkpoints=heads).report
    assert report.problem is not None and report.problem.reason == "checkpoint-mismatch"
    assert report.problem.seq == head_seq


def test_cutting_the_log_before_the_pinned_head_is_detected(tmp_path: Path) -> None:
    b, path_a, _, fork, head_seq = _history(tmp_path)
    result = cross_check(verify_file(path_a), verify_file(fork))  # b's log as it was before its head
    assert "truncated" in [m.kind for m in result.mismatches]
    heads = [(e, c) for _, e, c in receipt_heads(verify_file(path_a).entries)]
    report = verify_file(fork, checkpoints=heads).report
    assert report.problem is not None and report.problem.reason == "checkpoint-beyond-end"


def test_the_window_entries_after_the_last_pinned_head_can_be_rewritten_unseen(tmp_path: Path) -> None:
    b, path_a, path_b, _, head_seq = _history(tmp_path)
    view_b = verify_file(path_b)
    assert len(view_b.entries) == head_seq + 2  # the package-received entry came after the receipt
    prefix = tmp_path / "b-prefix.log"  # b's log cut right after the pinned head
    shutil.copy(path_b, prefix)
    _truncate_after(prefix, head_seq)
    _rewrite(prefix, b, entries=1)  # replaces the package-received entry
    heads = [(e, c) for _, e, c in receipt_heads(verify_file(path_a).entries)]
    assert verify_file(prefix, checkpoints=heads).report.ok  # documented: not detected by the receipt
    assert not [m for m in cross_check(verify_file(path_a), verify_file(prefix)).mismatches
                if m.kind in ("rewritten", "truncated")]


def _truncate_after(path: Path, seq: int) -> None:
    scan = scan_frames(path.read_bytes(), LOG_MAGIC)
    keep = scan.frames[seq + 2].offset  # frame 0 is the header; entries follow
    with path.open("r+b") as handle:
        handle.truncate(keep)


def test_cli_verify_holds_a_log_against_a_counterparts_receipts(tmp_path: Path) -> None:
    b, path_a, path_b, fork, _ = _history(tmp_path)
    _rewrite(fork, b, entries=4)
    runner = CliRunner()
    honest = runner.invoke(app, ["audit", "verify", str(path_b), "--counterpart-log", str(path_a), "--json"])
    assert honest.exit_code == 0, honest.output
    assert json.loads(honest.output)["checkpoints_checked"] == 1
    caught = runner.invoke(app, ["audit", "verify", str(fork), "--counterpart-log", str(path_a), "--json"])
    assert caught.exit_code == 1
    assert json.loads(caught.output)["problem"]["reason"] == "checkpoint-mismatch"


def test_a_version_1_receipt_still_verifies_and_pins_nothing(tmp_path: Path) -> None:
    cpm, a, b = Signer.generate(), Signer.generate(), Signer.generate()
    ex = make_exchange(cpm, a, b, 0)
    body = {k: v for k, v in unpack(open_envelope(ex.receipt_envelope)[0].body).items()
            if k not in ("log_entries", "log_head")}
    old = Envelope(version=1, type="receipt", sender=b.peer_id, timestamp=1.7e9, nonce=bytes(16), body=pack(body),
                   signature=b"")
    old = dataclasses.replace(old, signature=b.sign(old.signed_bytes()))
    envelope, receipt = open_envelope(old.to_bytes())
    assert envelope.version == 1 and (receipt.log_entries, receipt.log_head) == (0, bytes(32))
    with AuditLog.open(tmp_path / "a.log", a) as log:
        log.append(events.package_sent(ex.header, old.to_bytes()))
    view = verify_file(tmp_path / "a.log")
    assert view.report.ok and receipt_heads(view.entries) == []
