"""Do two organizations' logs tell the same story about their common exchanges?

Pure: takes two verified :class:`LogView`s. An exchange is common when one
log's entry names the other log's owner as counterpart. For every such
proposal it lists each disagreement:

- ``missing``: one side logged the proposal, the other has no entry for it;
- ``round``: the sides (or entries of one side) put the proposal in different rounds;
- ``missing-transfer``: a successful ``package-sent`` without the matching
  ``package-received`` on the other side, or the reverse;
- ``package_hash`` / ``package_size`` / ``protocol``: the sent and received
  entries disagree on that field;
- ``rewritten`` / ``truncated``: a receipt in one log carries the other
  owner's signed log head (seq, hash), and the other log's entry at that seq
  hashes differently, or the log ends before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from knexa_node.audit.entry import OK, PACKAGE_RECEIVED, PACKAGE_SENT, Entry, Header
from knexa_node.audit.proof import receipt_heads
from knexa_node.audit.verify import LogView


@dataclass(frozen=True)
class Mismatch:
    proposal_id: bytes
    kind: str
    detail: str
    a_seq: int | None = None
    b_seq: int | None = None
    a_value: Any = None
    b_value: Any = None

    def to_json(self) -> dict[str, Any]:
        def show(value: Any) -> Any:
            return value.hex() if isinstance(value, bytes) else value

        return {"proposal_id": self.proposal_id.hex(), "kind": self.kind, "detail": self.detail,
                "a_seq": self.a_seq, "b_seq": self.b_seq, "a_value": show(self.a_value), "b_value": show(self.b_value)}


@dataclass(frozen=True)
class CrossCheck:
    a_owner: str
    b_owner: str
    common: int  # proposals both logs refer to
    mismatches: list[Mismatch]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "a_owner": self.a_owner, "b_owner": self.b_owner, "common": self.common,
                "mismatches": [m.to_json() for m in self.mismatches]}


def cross_check(a: LogView, b: LogView) -> CrossCheck:
    """Compare the exchanges between the owners of ``a`` and ``b``, listing every mismatch."""
    if a.header is None or b.header is None:
        raise ValueError("both logs need a readable header")
    a_owner, b_owner = a.header.owner, b.header.owner
    a_by = _by_proposal(a.entries, b_owner)
    b_by = _by_proposal(b.entries, a_owner)
    mismatches: list[Mismatch] = []
    common = 0
    for pid in sorted(set(a_by) | set(b_by)):
        ea, eb = a_by.get(pid, []), b_by.get(pid, [])
        if not ea or not eb:
            only, side = (ea, "a") if ea else (eb, "b")
            mismatches.append(Mismatch(pid, "missing", f"only log {side} has entries for this proposal "
                                       f"({', '.join(e.event.kind for e in only)})",
                                       a_seq=ea[0].seq if ea else None, b_seq=eb[0].seq if eb else None))
            continue
        common += 1
        rounds_a, rounds_b = {e.event.round for e in ea}, {e.event.round for e in eb}
        if len(rounds_a | rounds_b) > 1:
            mismatches.append(Mismatch(pid, "round", "entries put this proposal in different rounds",
                                       ea[0].seq, eb[0].seq, sorted(rounds_a), sorted(rounds_b)))
        mismatches += _transfer(pid, _last(ea, PACKAGE_SENT), _last(eb, PACKAGE_RECEIVED), sender="a")
        mismatches += _transfer(pid, _last(eb, PACKAGE_SENT), _last(ea, PACKAGE_RECEIVED), sender="b")
    mismatches += _pinned_heads(a, b, side="b") + _pinned_heads(b, a, side="a")
    return CrossCheck(a_owner, b_owner, common, mismatches)


def _pinned_heads(holder: LogView, owned: LogView, *, side: str) -> list[Mismatch]:
    """Check ``owned`` (log ``side``) against the log heads its owner signed into receipts that ``holder`` keeps."""
    owner = cast(Header, owned.header).owner  # cross_check refuses logs without a header
    found = []
    for pid, envelope, head in receipt_heads(holder.entries):
        if envelope.sender != owner:
            continue
        if head.seq < len(owned.entries):
            if owned.entries[head.seq].hash != head.head_hash:
                found.append(Mismatch(pid, "rewritten", f"log {side}'s entry {head.seq} differs from the head its owner "
                                      "signed into a receipt the other log holds", **{f"{side}_seq": head.seq}))
        elif owned.report.ok:  # a log that failed verification was already cut short; that is reported
            found.append(Mismatch(pid, "truncated", f"log {side} ends at seq {len(owned.entries) - 1}, but its owner "
                                  f"signed a receipt over seq {head.seq}", **{f"{side}_seq": head.seq}))
    return found


def _by_proposal(entries: list[Entry], counterpart: str) -> dict[bytes, list[Entry]]:
    found: dict[bytes, list[Entry]] = {}
    for entry in entries:
        if entry.event.peer == counterpart and entry.event.proposal_id:
            found.setdefault(entry.event.proposal_id, []).append(entry)
    return found


def _last(entries: list[Entry], kind: str) -> Entry | None:
    # Prefer the last successful entry of that kind (a retry supersedes a failure).
    of_kind = [e for e in entries if e.event.kind == kind]
    ok = [e for e in of_kind if e.event.outcome == OK]
    return (ok or of_kind or [None])[-1]


def _transfer(pid: bytes, sent: Entry | None, received: Entry | None, *, sender: str) -> list[Mismatch]:
    receiver = "b" if sender == "a" else "a"

    def seqs(s: Entry | None, r: Entry | None) -> dict[str, int | None]:
        s_seq, r_seq = (s.seq if s else None), (r.seq if r else None)
        return {f"{sender}_seq": s_seq, f"{receiver}_seq": r_seq}

    def values(s: Any, r: Any) -> dict[str, Any]:
        return {f"{sender}_value": s, f"{receiver}_value": r}

    if sent is None and received is None:
        return []
    if sent is None or received is None:
        present = cast(Entry, sent or received)  # one of them is set (checked just above)
        if present.event.outcome != OK:
            return []  # a failed transfer on one side need not exist on the other
        what = (f"log {sender} sent a package that log {receiver} never logged receiving" if received is None
                else f"log {receiver} received a package that log {sender} never logged sending")
        return [Mismatch(pid, "missing-transfer", what, **seqs(sent, received))]
    found = []
    for name in ("package_hash", "package_size", "protocol"):
        s_value, r_value = getattr(sent.event, name), getattr(received.event, name)
        if s_value != r_value:
            found.append(Mismatch(pid, name, f"sent (log {sender}) and received (log {receiver}) disagree on {name}",
                                  **seqs(sent, received), **values(s_value, r_value)))
    return found
