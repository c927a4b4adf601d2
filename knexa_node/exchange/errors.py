"""Stable failure codes of a knowledge exchange, the one exception that carries them, and the outcome.

Every exchange, on either side, ends in exactly one :class:`ExchangeOutcome`
(done, refused with a code, or timed out) that the caller logs and audits.
The codes are part of the protocol: a teacher sends them to the student in
``ExchangeRefused``, and metrics count them, so never rename one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# --- stable codes ---------------------------------------------------------------------------
NON_MEMBER = "non-member"  # the remote peer is not in the consortium
FORGED_PROPOSAL = "forged-proposal"  # not a proposal, or not signed by the configured CPM key
EXPIRED_PROPOSAL = "expired-proposal"
WRONG_ROUND = "wrong-round"  # proposal for another round than the current one
REPLAYED_PROPOSAL = "replayed-proposal"  # this proposal was already served (replay cache)
WRONG_RECIPIENT = "wrong-recipient"  # a peer is not the one the proposal or header names
TOO_LARGE = "too-large"  # package over the size cap, or a frame over its bound
TAMPERED = "tampered"  # authentication of a chunk, the chunk order/end, or the payload hash failed
BAD_HEADER = "bad-header"  # header does not match the proposal (id, round, protocol, sizes)
BAD_RECEIPT = "bad-receipt"  # receipt unsigned by the student or for another package
MALFORMED = "malformed"  # bytes that do not decode to the expected signed message
BUDGET_EXCEEDED = "budget-exceeded"  # the exchange would overspend the DP budget
BUILD_FAILED = "build-failed"  # the learning engine could not build the package
STREAM_ERROR = "stream-error"  # the stream broke or closed early
TIMEOUT = "timeout"
REFUSED_BY_PEER = "refused-by-peer"  # prefix: the other side refused (its code follows after ':')

CODES = frozenset(
    {
        NON_MEMBER, FORGED_PROPOSAL, EXPIRED_PROPOSAL, WRONG_ROUND, REPLAYED_PROPOSAL, WRONG_RECIPIENT,
        TOO_LARGE, TAMPERED, BAD_HEADER, BAD_RECEIPT, MALFORMED, BUDGET_EXCEEDED, BUILD_FAILED,
        STREAM_ERROR, TIMEOUT,
    }
)


class ExchangeError(Exception):
    """An exchange step failed; ``code`` is one of :data:`CODES`, ``str()`` explains."""

    def __init__(self, code: str, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}" if reason else code)


Status = Literal["done", "refused", "timed-out"]
Role = Literal["teacher", "student"]


class ExchangeStateError(Exception):
    """A session was asked for a step its state does not allow: a bug in the caller, not a peer's doing.

    Not an :class:`ExchangeError`: it carries no protocol code, is never sent to
    the peer, and must not be mistaken for a refusal. See :mod:`.states`.
    """

    def __init__(self, role: Role, state: str, event: str) -> None:
        self.role = role
        self.state = state
        self.event = event
        super().__init__(f"{role} session: event {event!r} is not allowed in state {state!r}")


@dataclass(frozen=True)
class ExchangeOutcome:
    """How one exchange ended, for the caller to log and write to the audit log.

    ``code`` is "" when ``status`` is "done". ``header_envelope`` is the
    teacher-signed ``PackageHeader`` (the teacher's signature over the payload
    hash) and ``receipt_envelope`` the student-signed ``Receipt``; both are
    raw envelope bytes, kept as evidence. ``payload`` is set only on the
    student side of a completed exchange.
    """

    status: Status
    role: Role
    peer: str
    code: str = ""
    reason: str = ""
    proposal_id: bytes = b""
    round: int = -1
    protocol: str = ""
    payload_hash: bytes = b""
    payload_size: int = 0
    dp_epsilon: float = 0.0
    redactions: int = 0
    elapsed_s: float = 0.0
    header_envelope: bytes = b""
    receipt_envelope: bytes = b""
    payload: bytes | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "done"
