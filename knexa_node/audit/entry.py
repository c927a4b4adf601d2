"""One audit entry: its fields, their bounds, and the canonical bytes the node signs.

A record on disk is ``body || signature`` where ``body`` is the msgpack array::

    ["knexa-audit-entry-v1", seq, time, prev, round, proposal_id, peer, kind,
     protocol, package_hash, package_size, outcome, receipt, metrics]

and ``signature`` (64 bytes) is the log owner's Ed25519 signature over
``body``. The entry's hash (the next entry's ``prev``) is sha256 of the whole
record, so it commits to the signature too. ``metrics`` is a map with keys
in sorted order; decoding re-encodes and demands the same bytes, so every
entry has exactly one valid encoding.

The log's first record, its header, is ``["knexa-audit-log-v1", owner, created]``
signed the same way; entry 0's ``prev`` is the header's hash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from knexa_node.crypto import SIGNATURE_SIZE, Signer, is_valid_peer_id, sha256
from knexa_node.wire.codec import pack, unpack
from knexa_node.wire.errors import WireError
from knexa_node.wire.messages import PROTOCOLS

ENTRY_DOMAIN = "knexa-audit-entry-v1"
HEADER_DOMAIN = "knexa-audit-log-v1"

PROPOSAL_ACCEPTED = "proposal-accepted"
PROPOSAL_REFUSED = "proposal-refused"
PACKAGE_SENT = "package-sent"
PACKAGE_RECEIVED = "package-received"
DISTILLATION = "distillation"
REWARD_REPORTED = "reward-reported"
DP_EPSILON_SPENT = "dp-epsilon-spent"
GUARDRAIL_REDACTIONS = "guardrail-redactions"
# Written by an explicit repair of a torn tail, so the repair itself is on the record.
LOG_REPAIRED = "log-repaired"
KINDS = (PROPOSAL_ACCEPTED, PROPOSAL_REFUSED, PACKAGE_SENT, PACKAGE_RECEIVED, DISTILLATION,
         REWARD_REPORTED, DP_EPSILON_SPENT, GUARDRAIL_REDACTIONS, LOG_REPAIRED)
# A package entry names both parties, the proposal and the package.
PACKAGE_KINDS = (PACKAGE_SENT, PACKAGE_RECEIVED)

# Every exchange ends in an explicit outcome (DESIGN.md, "Pitfalls").
OK = "ok"
REFUSED = "refused"
TIMED_OUT = "timed-out"
FAILED = "failed"
CANCELLED = "cancelled"
OUTCOMES = (OK, REFUSED, TIMED_OUT, FAILED, CANCELLED)

MAX_RECEIPT = 8 * 1024
MAX_METRICS = 32
MAX_METRIC_KEY = 64
MAX_METRIC_TEXT = 256
MAX_INT = 2**62
MAX_TIME = 1e11

MetricValue = bool | int | float | str


class EntryFormatError(Exception):
    """A record's bytes are not a valid entry; ``reason`` is a stable tag."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


