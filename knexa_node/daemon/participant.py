"""A node's part in the rounds: the trio driver of :class:`~knexa_node.daemon.round_machine.NodeRound`.

One round t, as this node lives it (DESIGN.md, "Protocol"):

1. ``RoundOpen(t)`` from the trusted CPM (gossip) starts the round.
2. Local epoch(s) on the private split; evaluation (Pass@1/5 on the local test
   set, loss on the private validation split and the public dev set, greedy
   Pass@1 per category on the public dev set: the competence); the profile
   and the competence go to the CPM as a signed ``Profile`` over ``/knexa/cpm``.
3. Proposals arrive on gossip, and by ``ProposalQuery`` polling when gossip
   missed them. Named as teacher: nothing to do (the exchange handler serves
   the student, answering the categories its request names). Named as
   student (of up to c teachers): fetch each sealed package with a targeted
   request (the weak categories of this round's competence), distil the
   round's packages together in one phase once all are here (or the rest
   given up), and send one signed ``Feedback`` per teacher with the reward
   ``learning.reward`` names; a failed exchange is reported too, so the round
   never waits on silence.
4. The agent's state is persisted at the end of the round.

The machine decides what happens next; this module only performs its
actions (network requests, learner calls, sleeps, logs) and feeds their
results back as events. The steps of one lesson (step 3 as student) are
:mod:`.lessons`. Every step is an event line and an audit entry;
every wait is bounded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from knexa_node.audit import log_path
from knexa_node.daemon.cpm_link import CpmLink, describe
from knexa_node.daemon.curve import CURVE_FILE, LearningCurve
from knexa_node.daemon.learner import Learner, evaluation_point
from knexa_node.daemon.lessons import Lessons, StudentSide
from knexa_node.daemon.role import RoleHost
from knexa_node.daemon.round_machine import (
    AbandonExchange, Action, CloseRound, Distil, Event, FetchPackage, GiveUp, ModelFailed, ModelLoaded, NodeRound,
    NoteProposal, PollAnswered, PollProposals, ProfileAccepted, ProfileRefused, ProposalSeen, ReportFeedback,
    RoundClosed, RoundLimits, RoundOpened, RoundProtocolError, SendProfile, ServePackage, StepFailed, TeachingFinished,
    Train, TrainingDone, WarmedUp, WarmUp,
)
from knexa_node.daemon.unfinished import report_unfinished
from knexa_node.exchange.errors import ExchangeOutcome
from knexa_node.net.protocols import PROPOSALS, topic
from knexa_node.wire import (
    Ack, Envelope, Message, PairingProposal, Profile, ProposalList, ProposalQuery, RoundOpen, WireError, open_envelope,
)

logger = logging.getLogger(__name__)
PAIRED_PHASES = ("paired", "closed", "unknown")  # ProposalList phases after which the CPM pairs no more


class Participant:
    def __init__(self, host: RoleHost, learner: Learner, exchanges: StudentSide, *,
                 limits: RoundLimits | None = None, clock: Callable[[], float] = time.time) -> None:
        self.host, self.learner, self.clock = host, learner, clock
        self.config = host.config
        self.cpm = CpmLink(host.net, host.signer, self.config.consortium.cpm, host.log.event, clock=clock)
        self.machine = NodeRound(me=host.signer.peer_id, limits=limits or RoundLimits())
        self.curve = LearningCurve(host.home.state_dir / CURVE_FILE)
        self.lessons = Lessons(learner, exchanges, self.cpm, self.config, host.log.event)
        self._nursery: trio.Nursery | None = None

    def install(self) -> None:
        # The daemon's RoundTracker already checks the CPM's signature and drops old rounds.
        self.host.rounds.add_listener(self._on_round)
        self.host.net.subscribe(topic(self.config.consortium.name, PROPOSALS), self._on_proposal)
        self.host.add_service(self.serve, name="rounds")
        self.host.add_status("learner", self.status)
        self.host.add_command("evaluate", self._cmd_evaluate)
        self.host.add_command("metrics", self._cmd_metrics)

    # --- events in ---------------------------------------------------------------------------------

    def feed(self, event: Event) -> None:
        """Hand ``event`` to the machine and perform what it answers."""
        for action in self.machine.handle(event, self.clock()):
            self._perform(action)

    def on_taught(self, outcome: ExchangeOutcome) -> None:
        """An exchange this node served as teacher ended: the machine closes it, the counts show it."""
        if outcome.ok:
            self.lessons.counts["as_teacher"] += 1
        try:
            self.feed(TeachingFinished(outcome.proposal_id))
        except RoundProtocolError as exc:  # served twice, or after the round moved on: nothing left to close
            logger.debug("teaching outcome not tracked: %s", exc)

    def _on_round(self, message: RoundOpen) -> None:
        self.feed(RoundOpened(message.round, message.deadline))

    async def _on_proposal(self, envelope: Envelope, message: Message, origin: str) -> None:
        if not isinstance(message, PairingProposal) or not self.cpm.trusts(envelope.sender):
            self.host.net.stats.drop("untrusted-proposal")
            return
        self.feed(ProposalSeen(message, envelope.to_bytes()))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            # A lesson a crash left unreported holds the CPM's round until the proposal expires: report it now.
            nursery.start_soon(report_unfinished, log_path(self.host.home), self.cpm, self.host.log.event)
            try:
                await self.learner.load()
            except Exception as exc:  # a model that does not load: visible in status and logs, the node still relays
                self.host.log.event("model-load-failed", error=f"{type(exc).__name__}: {exc}"[:500])
                self.feed(ModelFailed(f"{type(exc).__name__}: {exc}"))
            else:
                self.feed(ModelLoaded())
            await trio.sleep_forever()

    # --- actions out -------------------------------------------------------------------------------

    def _perform(self, action: Action) -> None:
        log = self.host.log.event
        if isinstance(action, NoteProposal):
            p = action.proposal
            log("proposal-received", round=p.round, role=action.role,
                peer_id=p.student if action.role == "teacher" else p.teacher, protocol=p.protocol)
        elif isinstance(action, ServePackage):
            pass  # the exchange handler serves the student when it dials; nothing to start here
        elif isinstance(action, GiveUp):
            log("round-failed", what=action.what, error=action.reason[:500])
        elif isinstance(action, AbandonExchange):
            log("exchange-abandoned", round=action.proposal.round, teacher=action.proposal.teacher, reason=action.reason)
        elif isinstance(action, WarmUp):
            self._round_task(self._warm_up())
        elif isinstance(action, Train):
            self.host.rounds.enter(action.round)
            self._round_task(self._train(action.round))
        elif isinstance(action, SendProfile):
            self._round_task(self._send_profile(action.round))
        elif isinstance(action, PollProposals):
            # A poll that fails is one without an answer (the machine keeps following).
            self._round_task(self._poll(action), failed=lambda error: PollAnswered(action.round, None))
        elif isinstance(action, CloseRound):
            self._round_task(self._close(action))
        elif isinstance(action, FetchPackage):
            self._lesson_task([action.proposal], self.lessons.fetch(action.proposal, action.raw))
        elif isinstance(action, Distil):
            self._lesson_task(list(action.proposals), self.lessons.distil(action.proposals))
        elif isinstance(action, ReportFeedback):
            self._lesson_task([action.proposal], self.lessons.report(action.proposal, failed=action.failed))
        else:
            raise TypeError(f"no driver for {action!r}")

    def _spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is None:
            raise RuntimeError("the round driver is not running")
        self._nursery.start_soon(work)

    def _round_task(self, work: Awaitable[Event], failed: Callable[[str], Event] | None = None) -> None:
        """Run one step of the round; its result, or ``failed(error)`` (logged), is the next event."""
        round_ = self.machine.round
        on_error = failed or (lambda error: StepFailed(round_, error))

        async def run() -> None:
            try:
                event = await work
            except Exception as exc:  # a failure ends that round only, never the daemon
                logger.exception("round %s: a step failed", round_)
                event = on_error(f"{type(exc).__name__}: {exc}")
            self.feed(event)
        self._spawn(run)

    def _lesson_task(self, proposals: list[PairingProposal], work: Awaitable[Event | list[Event]]) -> None:
        """Run one lesson step for ``proposals`` (several: one distillation phase); feed what it returns."""
        async def run() -> None:
            try:
                done = await work
                events = done if isinstance(done, list) else [done]
            except Exception as exc:  # distillation or reporting failed: logged and reported, never fatal
                events = [self.lessons.failed(proposal, exc) for proposal in proposals]
            for event in events:
                self.feed(event)
        self._spawn(run)

    # --- the round's steps -------------------------------------------------------------------------

    async def _warm_up(self) -> Event:
        epochs = self.config.learning.warmup_epochs
        if epochs and not self.curve.has("warm-up"):
            self.host.log.event("warm-up", epochs=epochs)
            for _ in range(epochs):
                await self.learner.call(lambda agent: agent.local_epoch(), doing="warm-up")
            await self._evaluate(0, "warm-up")
            await self.learner.call(lambda agent: agent.save(), doing="saving")
        elif not self.curve.points:
            await self._evaluate(0, "initial")
        return WarmedUp()

    async def _train(self, round_: int) -> Event:
        self.host.log.event("round-start", round=round_)
        for _ in range(self.config.learning.epochs_per_round):
            report = await self.learner.call(lambda agent: agent.local_epoch(), doing=f"local epoch (round {round_})")
            self.host.log.event("local-epoch", round=round_, steps=report.steps, loss=round(report.mean_loss, 4),
                                seconds=round(report.seconds, 2))
        return TrainingDone(round_)

    async def _send_profile(self, round_: int) -> Event:
        metrics = await self._evaluate(round_, "after-local")
        vector = await self.learner.call(lambda agent: agent.profile(
            pass1=metrics["pass1"], pass5=metrics["pass5"], val_loss=metrics["val_loss"], dev_loss=metrics["dev_loss"]),
            doing="profile")
        agent = self.learner.agent
        if agent is None:
            raise RuntimeError("the learner has no agent")
        # Public dev-set Pass@1 per category: sent with the profile, and what this round's requests ask for.
        dev = self.learner.data.dev
        competence = await self.learner.call(lambda agent: agent.competence(dev), doing="competence") if dev else {}
        self.lessons.measured(competence, agent.exchange_request(competence) if competence else None)
        profile = Profile.with_competence(
            competence, round=round_, vector=tuple(float(x) for x in vector), model_type=agent.model_type,
            tokenizer_id=agent.tokenizer_fingerprint(), addrs=tuple(self.host.net.dialable_addrs()))
        answer = await self.cpm.ask(profile)
        if not (isinstance(answer, Ack) and answer.ok):
            self.host.log.event("profile-refused", round=round_, answer=describe(answer))
            return ProfileRefused(round_, describe(answer))
        self.host.log.event("profile-sent", round=round_)
        return ProfileAccepted(round_)

    async def _poll(self, action: PollProposals) -> Event:
        """Ask the CPM which proposals of the round name this node (catch-up for gossip) and whether it paired."""
        await trio.sleep(max(0.0, action.at - self.clock()))
        answer = await self.cpm.ask(ProposalQuery(round=action.round))
        if not isinstance(answer, ProposalList):
            return PollAnswered(action.round, None)
        for raw in answer.proposals:
            try:
                envelope, message = open_envelope(raw, expect=(PairingProposal,))
            except WireError:
                continue
            if isinstance(message, PairingProposal) and self.cpm.trusts(envelope.sender) and message.round == action.round:
                self.feed(ProposalSeen(message, raw))
        return PollAnswered(action.round, answer.phase in PAIRED_PHASES)

    async def _close(self, action: CloseRound) -> Event:
        await self.learner.call(lambda agent: agent.finish_round(), doing="saving")
        if action.completed:
            started = self.machine.started_at or self.clock()
            self.host.log.event("round-done", round=action.round, seconds=round(self.clock() - started, 1))
        return RoundClosed(action.round)

    # --- evaluation and status ---------------------------------------------------------------------

    async def _evaluate(self, round_: int, phase: str) -> dict[str, Any]:
        data = self.learner.data
        metrics = await self.learner.call(lambda agent: evaluation_point(agent, data, round_, phase),
                                          doing=f"evaluating ({phase})")
        self.curve.add(metrics)
        self.host.log.event("evaluated", round=round_, phase=phase, pass1=round(metrics["pass1"], 4),
                            val_loss=round(metrics["val_loss"], 4), dev_loss=round(metrics["dev_loss"], 4))
        return metrics

    async def _cmd_evaluate(self, args: dict[str, Any]) -> Any:
        return await self._evaluate(self.host.rounds.current or 0, str(args.get("phase", "final"))[:32])

    async def _cmd_metrics(self, args: dict[str, Any]) -> Any:
        return {"metrics": self.curve.points, "rewards": self.lessons.rewards, "counts": self.lessons.counts}

    def status(self) -> dict[str, Any]:
        machine = self.machine
        running = self.clock() - machine.started_at if machine.started_at and machine.phase != "waiting" else 0.0
        return {
            "round": self.host.rounds.current or 0,
            "phase": machine.phase,
            "round_running_s": round(running, 1),
            "learner": self.learner.status(),
            "last_metrics": self.curve.last,
            "counts": dict(self.lessons.counts),
            "rewards": self.lessons.rewards[-20:],
        }
