"""Counterpart proofs: the other party's signed word that an entry's package exchange happened.

On a ``package-sent`` entry the proof is the student's signed
:class:`~knexa_node.wire.Receipt`; on ``package-received`` it is the teacher's
signed :class:`~knexa_node.wire.PackageHeader`. Either must be signed by the
entry's counterpart, name the log owner and the counterpart in their roles,
and match the entry's proposal, round, package hash and size.

A student's Receipt also carries the head of the student's own log when it
signed (:class:`~knexa_node.wire.Receipt` ``log_entries``/``log_head``):
:func:`receipt_heads` turns the receipts in a teacher's log into checkpoints
of its students' logs, which :func:`~knexa_node.audit.verify_bytes` and
:func:`~knexa_node.audit.cross_check` hold those logs against.
"""

from __future__ import annotations

from typing import Iterable, cast

from knexa_node.audit.entry import MAX_RECEIPT, PACKAGE_RECEIVED, PACKAGE_SENT, Entry, Event
from knexa_node.wire import Checkpoint, Envelope, PackageHeader, Receipt, WireError, open_envelope


class ProofError(Exception):
    """A counterpart receipt does not verify or does not match its entry."""


def check_proof(owner: str, ev: Event) -> Envelope | None:
    """Verify ``ev.receipt`` (if any) for a log owned by ``owner``; raise :class:`ProofError`."""
    if not ev.receipt:
        return None
    if ev.kind not in (PACKAGE_SENT, PACKAGE_RECEIVED):
        raise ProofError(f"a {ev.kind} entry carries no receipt")
    expect: type[Receipt] | type[PackageHeader] = Receipt if ev.kind == PACKAGE_SENT else PackageHeader
    try:
        envelope, message = open_envelope(ev.receipt, max_size=MAX_RECEIPT, expect=(expect,))
    except WireError as exc:
        raise ProofError(f"counterpart receipt does not verify: {exc}") from None
    if envelope.sender != ev.peer:
        raise ProofError(f"receipt is signed by {envelope.sender}, not by the counterpart {ev.peer}")
    message = cast("Receipt | PackageHeader", message)  # open_envelope's `expect` guarantees the type
    teacher, student = (owner, ev.peer) if ev.kind == PACKAGE_SENT else (ev.peer, owner)
    if (message.teacher, message.student) != (teacher, student):
        raise ProofError("receipt names other parties than the entry (teacher, student)")
    if message.proposal_id != ev.proposal_id:
        raise ProofError("receipt is for another proposal")
    if message.round != ev.round:
        raise ProofError(f"receipt is for round {message.round}, entry says {ev.round}")
    if message.payload_hash != ev.package_hash:
        raise ProofError("receipt acknowledges another package hash")
    if message.payload_size != ev.package_size:
        raise ProofError(f"receipt acknowledges {message.payload_size} bytes, entry says {ev.package_size}")
    if isinstance(message, PackageHeader) and message.protocol != ev.protocol:
        raise ProofError(f"package header says protocol {message.protocol}, entry says {ev.protocol}")
    return envelope


def receipt_heads(entries: Iterable[Entry]) -> list[tuple[bytes, Envelope, Checkpoint]]:
    """(proposal id, receipt envelope, the student's log head as a checkpoint) for each receipt in ``entries``.

    ``entries`` are verified entries (their receipts checked); a receipt
    signed over an empty log (``log_entries`` 0) pins nothing and is skipped.
    """
    found = []
    for entry in entries:
        if entry.event.kind != PACKAGE_SENT or not entry.event.receipt:
            continue
        try:
            envelope, message = open_envelope(entry.event.receipt, max_size=MAX_RECEIPT, expect=(Receipt,))
        except WireError:
            continue  # not a receipt this node reads (verify reports it as bad-receipt)
        message = cast(Receipt, message)  # open_envelope's `expect` guarantees the type
        if message.log_entries > 0:
            found.append((entry.event.proposal_id, envelope,
                          Checkpoint(seq=message.log_entries - 1, head_hash=message.log_head, round=message.round)))
    return found