@dataclass(frozen=True)
class Event:
    """What happened, as the caller tells it; the log adds seq, time, chain and signature.

    ``receipt`` is the counterpart's signed envelope bytes, verbatim: the
    student's :class:`~knexa_node.wire.Receipt` on a ``package-sent`` entry, or
    the teacher's :class:`~knexa_node.wire.PackageHeader` on ``package-received``.
    """

    kind: str
    round: int
    outcome: str = OK
    proposal_id: bytes = b""
    peer: str = ""
    protocol: str = ""
    package_hash: bytes = b""
    package_size: int = 0
    receipt: bytes = b""
    metrics: Mapping[str, MetricValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Sorted and read-only: the canonical order is decided once, here.
        object.__setattr__(self, "metrics", MappingProxyType(dict(sorted(dict(self.metrics).items()))))


@dataclass(frozen=True)
class Entry:
    seq: int
    time: float
    prev: bytes
    event: Event
    signature: bytes
    hash: bytes  # sha256 of the record: the next entry's ``prev``
    record: bytes = field(repr=False)  # body || signature, as stored

    def to_json(self) -> dict[str, Any]:
        ev = self.event
        return {
            "seq": self.seq, "time": self.time, "prev": self.prev.hex(), "hash": self.hash.hex(),
            "kind": ev.kind, "round": ev.round, "outcome": ev.outcome, "proposal_id": ev.proposal_id.hex(),
            "peer": ev.peer, "protocol": ev.protocol, "package_hash": ev.package_hash.hex(),
            "package_size": ev.package_size, "receipt": ev.receipt.hex(), "metrics": dict(ev.metrics),
            "signature": self.signature.hex(),
        }


@dataclass(frozen=True)
class Header:
    owner: str
    created: float
    hash: bytes
    record: bytes = field(repr=False)


def check_event(ev: Event) -> None:
    """Raise :class:`EntryFormatError` (reason ``bad-field``) unless every field is in bounds."""

    def bad(detail: str) -> EntryFormatError:
        return EntryFormatError("bad-field", detail)

    if ev.kind not in KINDS:
        raise bad(f"kind {ev.kind!r} is not one of {KINDS}")
    if not _is_int(ev.round) or not 0 <= ev.round < MAX_INT:
        raise bad(f"round must be a non-negative integer, not {ev.round!r}")
    if ev.outcome not in OUTCOMES:
        raise bad(f"outcome {ev.outcome!r} is not one of {OUTCOMES}")
    if not isinstance(ev.proposal_id, bytes) or len(ev.proposal_id) not in (0, 16):
        raise bad("proposal_id must be empty or 16 bytes")
    if not isinstance(ev.peer, str) or (ev.peer and not is_valid_peer_id(ev.peer)):
        raise bad("peer must be empty or an Ed25519 peer ID")
    if not isinstance(ev.protocol, str) or (ev.protocol and ev.protocol not in PROTOCOLS):
        raise bad(f"protocol must be empty or one of {PROTOCOLS}")
    if not isinstance(ev.package_hash, bytes) or len(ev.package_hash) not in (0, 32):
        raise bad("package_hash must be empty or 32 bytes")
    if not _is_int(ev.package_size) or not 0 <= ev.package_size < MAX_INT:
        raise bad("package_size must be a non-negative integer")
    if not isinstance(ev.receipt, bytes) or len(ev.receipt) > MAX_RECEIPT:
        raise bad(f"receipt must be at most {MAX_RECEIPT} bytes")
    if ev.kind in PACKAGE_KINDS and not (ev.peer and ev.proposal_id and ev.package_hash and ev.protocol):
        raise bad(f"a {ev.kind} entry needs peer, proposal_id, protocol and package_hash")
    if ev.receipt and ev.kind not in PACKAGE_KINDS:
        raise bad(f"only {PACKAGE_KINDS} entries carry a counterpart receipt")
    if len(ev.metrics) > MAX_METRICS:
        raise bad(f"at most {MAX_METRICS} metrics")
    for key, value in ev.metrics.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METRIC_KEY:
            raise bad(f"metric names are strings of 1..{MAX_METRIC_KEY} characters: {key!r:.80}")
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(f"metric {key} is not finite")
        if isinstance(value, str) and len(value) > MAX_METRIC_TEXT:
            raise bad(f"metric {key} is longer than {MAX_METRIC_TEXT} characters")
        if _is_int(value) and not -MAX_INT <= value <= MAX_INT:
            raise bad(f"metric {key} is out of range")
        if not isinstance(value, (bool, int, float, str)):
            raise bad(f"metric {key} must be a bool, number or string, not {type(value).__name__}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def entry_body(seq: int, time: float, prev: bytes, ev: Event) -> bytes:
    return pack([ENTRY_DOMAIN, seq, float(time), prev, ev.round, ev.proposal_id, ev.peer, ev.kind, ev.protocol,
                 ev.package_hash, ev.package_size, ev.outcome, ev.receipt, dict(ev.metrics)])


def sign_entry(signer: Signer, seq: int, time: float, prev: bytes, ev: Event) -> Entry:
    check_event(ev)
    body = entry_body(seq, time, prev, ev)
    signature = signer.sign(body)
    record = body + signature
    return Entry(seq, float(time), prev, ev, signature, sha256(record), record)


def decode_entry(record: bytes) -> Entry:
    """Parse a stored record; check field bounds and canonical form, not the signature."""
    body, signature = _split(record)
    try:
        raw = unpack(body, max_size=len(body))
    except WireError as exc:
        raise EntryFormatError("bad-encoding", f"entry is not msgpack: {exc}") from None
    if not isinstance(raw, list) or len(raw) != 14 or raw[0] != ENTRY_DOMAIN:
        raise EntryFormatError("bad-encoding", "record is not an audit entry")
    _, seq, time, prev, round_, proposal_id, peer, kind, protocol, package_hash, package_size, outcome, receipt, metrics = raw
    if not _is_int(seq) or not 0 <= seq < MAX_INT:
        raise EntryFormatError("bad-field", "seq must be a non-negative integer")
    if not isinstance(time, float) or not 0 <= time < MAX_TIME:
        raise EntryFormatError("bad-field", f"time {time!r:.40} is not a unix time")
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise EntryFormatError("bad-field", "prev must be 32 bytes")
    if not isinstance(metrics, dict):
        raise EntryFormatError("bad-field", "metrics must be a map")
    try:
        ev = Event(kind=kind, round=round_, outcome=outcome, proposal_id=proposal_id, peer=peer, protocol=protocol,
                   package_hash=package_hash, package_size=package_size, receipt=receipt, metrics=metrics)
    except TypeError as exc:  # unhashable or unsortable metric keys
        raise EntryFormatError("bad-field", f"metrics: {exc}") from None
    check_event(ev)
    if entry_body(seq, time, prev, ev) != body:
        raise EntryFormatError("not-canonical", "entry bytes are not the canonical encoding of its fields")
    return Entry(seq, time, prev, ev, signature, sha256(record), record)


def sign_header(signer: Signer, created: float) -> Header:
    body = pack([HEADER_DOMAIN, signer.peer_id, float(created)])
    record = body + signer.sign(body)
    return Header(signer.peer_id, float(created), sha256(record), record)


def decode_header(record: bytes) -> Header:
    """Parse the header record; check its shape, not its signature."""
    body, _ = _split(record)
    try:
        raw = unpack(body, max_size=len(body))
    except WireError as exc:
        raise EntryFormatError("bad-header", f"header is not msgpack: {exc}") from None
    if not isinstance(raw, list) or len(raw) != 3 or raw[0] != HEADER_DOMAIN:
        raise EntryFormatError("bad-header", "first record is not an audit log header")
    _, owner, created = raw
    if not isinstance(owner, str) or not is_valid_peer_id(owner):
        raise EntryFormatError("bad-header", "header owner is not an Ed25519 peer ID")
    if not isinstance(created, float) or not 0 <= created < MAX_TIME:
        raise EntryFormatError("bad-header", "header creation time is not a unix time")
    if pack([HEADER_DOMAIN, owner, created]) != body:
        raise EntryFormatError("bad-header", "header bytes are not canonical")
    return Header(owner, created, sha256(record), record)


def split_record(record: bytes) -> tuple[bytes, bytes]:
    """``(signed body, signature)`` of a stored record."""
    return _split(record)


def _split(record: bytes) -> tuple[bytes, bytes]:
    if len(record) <= SIGNATURE_SIZE:
        raise EntryFormatError("bad-encoding", "record is shorter than a signature")
    return record[:-SIGNATURE_SIZE], record[-SIGNATURE_SIZE:]
