"""This node's exchanges as student, one step at a time: fetch each package, distil the round's together, report each.

Each step is one action of :class:`~knexa_node.daemon.round_machine.NodeRound`
and returns the event(s) the machine takes next; :class:`~knexa_node.daemon.participant.Participant`
runs them as tasks. A round may hold several lessons (several teachers): the
packages fetched are kept per proposal until the machine distils them in one
phase (:meth:`Agent.distill_many`); each teacher's report is kept until its
feedback is sent. The reward reported is ``learning.reward``: ``covered``
(the public dev-set Pass@1 gain on the categories the package covered,
shared among the teachers that covered them) or ``eq3`` (Eq. 3's loss
difference on ``learning.reward_on``, shared by items used).
"""

from __future__ import annotations

from dataclasses import asdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Protocol

from knexa_node.audit.entry import OK, REFUSED, TIMED_OUT
from knexa_node.config import Config
from knexa_node.crypto import sha256
from knexa_node.daemon.cpm_link import CpmLink, describe
from knexa_node.daemon.learner import Learner
from knexa_node.daemon.round_machine import (
    Distilled, Event, ExchangeFailed, FeedbackReported, FetchFailed, PackageFetched,
)
from knexa_node.exchange.errors import ExchangeOutcome
from knexa_node.wire import Ack, Feedback, Message, PairingProposal
from knexa_node.wire.messages import MAX_FEEDBACK_ITEMS

if TYPE_CHECKING:  # the engine (torch) is loaded by the model load, after the ready line (learner.py)
    from knexa_node.learn.agent import DistillReport, ExchangeRequest, MultiDistillReport

# Feedback is retried this long past its proposal's expiry (the CPM's clock may lag ours; it refuses what is late).
CLOCK_SKEW_S = 30.0


def reward_outcome(answer: Message | None) -> str:
    """The audit outcome of a reward report: acknowledged, refused, or never answered."""
    if answer is None:
        return TIMED_OUT
    return OK if isinstance(answer, Ack) and answer.ok else REFUSED


class StudentSide(Protocol):
    """What a lesson needs of :class:`~knexa_node.daemon.exchanges.ExchangeService`."""

    async def fetch(self, proposal_envelope: bytes, proposal: PairingProposal, *, categories: tuple[str, ...] = (),
                    budget: int = 0) -> ExchangeOutcome: ...
    async def record_distillation(self, outcome: ExchangeOutcome, report: Any, *, error: str | None = None) -> Any: ...
    async def record_reward(self, proposal: PairingProposal, feedback: Feedback, *, outcome: str = ...) -> Any: ...


