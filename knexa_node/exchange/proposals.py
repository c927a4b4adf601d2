"""Checks on a CPM pairing proposal before any exchange work (pure, no I/O, no clock of its own).

A teacher serves, and a student fetches, only for a proposal that is a
``PairingProposal`` envelope signed by the configured CPM key, for the
current round, not expired, naming this node in its role and the
authenticated remote peer in the other. The replay check is separate
(:mod:`.replay`) because it has state.
"""

from __future__ import annotations

from typing import Literal

from knexa_node.exchange.errors import (
    EXPIRED_PROPOSAL,
    FORGED_PROPOSAL,
    WRONG_RECIPIENT,
    WRONG_ROUND,
    ExchangeError,
)
from knexa_node.wire import PairingProposal, WireError, open_envelope

# Proposals carry the CPM's wall-clock expiry; allow this much disagreement between clocks.
DEFAULT_CLOCK_SKEW_S = 5.0


def check_proposal(
    envelope_bytes: bytes,
    *,
    cpm: str,
    me: str,
    remote: str,
    my_role: Literal["teacher", "student"],
    current_round: int | None,
    now: float,
    clock_skew_s: float = DEFAULT_CLOCK_SKEW_S,
) -> PairingProposal:
    """Verify a proposal envelope; return it, or raise :class:`ExchangeError` with a stable code.

    ``current_round`` None means "no round open": every proposal is refused.
    """
    try:
        envelope, proposal = open_envelope(envelope_bytes, expect=(PairingProposal,))
    except WireError as exc:
        raise ExchangeError(FORGED_PROPOSAL, f"not a valid signed proposal ({exc.reason})") from None
    if not cpm or envelope.sender != cpm:
        raise ExchangeError(FORGED_PROPOSAL, f"proposal signed by {envelope.sender}, not by the configured CPM")
    if not isinstance(proposal, PairingProposal):  # open_envelope's `expect` makes this unreachable
        raise ExchangeError(FORGED_PROPOSAL, f"not a proposal but a {type(proposal).__name__}")
    if current_round is None or proposal.round != current_round:
        raise ExchangeError(WRONG_ROUND, f"proposal for round {proposal.round}, current round is {current_round}")
    if now > proposal.expires + clock_skew_s:
        raise ExchangeError(EXPIRED_PROPOSAL, f"proposal expired {now - proposal.expires:.0f} s ago")
    mine, theirs = (proposal.teacher, proposal.student) if my_role == "teacher" else (proposal.student, proposal.teacher)
    if mine != me:
        raise ExchangeError(WRONG_RECIPIENT, f"proposal names {mine} as {my_role}, not this node")
    if theirs != remote:
        other = "student" if my_role == "teacher" else "teacher"
        raise ExchangeError(WRONG_RECIPIENT, f"proposal names {theirs} as {other}, but the remote peer is {remote}")
    return proposal
