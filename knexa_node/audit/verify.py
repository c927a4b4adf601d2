"""Verifying a log from its bytes alone: chain, signatures, receipts, sequence, time, checkpoints.

Pure (no I/O besides :func:`verify_file` reading the file). The walk stops at
the first bad record and reports it with a stable ``reason``:

``not-an-audit-log``, ``bad-header``, ``wrong-owner``, ``bad-encoding``,
``bad-field``, ``not-canonical``, ``bad-seq``, ``bad-chain``,
``time-backwards``, ``bad-signature``, ``bad-receipt``, ``corrupt-frame``,
``torn-tail``, ``checkpoint-mismatch``, ``checkpoint-beyond-end``.

A checkpoint is the owner's signed (seq, head hash) seen by others: an entry
whose hash differs from a checkpoint's, or a log that ends before a
checkpoint's seq, was rewritten or truncated after the checkpoint was published.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from knexa_node.audit.appendfile import read_locked
from knexa_node.audit.entry import Entry, EntryFormatError, Header, decode_entry, decode_header, split_record
from knexa_node.audit.framing import Frame, Scan, scan_frames
from knexa_node.audit.proof import ProofError, check_proof
from knexa_node.crypto import CryptoError, verify
from knexa_node.wire import Checkpoint, Envelope

LOG_MAGIC = b"KXAUDIT\x01"


@dataclass(frozen=True)
class Problem:
    """The first bad record: its entry seq (None for the header), byte offset, reason and explanation."""

    seq: int | None
    offset: int | None
    reason: str
    detail: str

    def __str__(self) -> str:
        where = "header" if self.seq is None else f"entry {self.seq}"
        at = f" (byte {self.offset})" if self.offset is not None else ""
        return f"{where}{at}: {self.reason}: {self.detail}"


@dataclass(frozen=True)
class VerifyReport:
    owner: str | None
    entries: int  # entries that verified, in order from seq 0
    head_hash: bytes | None  # hash of the last verified entry
    checkpoints_checked: int
    checkpoints_ignored: int  # signed by someone else than the owner
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        problem = self.problem
        return {
            "ok": self.ok, "owner": self.owner, "entries": self.entries,
            "head_seq": self.entries - 1 if self.entries else None,
            "head_hash": self.head_hash.hex() if self.head_hash else None,
            "checkpoints_checked": self.checkpoints_checked, "checkpoints_ignored": self.checkpoints_ignored,
            "problem": None if problem is None else {
                "seq": problem.seq, "offset": problem.offset, "reason": problem.reason, "detail": problem.detail},
        }


@dataclass(frozen=True)
class LogView:
    """A log as read: its header, the entries that verified, and the report."""

    header: Header | None
    entries: list[Entry] = field(repr=False)
    report: VerifyReport


def verify_file(path: Path, *, checkpoints: Iterable[tuple[Envelope, Checkpoint]] = (),
                expected_owner: str | None = None, signatures: bool = True) -> LogView:
    """Read ``path`` (under a shared lock) and verify it; I/O problems raise :class:`AuditError`."""
    return verify_bytes(read_locked(Path(path)), checkpoints=checkpoints, expected_owner=expected_owner,
                        signatures=signatures)


def verify_bytes(data: bytes, *, checkpoints: Iterable[tuple[Envelope, Checkpoint]] = (),
                 expected_owner: str | None = None, signatures: bool = True) -> LogView:
    """Verify a whole log held in memory."""
    return verify_scan(scan_frames(data, LOG_MAGIC), checkpoints=checkpoints, expected_owner=expected_owner,
                       signatures=signatures)


def verify_scan(scan: Scan, *, checkpoints: Iterable[tuple[Envelope, Checkpoint]] = (),
                expected_owner: str | None = None, signatures: bool = True) -> LogView:
    """Verify the frames of a scanned log.

    ``signatures=False`` checks only structure, chain, sequence and time (for
    reopening a log quickly); the verifier always checks everything.
    """
    if not scan.frames:
        problem = scan.problem
        if problem is None:
            return _view(None, [], Problem(None, scan.end, "bad-header", "log has no header"))
        reason = "not-an-audit-log" if problem.reason == "not-this-format" else problem.reason
        return _view(None, [], Problem(None, problem.offset, reason, problem.detail))
    try:
        header = decode_header(scan.frames[0].payload)
        if signatures:
            body, signature = split_record(header.record)
            verify(header.owner, body, signature)
    except EntryFormatError as exc:
        return _view(None, [], Problem(None, scan.frames[0].offset, "bad-header", str(exc)))
    except CryptoError:
        return _view(None, [], Problem(None, scan.frames[0].offset, "bad-header", "header signature does not verify"))
    if expected_owner is not None and header.owner != expected_owner:
        return _view(header, [], Problem(None, scan.frames[0].offset, "wrong-owner",
                                         f"log belongs to {header.owner}, expected {expected_owner}"))
    entries, problem = _walk(header, scan.frames[1:], signatures)
    if problem is None and scan.problem is not None:
        reason = "corrupt-frame" if scan.problem.reason == "not-this-format" else scan.problem.reason
        problem = Problem(len(entries), scan.problem.offset, reason, scan.problem.detail)
    checked, ignored, cp_problem = _check_checkpoints(header.owner, entries, checkpoints, truncated=problem is not None)
    if cp_problem is not None and (problem is None or (problem.seq is not None and cp_problem.seq is not None
                                                        and cp_problem.seq < problem.seq)):
        problem = cp_problem
    return _view(header, entries, problem, checked, ignored)


def _walk(header: Header, frames: list[Frame], signatures: bool) -> tuple[list[Entry], Problem | None]:
    entries: list[Entry] = []
    prev, last_time, owner = header.hash, header.created, header.owner
    for frame in frames:
        seq = len(entries)

        def bad(reason: str, detail: str) -> tuple[list[Entry], Problem]:
            return entries, Problem(seq, frame.offset, reason, detail)

        try:
            entry = decode_entry(frame.payload)
        except EntryFormatError as exc:
            return bad(exc.reason, str(exc))
        if entry.seq != seq:
            return bad("bad-seq", f"sequence number {entry.seq} where {seq} was expected")
        if entry.prev != prev:
            return bad("bad-chain", "previous-entry hash does not match the entry before it")
        if entry.time < last_time:
            return bad("time-backwards", f"time {entry.time:.6f} is before the previous {last_time:.6f}")
        if signatures:
            body, signature = split_record(entry.record)
            try:
                verify(owner, body, signature)
            except CryptoError:
                return bad("bad-signature", f"signature by the log owner {owner} does not verify")
            try:
                check_proof(owner, entry.event)
            except ProofError as exc:
                return bad("bad-receipt", str(exc))
        entries.append(entry)
        prev, last_time = entry.hash, entry.time
    return entries, None


def _check_checkpoints(owner: str, entries: list[Entry], checkpoints: Iterable[tuple[Envelope, Checkpoint]],
                       *, truncated: bool) -> tuple[int, int, Problem | None]:
    checked = ignored = 0
    first: Problem | None = None
    for envelope, checkpoint in checkpoints:
        if envelope.sender != owner:
            ignored += 1
            continue
        checked += 1
        seq = checkpoint.seq
        if seq < len(entries):
            if entries[seq].hash != checkpoint.head_hash:
                problem = Problem(seq, None, "checkpoint-mismatch",
                                  f"entry differs from the owner's checkpoint signed at {envelope.timestamp:.0f} "
                                  "(history rewritten after it was published)")
            else:
                continue
        elif truncated:
            continue  # the walk already stopped earlier; that problem is reported
        else:
            problem = Problem(len(entries), None, "checkpoint-beyond-end",
                              f"log ends at seq {len(entries) - 1} but the owner's checkpoint signed at "
                              f"{envelope.timestamp:.0f} covers seq {seq} (entries removed)")
        if first is None or (problem.seq or 0) < (first.seq or 0):
            first = problem
    return checked, ignored, first


def _view(header: Header | None, entries: list[Entry], problem: Problem | None, checked: int = 0,
          ignored: int = 0) -> LogView:
    report = VerifyReport(header.owner if header else None, len(entries), entries[-1].hash if entries else None,
                          checked, ignored, problem)
    return LogView(header, entries, report)
