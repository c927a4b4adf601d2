"""The node's half of a round as a pure state machine: events in, actions out, no I/O (h11 style).

    machine = NodeRound(me=peer_id)
    for action in machine.handle(RoundOpened(round=3, deadline=t), now=time.time()):
        ...                                   # the trio driver performs it (participant.py)

Everything that moves the round's state lives in this file: the round's
states (:class:`RoundState`) with one literal table (:data:`ROUND_TRANSITIONS`),
and each exchange's steps (:class:`Step`) with another (:data:`STEP_TRANSITIONS`).
An event the tables do not allow raises :class:`RoundProtocolError`; an event
that is merely late (a poll answer for a round the node has left, a proposal
of a past round, an announcement it already follows) is ignored, since the
network delivers those in any order.

A round: ``RoundOpened`` -> ``Train`` -> ``TrainingDone`` -> ``SendProfile``
-> ``ProfileAccepted`` -> exchanges and ``PollProposals`` until the CPM has
paired the round and every exchange this node is student in is done ->
``CloseRound`` -> ``RoundClosed`` -> waiting. The node may be student of
several teachers and teacher of several students in one round: exchanges are
kept per proposal, in both roles. As student, the round's packages are
collected (step ``FETCHED``) until none is still being fetched and the CPM
has paired the round, then distilled together in ONE phase (one ``Distil``
action naming them all), and each is reported on its own. Time comes in as
``now`` with every event: a round the CPM does not pair by its announced
deadline plus ``pairing_grace_s`` is given up; a package still not fetched
``collect_s`` after the first one of its round arrived (or when one that
arrived is ``report_margin_s`` from its proposal's expiry) is abandoned and
the others are distilled without it; and a student exchange still running
``exchange_limit_s`` after it started no longer holds the round. An
abandoned exchange's late results are still reported (a late package is
distilled in a phase of its own).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from knexa_node.wire import PairingProposal

Role = Literal["teacher", "student"]


class RoundProtocolError(Exception):
    """An event that the node's round cannot take in its present state (a driver bug, never network input)."""

    def __init__(self, state: object, event: object, why: str = "not allowed") -> None:
        super().__init__(f"{type(event).__name__} in {state}: {why}")
        self.state, self.event = state, event


class RoundState(enum.Enum):
    STARTING = "starting"      # the model is loading
    WARMING_UP = "warming-up"  # warm-up epochs or the first evaluation
    NO_MODEL = "no-model"      # the model did not load: the node only relays
    WAITING = "waiting"        # between rounds
    TRAINING = "training"      # local epochs of the round
    PROFILING = "profiling"    # evaluation, profile, the CPM's answer
    FOLLOWING = "following"    # profiled: exchanges and polls until the round is paired and done
    CLOSING = "closing"        # the agent's state is being saved


class Step(enum.Enum):
    """One exchange's progress, per proposal and role."""

    QUEUED = "queued"          # seen, waiting for this node's profile to be accepted in that round
    SERVING = "serving"        # teacher: the exchange handler serves the student when it dials
    FETCHING = "fetching"      # student: fetching the package
    FETCHED = "fetched"        # student: the package is here, waiting for the round's others
    DISTILLING = "distilling"  # student: distilling it (with the round's other packages, in one phase)
    REPORTING = "reporting"    # student: sending the feedback (the reward, or the failure)
    DONE = "done"


# --- events (in) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelLoaded:
    pass


@dataclass(frozen=True)
class ModelFailed:
    error: str


@dataclass(frozen=True)
class WarmedUp:
    pass


@dataclass(frozen=True)
class RoundOpened:
    """The trusted CPM announced ``round``; it pairs no later than ``deadline`` (unix seconds)."""

    round: int
    deadline: float


@dataclass(frozen=True)
class TrainingDone:
    round: int


@dataclass(frozen=True)
class ProfileAccepted:
    round: int


@dataclass(frozen=True)
class ProfileRefused:
    round: int
    reason: str


@dataclass(frozen=True)
class PollAnswered:
    """The CPM answered a proposal query (``paired``: it has paired the round), or never answered (None)."""

    round: int
    paired: bool | None


@dataclass(frozen=True)
class StepFailed:
    """The driver's work for the round (warm-up, training, profile, saving) raised (a failed poll is no answer)."""

    round: int
    error: str


@dataclass(frozen=True)
class RoundClosed:
    round: int


@dataclass(frozen=True)
class Tick:
    """Time passes: only the deadlines are checked against ``now``.

    Every event brings ``now``; the trio driver's poll answers bring it each
    second while a round is followed, so it needs no ticks of its own.
    """


