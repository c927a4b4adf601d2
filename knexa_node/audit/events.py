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
    Event,
    MetricValue,
)
from knexa_node.wire import Feedback, PackageHeader, PairingProposal


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