class Lessons:
    def __init__(self, learner: Learner, exchanges: StudentSide, cpm: CpmLink, config: Config,
                 on_event: Callable[..., None]) -> None:
        self.learner, self.exchanges, self.cpm, self.config, self.on_event = learner, exchanges, cpm, config, on_event
        self.counts = {"as_student": 0, "as_teacher": 0, "failed": 0, "bytes_received": 0}
        self.rewards: list[dict[str, Any]] = []
        self.competence: dict[str, float] = {}  # public dev-set Pass@1 per category, measured with the last profile
        self.request: ExchangeRequest | None = None  # what this round's requests ask teachers for (from competence)
        self._fetched: dict[bytes, ExchangeOutcome] = {}
        self._reports: dict[bytes, DistillReport] = {}
        self._fresh = False  # the competence was measured on the model as it is now (no distillation since)

    def measured(self, competence: dict[str, float], request: ExchangeRequest | None) -> None:
        """The round's competence (with the profile) and the request it makes: used until the next profile."""
        self.competence, self.request, self._fresh = competence, request, True

    async def fetch(self, proposal: PairingProposal, raw: bytes) -> Event:
        request = self.request
        outcome = await self.exchanges.fetch(raw, proposal, categories=request.categories if request else (),
                                             budget=request.budget if request else 0,
                                             held=request.held if request else ())
        if not outcome.ok:
            self.counts["failed"] += 1
            return FetchFailed(proposal.proposal_id)
        self.counts["as_student"] += 1
        self.counts["bytes_received"] += outcome.payload_size
        self._fetched[proposal.proposal_id] = outcome
        return PackageFetched(proposal.proposal_id)

    async def distil(self, proposals: Sequence[PairingProposal]) -> list[Event]:
        """Distil the fetched packages of ``proposals`` in one phase; one audited report per teacher."""
        outcomes = [self._fetched[p.proposal_id] for p in proposals]
        data, limit = self.learner.data, int(self.config.exchange.max_package_mb * 1024 * 1024)
        parcels = [(p.teacher, o.payload or b"") for p, o in zip(proposals, outcomes)]
        # The competence measured with the profile is the "before" of the phase while the model is unchanged.
        before = self.competence if self._fresh and self.competence else None
        self._fresh = False
        round_ = proposals[0].round if proposals else 0
        try:
            phase: MultiDistillReport = await self.learner.call(
                lambda agent: agent.distill_many(parcels, data.transfer, dev=data.dev, max_package_bytes=limit,
                                                 dev_competence=before),
                doing=f"distilling (round {round_}, {len(parcels)} package{'s' if len(parcels) != 1 else ''})")
        except Exception as exc:  # packages the learner cannot use: each audited, all reported as failed
            for outcome in outcomes:
                await self.exchanges.record_distillation(outcome, None, error=f"{type(exc).__name__}: {exc}")
            raise
        self.on_event("distil-phase", round=round_, packages=len(parcels), steps=phase.steps,
                      replay_steps=phase.replay_steps, kept=phase.kept,
                      seconds=round(phase.seconds, 2), teachers=[p.teacher for p in proposals])
        for proposal, outcome, report in zip(proposals, outcomes, phase.teachers):
            await self.exchanges.record_distillation(outcome, report)
            self._reports[proposal.proposal_id] = report
        return [Distilled(p.proposal_id) for p in proposals]

    def reward_of(self, report: DistillReport) -> tuple[float, float, float]:
        """(reward, loss before, loss after) as configured (``learning.reward``, ``learning.reward_on``)."""
        return reported_reward(report, self.config.learning.reward, self.config.learning.reward_on)

    async def report(self, proposal: PairingProposal, *, failed: bool) -> Event:
        """Send the lesson's reward, or (``failed``, or nothing to report) its failure."""
        pid = proposal.proposal_id
        outcome, report = self._fetched.pop(pid, None), self._reports.pop(pid, None)
        if failed or outcome is None or report is None:
            await self._send(Feedback.failure(pid, proposal.round), proposal)
            return FeedbackReported(pid)
        reward, before, after = self.reward_of(report)
        self.on_event("distilled", round=proposal.round, teacher=proposal.teacher, reward=round(reward, 5),
                      reward_kind=self.config.learning.reward, loss_before=round(before, 4),
                      loss_after=round(after, 4), items=report.items_used, items_failed=report.items_failed,
                      claims_failed=report.claims_failed, seconds=round(report.seconds, 2))
        feedback = Feedback(pid, proposal.round, reward, before, after, int(outcome.payload_size),
                            sha256(outcome.receipt_envelope), items_used=min(report.items_used, MAX_FEEDBACK_ITEMS),
                            items_failed=min(report.items_failed, MAX_FEEDBACK_ITEMS),
                            claims_failed=min(report.claims_failed, report.items_failed, MAX_FEEDBACK_ITEMS))
        answer = await self._send(feedback, proposal)
        accepted = isinstance(answer, Ack) and answer.ok
        await self.exchanges.record_reward(proposal, feedback, outcome=reward_outcome(answer))
        # The report's numbers first: its own "reward" (Eq. 3 on the private split) is not the one reported.
        self.rewards.append({**{k: v for k, v in asdict(report).items() if isinstance(v, (int, float))},
                             "round": proposal.round, "teacher": proposal.teacher, "reward": reward,
                             "reward_kind": self.config.learning.reward, "accepted": accepted})
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


def reported_reward(report: DistillReport, kind: str, on: str = "dev") -> tuple[float, float, float]:
    """(reward, loss before, loss after) of one teacher's report.

    ``kind`` "covered": the dev-set Pass@1 gain on the categories the package
    covered (Eq. 3 when it was not measured); else Eq. 3 on ``on`` ("dev",
    when measured, or the private "validation" split).
    """
    on_dev = on == "dev" and report.reward_dev is not None
    before = report.dev_loss_pre if on_dev else report.loss_pre
    after = report.dev_loss_post if on_dev else report.loss_post
    if kind == "covered" and report.reward_covered is not None:
        return float(report.reward_covered), float(before or 0.0), float(after or 0.0)
    reward = report.reward_dev if on_dev else report.reward
    return float(reward or 0.0), float(before or 0.0), float(after or 0.0)