@dataclass(frozen=True)
class ProposalSeen:
    """A proposal from the trusted CPM (gossip or a poll); ``raw`` is its signed envelope."""

    proposal: PairingProposal
    raw: bytes


@dataclass(frozen=True)
class PackageFetched:
    proposal_id: bytes


@dataclass(frozen=True)
class FetchFailed:
    proposal_id: bytes


@dataclass(frozen=True)
class Distilled:
    proposal_id: bytes


@dataclass(frozen=True)
class ExchangeFailed:
    """Distilling or reporting raised: the exchange is reported as failed."""

    proposal_id: bytes
    error: str


@dataclass(frozen=True)
class FeedbackReported:
    proposal_id: bytes


@dataclass(frozen=True)
class TeachingFinished:
    proposal_id: bytes


Event = (ModelLoaded | ModelFailed | WarmedUp | RoundOpened | TrainingDone | ProfileAccepted | ProfileRefused
         | PollAnswered | StepFailed | RoundClosed | Tick | ProposalSeen | PackageFetched | FetchFailed | Distilled
         | ExchangeFailed | FeedbackReported | TeachingFinished)


# Moves the machine makes on its own, listed in the table like the others.
@dataclass(frozen=True)
class _Begin:
    """A newer round is pending while the node waits."""


@dataclass(frozen=True)
class _Complete:
    """Paired, and every student exchange of the round done (or given up as a straggler)."""


@dataclass(frozen=True)
class _Superseded:
    """The CPM announced a later round while this one was followed."""


@dataclass(frozen=True)
class _PairingOverdue:
    """The round's deadline plus the grace passed and the CPM never said it paired."""


@dataclass(frozen=True)
class _Start:
    """A queued student exchange of the round becomes active (the profile was accepted)."""


@dataclass(frozen=True)
class _Serve:
    """A queued teacher exchange of the round becomes active."""


@dataclass(frozen=True)
class _Gather:
    """The round's packages are all here (or the rest given up): they are distilled together."""


# --- actions (out) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmUp:
    pass


@dataclass(frozen=True)
class Train:
    round: int


@dataclass(frozen=True)
class SendProfile:
    round: int


@dataclass(frozen=True)
class PollProposals:
    """Ask the CPM for the round's proposals, at ``at`` (the driver sleeps until then)."""

    round: int
    at: float


@dataclass(frozen=True)
class NoteProposal:
    """A proposal names this node (first sight)."""

    proposal: PairingProposal
    role: Role


@dataclass(frozen=True)
class ServePackage:
    """Teacher: expect ``proposal.student``; the exchange handler serves it when it dials."""

    proposal: PairingProposal


@dataclass(frozen=True)
class FetchPackage:
    proposal: PairingProposal
    raw: bytes


@dataclass(frozen=True)
class Distil:
    """Distil these fetched packages (one round's, one per teacher) in one phase; report each on its own."""

    proposals: tuple[PairingProposal, ...]


@dataclass(frozen=True)
class ReportFeedback:
    """Send the exchange's feedback: its reward, or (``failed``) the failure report."""

    proposal: PairingProposal
    failed: bool


@dataclass(frozen=True)
class AbandonExchange:
    """A straggler: the round stops waiting for this exchange (its late results are still reported)."""

    proposal: PairingProposal
    reason: str


@dataclass(frozen=True)
class GiveUp:
    """The round's work ends early; ``what`` names it for the log ("warm-up", "round 3")."""

    round: int
    what: str
    reason: str


@dataclass(frozen=True)
class CloseRound:
    """Save the agent; ``completed`` is False for a round refused or given up."""

    round: int
    completed: bool


Action = (WarmUp | Train | SendProfile | PollProposals | NoteProposal | ServePackage | FetchPackage | Distil
          | ReportFeedback | AbandonExchange | GiveUp | CloseRound)

S = RoundState

