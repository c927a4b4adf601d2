"""Building the :class:`Event` of each exchange step from the wire messages at hand.

The exchange code calls these and hands the result to :meth:`AuditLog.append`;
``me`` is always the logging node's peer ID. Metrics names are stable (scripts
read them): ``role``, ``code``, ``loss_before``, ``loss_after``, ``steps``,
``seconds``, ``reward``, ``epsilon``, ``delta``, ``epsilon_total``,
``redactions``, ``chunks``.
"""

from __future__ import annotations

from typing import Mapping

from knexa_node.audit.entry import (
    DISTILLATION,
    DP_EPSILON_SPENT,
    GUARDRAIL_REDACTIONS,
    OK,
    PACKAGE_RECEIVED,
    PACKAGE_SENT,
    PROPOSAL_ACCEPTED,
    PROPOSAL_REFUSED,
    REFUSED,
    REWARD_REPORTED,
    TIMED_OUT,
    Event,
    MetricValue,
)
from knexa_node.exchange.errors import ExchangeOutcome
from knexa_node.wire import Feedback, PackageHeader, PairingProposal

# ExchangeOutcome.status -> entry outcome
_STATUS_OUTCOME = {"done": OK, "refused": REFUSED, "timed-out": TIMED_OUT}


def _role_and_peer(proposal: PairingProposal, me: str) -> tuple[str, str]:
    if me == proposal.teacher:
        return "teacher", proposal.student
    if me == proposal.student:
        return "student", proposal.teacher
    return "none", ""


def proposal_accepted(proposal: PairingProposal, me: str) -> Event:
    role, peer = _role_and_peer(proposal, me)
    return Event(kind=PROPOSAL_ACCEPTED, round=proposal.round, proposal_id=proposal.proposal_id, peer=peer,
                 protocol=proposal.protocol, metrics={"role": role, "score": proposal.score})


def proposal_refused(proposal: PairingProposal, me: str, code: str) -> Event:
    """A proposal this node will not carry out; ``code`` is the stable refusal code sent to the peer."""
    role, peer = _role_and_peer(proposal, me)
    return Event(kind=PROPOSAL_REFUSED, round=proposal.round, outcome=REFUSED, proposal_id=proposal.proposal_id,
                 peer=peer, protocol=proposal.protocol, metrics={"role": role, "code": code[:64]})


def package_sent(header: PackageHeader, receipt: bytes | None, *, outcome: str = OK) -> Event:
    """Teacher side: the package of ``header`` went out; ``receipt`` is the student's signed
    Receipt envelope (None if it never came: then say why in ``outcome``)."""
    return Event(kind=PACKAGE_SENT, round=header.round, outcome=outcome, proposal_id=header.proposal_id,
                 peer=header.student, protocol=header.protocol, package_hash=header.payload_hash,
                 package_size=header.payload_size, receipt=receipt or b"", metrics={"chunks": header.chunks})


def package_received(header_envelope: bytes, header: PackageHeader, *, outcome: str = OK) -> Event:
    """Student side: the package of ``header`` arrived; ``header_envelope`` is the teacher's signed bytes."""
    return Event(kind=PACKAGE_RECEIVED, round=header.round, outcome=outcome, proposal_id=header.proposal_id,
                 peer=header.teacher, protocol=header.protocol, package_hash=header.payload_hash,
                 package_size=header.payload_size, receipt=header_envelope, metrics={"chunks": header.chunks})


def distillation(proposal: PairingProposal, *, loss_before: float, loss_after: float, steps: int, seconds: float,
                 outcome: str = OK, extra: Mapping[str, MetricValue] | None = None) -> Event:
    """Student side: the result of distilling the teacher's package into the adapter."""
    return Event(kind=DISTILLATION, round=proposal.round, outcome=outcome, proposal_id=proposal.proposal_id,
                 peer=proposal.teacher, protocol=proposal.protocol,
                 metrics={"loss_before": float(loss_before), "loss_after": float(loss_after), "steps": int(steps),
                          "seconds": float(seconds), **(extra or {})})


def reward_reported(feedback: Feedback, teacher: str, *, outcome: str = OK) -> Event:
    """Student side: the Eq. 3 reward sent to the CPM for the exchange with ``teacher``."""
    return Event(kind=REWARD_REPORTED, round=feedback.round, outcome=outcome, proposal_id=feedback.proposal_id,
                 peer=teacher, package_size=feedback.package_bytes,
                 metrics={"reward": feedback.reward, "loss_before": feedback.loss_before,
                          "loss_after": feedback.loss_after})


def dp_epsilon_spent(header: PackageHeader, *, delta: float, epsilon_total: float) -> Event:
    """Teacher side: the privacy budget this package spent, and the running total after it."""
    return Event(kind=DP_EPSILON_SPENT, round=header.round, proposal_id=header.proposal_id, peer=header.student,
                 protocol=header.protocol, package_hash=header.payload_hash,
                 metrics={"epsilon": header.dp_epsilon, "delta": float(delta), "epsilon_total": float(epsilon_total)})


def guardrail_redactions(header: PackageHeader) -> Event:
    """Teacher side: how many spans the guardrail removed from this package."""
    return Event(kind=GUARDRAIL_REDACTIONS, round=header.round, proposal_id=header.proposal_id, peer=header.student,
                 protocol=header.protocol, package_hash=header.payload_hash,
                 metrics={"redactions": header.redactions})


def from_exchange_outcome(outcome: ExchangeOutcome) -> Event:
    """The entry for how one exchange ended, on either side (the driver's :class:`ExchangeOutcome`).

    Once a package header was seen this is a ``package-sent`` (teacher, with
    the student's receipt if it came) or ``package-received`` (student, with
    the teacher-signed header) entry; a refusal or timeout before any package
    is a ``proposal-refused`` entry carrying the stable code.
    """
    result = _STATUS_OUTCOME[outcome.status]
    metrics: dict[str, MetricValue] = {"role": outcome.role, "seconds": float(outcome.elapsed_s)}
    if outcome.code:
        metrics["code"] = outcome.code[:64]
    # Round -1 means the proposal never verified; the entry still records the refusal.
    round_ = max(outcome.round, 0)
    if outcome.payload_hash and outcome.protocol and outcome.proposal_id:
        teacher = outcome.role == "teacher"
        return Event(kind=PACKAGE_SENT if teacher else PACKAGE_RECEIVED, round=round_, outcome=result,
                     proposal_id=outcome.proposal_id, peer=outcome.peer, protocol=outcome.protocol,
                     package_hash=outcome.payload_hash, package_size=outcome.payload_size,
                     receipt=outcome.receipt_envelope if teacher else outcome.header_envelope,
                     metrics={**metrics, "dp_epsilon": float(outcome.dp_epsilon), "redactions": outcome.redactions})
    return Event(kind=PROPOSAL_REFUSED, round=round_, outcome=result, proposal_id=outcome.proposal_id,
                 peer=outcome.peer, protocol=outcome.protocol, metrics=metrics)
