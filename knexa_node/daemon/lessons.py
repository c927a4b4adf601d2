"""This node's exchanges as student, one step at a time: fetch the package, distil it, report the feedback.

Each step is one action of :class:`~knexa_node.daemon.round_machine.NodeRound`
and returns the event the machine takes next; :class:`~knexa_node.daemon.participant.Participant`
runs them as tasks. A round may hold several lessons (several teachers): what
a step leaves for the next (the fetched outcome, the distillation report) is
kept per proposal until its feedback is sent.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable, Protocol

from knexa_node.audit.entry import OK, REFUSED, TIMED_OUT
from knexa_node.config import Config
from knexa_node.crypto import sha256
from knexa_node.daemon.cpm_link import CpmLink, describe
from knexa_node.daemon.learner import Learner
from knexa_node.daemon.round_machine import (
    Distilled, Event, ExchangeFailed, FeedbackReported, FetchFailed, PackageFetched,
)
from knexa_node.exchange.errors import ExchangeOutcome
from knexa_node.learn.agent import DistillReport
from knexa_node.wire import Ack, Feedback, Message, PairingProposal

# Feedback is retried this long past its proposal's expiry (the CPM's clock may lag ours; it refuses what is late).
CLOCK_SKEW_S = 30.0


def reward_outcome(answer: Message | None) -> str:
    """The audit outcome of a reward report: acknowledged, refused, or never answered."""
    if answer is None:
        return TIMED_OUT
    return OK if isinstance(answer, Ack) and answer.ok else REFUSED


class StudentSide(Protocol):
    """What a lesson needs of :class:`~knexa_node.daemon.exchanges.ExchangeService`."""

    async def fetch(self, proposal_envelope: bytes, proposal: PairingProposal) -> ExchangeOutcome: ...
    async def record_distillation(self, outcome: ExchangeOutcome, report: Any, *, error: str | None = None) -> Any: ...
    async def record_reward(self, proposal: PairingProposal, feedback: Feedback, *, outcome: str = ...) -> Any: ...


class Lessons:
    def __init__(self, learner: Learner, exchanges: StudentSide, cpm: CpmLink, config: Config,
                 on_event: Callable[..., None]) -> None:
        self.learner, self.exchanges, self.cpm, self.config, self.on_event = learner, exchanges, cpm, config, on_event
        self.counts = {"as_student": 0, "as_teacher": 0, "failed": 0, "bytes_received": 0}
        self.rewards: list[dict[str, Any]] = []
        self._fetched: dict[bytes, ExchangeOutcome] = {}
        self._reports: dict[bytes, DistillReport] = {}

    async def fetch(self, proposal: PairingProposal, raw: bytes) -> Event:
        outcome = await self.exchanges.fetch(raw, proposal)
        if not outcome.ok:
            self.counts["failed"] += 1
            return FetchFailed(proposal.proposal_id)
        self.counts["as_student"] += 1
        self.counts["bytes_received"] += outcome.payload_size
        self._fetched[proposal.proposal_id] = outcome
        return PackageFetched(proposal.proposal_id)

    async def distil(self, proposal: PairingProposal) -> Event:
        outcome, data = self._fetched[proposal.proposal_id], self.learner.data
        payload, limit = outcome.payload or b"", int(self.config.exchange.max_package_mb * 1024 * 1024)
        try:
            report: DistillReport = await self.learner.call(
                lambda agent: agent.distill(payload, data.transfer, dev=data.dev, max_package_bytes=limit),
                doing=f"distilling (round {proposal.round})")
        except Exception as exc:  # a package the learner cannot use: audited, reported as failed
            await self.exchanges.record_distillation(outcome, None, error=f"{type(exc).__name__}: {exc}")
            raise
        await self.exchanges.record_distillation(outcome, report)
        self._reports[proposal.proposal_id] = report
        return Distilled(proposal.proposal_id)

    async def report(self, proposal: PairingProposal, *, failed: bool) -> Event:
        """Send the lesson's reward, or (``failed``, or nothing to report) its failure."""
        pid = proposal.proposal_id
        outcome, report = self._fetched.pop(pid, None), self._reports.pop(pid, None)
        if failed or outcome is None or report is None:
            await self._send(Feedback.failure(pid, proposal.round), proposal)
            return FeedbackReported(pid)
        on_dev = self.config.learning.reward_on == "dev" and report.reward_dev is not None
        reward = report.reward_dev if on_dev else report.reward
        before = report.dev_loss_pre if on_dev else report.loss_pre
        after = report.dev_loss_post if on_dev else report.loss_post
        self.on_event("distilled", round=proposal.round, teacher=proposal.teacher, reward=round(reward, 5),
                      loss_before=round(before, 4), loss_after=round(after, 4), items=report.items_used,
                      seconds=round(report.seconds, 2))
        feedback = Feedback(pid, proposal.round, float(reward), float(before), float(after),
                            int(outcome.payload_size), sha256(outcome.receipt_envelope))
        answer = await self._send(feedback, proposal)
        accepted = isinstance(answer, Ack) and answer.ok
        await self.exchanges.record_reward(proposal, feedback, outcome=reward_outcome(answer))
        self.rewards.append({"round": proposal.round, "teacher": proposal.teacher, "reward": reward, "accepted": accepted,
                             **{k: v for k, v in asdict(report).items() if isinstance(v, (int, float))}})
        return FeedbackReported(pid)

    def failed(self, proposal: PairingProposal, exc: Exception) -> Event:
        """A step raised (distillation, reporting): logged and counted; the machine reports it as failed."""
        error = f"{type(exc).__name__}: {exc}"
        self.counts["failed"] += 1
        self.on_event("exchange-error", round=proposal.round, error=error[:300])
        return ExchangeFailed(proposal.proposal_id, error)

    async def _send(self, feedback: Feedback, proposal: PairingProposal) -> Message | None:
        # Retried until the CPM answers or the proposal is over (a partition must not lose it).
        answer = await self.cpm.ask(feedback, until=proposal.expires + CLOCK_SKEW_S)
        self.on_event("feedback-sent", round=feedback.round, reward=round(feedback.reward, 5),
                      failed=feedback.package_bytes == 0, answer=describe(answer))
        return answer