# The round's transitions: state -> {event type -> next state}. A pair not listed is illegal.
ROUND_TRANSITIONS: dict[RoundState, dict[type, RoundState]] = {
    S.STARTING: {ModelLoaded: S.WARMING_UP, ModelFailed: S.NO_MODEL, RoundOpened: S.STARTING},
    S.WARMING_UP: {WarmedUp: S.WAITING, StepFailed: S.WAITING, RoundOpened: S.WARMING_UP},
    S.NO_MODEL: {RoundOpened: S.NO_MODEL},
    S.WAITING: {RoundOpened: S.TRAINING, _Begin: S.TRAINING},
    S.TRAINING: {TrainingDone: S.PROFILING, StepFailed: S.WAITING, RoundOpened: S.TRAINING},
    S.PROFILING: {ProfileAccepted: S.FOLLOWING, ProfileRefused: S.CLOSING, StepFailed: S.WAITING,
                  RoundOpened: S.PROFILING},
    S.FOLLOWING: {PollAnswered: S.FOLLOWING, RoundOpened: S.CLOSING,
                  _Complete: S.CLOSING, _Superseded: S.CLOSING, _PairingOverdue: S.CLOSING},
    S.CLOSING: {RoundClosed: S.WAITING, StepFailed: S.WAITING, RoundOpened: S.CLOSING},
}
# In every state: Tick, ProposalSeen and the exchange events (exchanges outlive rounds) leave it unchanged.
ANY_STATE = (Tick, ProposalSeen, PackageFetched, FetchFailed, Distilled, ExchangeFailed, FeedbackReported,
             TeachingFinished)

# One exchange's steps: step -> {event type -> next step}.
STEP_TRANSITIONS: dict[Step, dict[type, Step]] = {
    Step.QUEUED: {_Start: Step.FETCHING, _Serve: Step.SERVING, TeachingFinished: Step.DONE},
    Step.SERVING: {TeachingFinished: Step.DONE},
    Step.FETCHING: {PackageFetched: Step.FETCHED, FetchFailed: Step.REPORTING, ExchangeFailed: Step.REPORTING},
    Step.FETCHED: {_Gather: Step.DISTILLING, ExchangeFailed: Step.REPORTING},
    Step.DISTILLING: {Distilled: Step.REPORTING, ExchangeFailed: Step.REPORTING},
    Step.REPORTING: {FeedbackReported: Step.DONE, ExchangeFailed: Step.REPORTING},
    Step.DONE: {},
}

ExchangeEvent = PackageFetched | FetchFailed | Distilled | ExchangeFailed | FeedbackReported | TeachingFinished


@dataclass(frozen=True)
class RoundLimits:
    """When the node stops waiting. Generous: the CPM's own deadline and the exchange timeouts come first."""

    poll_s: float = 1.0
    pairing_grace_s: float = 300.0
    exchange_limit_s: float | None = 3600.0
    collect_s: float = 600.0        # the longest a fetched package waits for the round's others
    report_margin_s: float = 60.0   # distil no later than this before a fetched proposal expires


@dataclass
class Exchange:
    """One proposal naming this node, in one role."""

    proposal: PairingProposal
    raw: bytes
    role: Role
    step: Step = Step.QUEUED
    started_at: float | None = None
    fetched_at: float | None = None
    abandoned: bool = False

    @property
    def waited_on(self) -> bool:
        """Does this exchange hold its round open?"""
        return self.role == "student" and self.step is not Step.DONE and not self.abandoned


@dataclass
class NodeRound:
    """One node's rounds, from model load on. Not thread-safe; one driver feeds it."""

    me: str
    limits: RoundLimits = field(default_factory=RoundLimits)
    state: RoundState = RoundState.STARTING
    round: int = 0                   # the round this node works in (0: none yet)
    deadline: float | None = None    # the CPM's pairing deadline for ``round``
    started_at: float | None = None  # when the node began the round's work
    pending: tuple[int, float] | None = None  # a later announced round (round, deadline), not yet begun
    paired: bool = False             # the CPM said it paired ``round``
    completed: bool = False          # the round being closed reached its end (not refused, not given up)
    exchanges: dict[bytes, Exchange] = field(default_factory=dict)

    # --- reading ---------------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        """The status word (``learner.phase``) that the CLI and the demo read."""
        if self.state is RoundState.FOLLOWING or (self.state is RoundState.CLOSING and self.completed):
            return "exchanging" if any(x.started_at is not None for x in self.of_round("student")) else "profiled"
        return _PHASES[self.state]

    def of_round(self, role: Role) -> list[Exchange]:
        return [x for x in self.exchanges.values() if x.role == role and x.proposal.round == self.round]

    # --- the one entry point -------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Take ``event`` at time ``now``; return what the driver must do, in order."""
        if isinstance(event, (_Begin, _Complete, _Superseded, _PairingOverdue, _Start, _Serve, _Gather)):
            raise RoundProtocolError(self.state, event, "an internal move, not an event")
        actions: list[Action] = []
        if isinstance(event, ANY_STATE):
            self._exchange_event(event, now, actions)
        elif self._late(event):
            return []
        else:
            self._round_event(event, now, actions)
        self._follow_up(now, actions)
        return actions

    # --- round events --------------------------------------------------------------------------

    def _late(self, event: Event) -> bool:
        if isinstance(event, RoundOpened):
            return event.round <= max(self.round, self.pending[0] if self.pending else 0)
        if isinstance(event, PollAnswered):  # a poll in flight when the round closed or failed
            return event.round != self.round or self.state in (RoundState.CLOSING, RoundState.WAITING)
        return False

    def _move(self, event: object) -> None:
        target = ROUND_TRANSITIONS[self.state].get(type(event))
        if target is None:
            raise RoundProtocolError(self.state, event)
        self.state = target

    def _round_event(self, event: Event, now: float, actions: list[Action]) -> None:
        stamped = getattr(event, "round", None)
        if not isinstance(event, (RoundOpened, PollAnswered)) and stamped is not None and stamped != self.round:
            raise RoundProtocolError(self.state, event, f"the node works in round {self.round}")
        before = self.state
        self._move(event)
        if isinstance(event, ModelLoaded):
            actions.append(WarmUp())
        elif isinstance(event, RoundOpened):
            self.pending = (event.round, event.deadline)
            if before is RoundState.WAITING:
                self._begin(now, actions)
            elif before is RoundState.FOLLOWING:
                self._close(completed=True, actions=actions)
        elif isinstance(event, TrainingDone):
            actions.append(SendProfile(self.round))
        elif isinstance(event, ProfileAccepted):
            for exchange in self._queued_of_round():
                self._start(exchange, now, actions)
            actions.append(PollProposals(self.round, at=now))
        elif isinstance(event, ProfileRefused):
            self._close(completed=False, actions=actions)
        elif isinstance(event, PollAnswered):
            self.paired = self.paired or bool(event.paired)
            if not self._complete():
                actions.append(PollProposals(self.round, at=now + self.limits.poll_s))
        elif isinstance(event, StepFailed):
            what = "warm-up" if before is RoundState.WARMING_UP else f"round {self.round}"
            actions.append(GiveUp(self.round, what, event.error))

    def _begin(self, now: float, actions: list[Action]) -> None:
        pending = self.pending
        if pending is None:  # unreachable: _Begin is only made with a pending round
            raise RoundProtocolError(self.state, _Begin(), "no pending round")
        self.round, self.deadline = pending
        self.pending, self.paired, self.completed, self.started_at = None, False, False, now
        # Exchanges of past rounds are forgotten once done; running ones finish (their results are still reported).
        self.exchanges = {pid: x for pid, x in self.exchanges.items()
                          if x.proposal.round >= self.round or x.step is not Step.DONE}
        actions.append(Train(self.round))

    def _close(self, *, completed: bool, actions: list[Action]) -> None:
        self.completed = completed
        actions.append(CloseRound(self.round, completed))

    def _follow_up(self, now: float, actions: list[Action]) -> None:
        """The moves the machine makes on its own after each event, until none applies."""
        self._stragglers(now, actions)
        self._gather(now, actions)
        if self.state is RoundState.WAITING and self.pending is not None and self.pending[0] > self.round:
            self._move(_Begin())
            self._begin(now, actions)
        elif self.state is RoundState.FOLLOWING:
            if self.pending is not None:
                self._move(_Superseded())
                self._close(completed=True, actions=actions)
            elif self._complete():
                self._move(_Complete())
                self._close(completed=True, actions=actions)
            elif not self.paired and self.deadline is not None and now > self.deadline + self.limits.pairing_grace_s:
                self._move(_PairingOverdue())
                actions.append(GiveUp(self.round, f"round {self.round}",
                                      f"the CPM did not pair round {self.round} within {self.limits.pairing_grace_s:g} s "
                                      "of its deadline"))
                self._close(completed=False, actions=actions)

    def _complete(self) -> bool:
        return self.paired and not any(x.waited_on for x in self.of_round("student"))

    def _stragglers(self, now: float, actions: list[Action]) -> None:
        limit = self.limits.exchange_limit_s
        if limit is None:
            return
        for exchange in self.exchanges.values():
            if exchange.waited_on and exchange.started_at is not None and now > exchange.started_at + limit:
                exchange.abandoned = True
                actions.append(AbandonExchange(exchange.proposal, f"still {exchange.step.value} after {limit:g} s"))

    def _gather(self, now: float, actions: list[Action]) -> None:
        """Distil each round's fetched packages together once nothing more is coming (or waiting is over)."""
        rounds = sorted({x.proposal.round for x in self.exchanges.values()
                         if x.role == "student" and x.step is Step.FETCHED})
        for round_ in rounds:
            group = [x for x in self.exchanges.values() if x.role == "student" and x.proposal.round == round_]
            ready = [x for x in group if x.step is Step.FETCHED]
            # Queued ones start only with an accepted profile, before any package of the round is fetched.
            coming = [x for x in group if x.step is Step.FETCHING and not x.abandoned]
            due = self._collect_due(ready, now)
            if coming and due:
                for exchange in coming:
                    exchange.abandoned = True
                    actions.append(AbandonExchange(exchange.proposal, f"package not here {self.limits.collect_s:g} s "
                                                   "after the round's first (or its proposals expire soon): "
                                                   "the others are distilled without it"))
                coming = []
            # In the round being followed, the CPM's "paired" says every proposal naming this node is known;
            # a round no longer followed learns of no more.
            all_known = round_ != self.round or self.paired or self.state is not RoundState.FOLLOWING
            if not coming and (all_known or due):
                for exchange in ready:
                    self._step(exchange, _Gather())
                actions.append(Distil(tuple(x.proposal for x in ready)))

    def _collect_due(self, ready: list[Exchange], now: float) -> bool:
        first = min(now if x.fetched_at is None else x.fetched_at for x in ready)
        expires = min(x.proposal.expires for x in ready)
        return now >= first + self.limits.collect_s or now >= expires - self.limits.report_margin_s

    # --- exchanges -----------------------------------------------------------------------------

    def _queued_of_round(self) -> list[Exchange]:
        return [x for x in self.exchanges.values() if x.step is Step.QUEUED and x.proposal.round == self.round]

    def _start(self, exchange: Exchange, now: float, actions: list[Action]) -> None:
        exchange.started_at = now
        if exchange.role == "teacher":
            self._step(exchange, _Serve())
            actions.append(ServePackage(exchange.proposal))
        else:
            self._step(exchange, _Start())
            actions.append(FetchPackage(exchange.proposal, exchange.raw))

    def _step(self, exchange: Exchange, event: object) -> None:
        target = STEP_TRANSITIONS[exchange.step].get(type(event))
        if target is None:
            raise RoundProtocolError(exchange.step, event, f"exchange {exchange.proposal.proposal_id.hex()[:12]}")
        exchange.step = target

    def _exchange_event(self, event: Event, now: float, actions: list[Action]) -> None:
        if isinstance(event, Tick):
            return
        if isinstance(event, ProposalSeen):
            self._proposal(event, now, actions)
            return
        exchange = self.exchanges.get(getattr(event, "proposal_id", b""))
        if exchange is None and isinstance(event, TeachingFinished):
            return  # the exchange handler serves proposals this node never saw on gossip: nothing to track
        if exchange is None:
            raise RoundProtocolError(self.state, event, "no such exchange")
        if exchange.role == "teacher" and not isinstance(event, TeachingFinished):
            raise RoundProtocolError(exchange.step, event, "this node is the teacher of that exchange")
        self._step(exchange, event)
        if isinstance(event, PackageFetched):
            exchange.fetched_at = now  # _gather distils it with the round's others
        elif isinstance(event, (FetchFailed, ExchangeFailed)):
            actions.append(ReportFeedback(exchange.proposal, failed=True))
        elif isinstance(event, Distilled):
            actions.append(ReportFeedback(exchange.proposal, failed=False))

    def _proposal(self, event: ProposalSeen, now: float, actions: list[Action]) -> None:
        proposal = event.proposal
        if self.me not in (proposal.teacher, proposal.student) or proposal.proposal_id in self.exchanges:
            return
        if proposal.round < self.round:
            return  # a past round's proposal, seen late
        role: Role = "teacher" if proposal.teacher == self.me else "student"
        exchange = Exchange(proposal, event.raw, role)
        self.exchanges[proposal.proposal_id] = exchange
        actions.append(NoteProposal(proposal, role))
        if self.state is RoundState.FOLLOWING and proposal.round == self.round:
            self._start(exchange, now, actions)


_PHASES = {
    RoundState.STARTING: "waiting",
    RoundState.WARMING_UP: "warm-up",
    RoundState.NO_MODEL: "no-model",
    RoundState.WAITING: "waiting",
    RoundState.TRAINING: "training",
    RoundState.PROFILING: "evaluating",
    RoundState.CLOSING: "waiting",
}
