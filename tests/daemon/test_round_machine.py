"""The node's round machine in memory: every legal path, every illegal event, event orders, deadlines (no I/O)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knexa_node.daemon.round_machine import (
    ANY_STATE,
    ROUND_TRANSITIONS,
    STEP_TRANSITIONS,
    AbandonExchange,
    CloseRound,
    Distil,
    Distilled,
    ExchangeFailed,
    FeedbackReported,
    FetchFailed,
    FetchPackage,
    GiveUp,
    ModelFailed,
    ModelLoaded,
    NodeRound,
    NoteProposal,
    PackageFetched,
    PollAnswered,
    PollProposals,
    ProfileAccepted,
    ProfileRefused,
    ProposalSeen,
    ReportFeedback,
    RoundClosed,
    RoundLimits,
    RoundOpened,
    RoundProtocolError,
    RoundState,
    SendProfile,
    ServePackage,
    Step,
    StepFailed,
    TeachingFinished,
    Tick,
    Train,
    TrainingDone,
    WarmedUp,
    WarmUp,
)
from knexa_node.wire import PairingProposal

ME = "me"
S = RoundState
LIMITS = RoundLimits(poll_s=1.0, pairing_grace_s=30.0, exchange_limit_s=60.0)
PHASES = {"waiting", "warm-up", "no-model", "training", "evaluating", "profiled", "exchanging"}


def proposal(round_: int, teacher: str, student: str, n: int = 0) -> PairingProposal:
    return PairingProposal(proposal_id=bytes([round_ % 256, n % 256]) * 8, round=round_, teacher=teacher,
                           student=student, protocol="text", context=(0.0,), score=0.5, expires=1e9)


def seen(p: PairingProposal) -> ProposalSeen:
    return ProposalSeen(p, b"envelope:" + p.proposal_id)


def waiting(limits: RoundLimits = LIMITS) -> NodeRound:
    machine = NodeRound(me=ME, limits=limits)
    assert machine.handle(ModelLoaded(), 0) == [WarmUp()]
    assert machine.handle(WarmedUp(), 0) == []
    assert machine.state is S.WAITING and machine.phase == "waiting"
    return machine


def following(round_: int = 1, now: float = 10.0, deadline: float = 100.0) -> NodeRound:
    machine = waiting()
    machine.handle(RoundOpened(round_, deadline), now)
    machine.handle(TrainingDone(round_), now)
    assert machine.handle(ProfileAccepted(round_), now) == [PollProposals(round_, at=now)]
    return machine


def in_state(state: RoundState) -> NodeRound:
    """A machine brought to ``state`` in round 1 by legal events."""
    machine = NodeRound(me=ME, limits=LIMITS)
    path = {
        S.STARTING: [], S.WARMING_UP: [ModelLoaded()], S.NO_MODEL: [ModelFailed("boom")],
        S.WAITING: [ModelLoaded(), WarmedUp()],
        S.TRAINING: [ModelLoaded(), WarmedUp(), RoundOpened(1, 100.0)],
        S.PROFILING: [ModelLoaded(), WarmedUp(), RoundOpened(1, 100.0), TrainingDone(1)],
        S.FOLLOWING: [ModelLoaded(), WarmedUp(), RoundOpened(1, 100.0), TrainingDone(1), ProfileAccepted(1)],
        S.CLOSING: [ModelLoaded(), WarmedUp(), RoundOpened(1, 100.0), TrainingDone(1), ProfileRefused(1, "no")],
    }[state]
    for event in path:
        machine.handle(event, 10.0)
    assert machine.state is state
    return machine


# --- legal paths ---------------------------------------------------------------------------------


def test_a_round_without_proposals_trains_profiles_polls_and_closes():
    machine = waiting()
    assert machine.handle(RoundOpened(1, 100.0), 5.0) == [Train(1)]
    assert (machine.state, machine.phase, machine.round, machine.started_at) == (S.TRAINING, "training", 1, 5.0)
    assert machine.handle(TrainingDone(1), 6.0) == [SendProfile(1)]
    assert machine.phase == "evaluating"
    assert machine.handle(ProfileAccepted(1), 7.0) == [PollProposals(1, at=7.0)]
    assert machine.phase == "profiled"
    assert machine.handle(PollAnswered(1, paired=False), 8.0) == [PollProposals(1, at=9.0)]
    assert machine.handle(PollAnswered(1, paired=None), 9.0) == [PollProposals(1, at=10.0)]
    assert machine.handle(PollAnswered(1, paired=True), 10.0) == [CloseRound(1, completed=True)]
    assert machine.state is S.CLOSING and machine.phase == "profiled"
    assert machine.handle(RoundClosed(1), 11.0) == []
    assert machine.state is S.WAITING and machine.phase == "waiting" and machine.round == 1


def test_a_student_of_two_teachers_and_teacher_of_one_waits_for_its_own_lessons_only():
    machine = waiting()
    machine.handle(RoundOpened(1, 100.0), 0.0)
    first, second, mine = proposal(1, "t1", ME, 1), proposal(1, "t2", ME, 2), proposal(1, ME, "s1", 3)
    # Seen while training: noted, queued until the profile is accepted.
    assert machine.handle(seen(first), 1.0) == [NoteProposal(first, "student")]
    assert machine.handle(seen(mine), 1.0) == [NoteProposal(mine, "teacher")]
    assert machine.handle(seen(first), 1.0) == []  # the same proposal again (poll after gossip)
    machine.handle(TrainingDone(1), 2.0)
    actions = machine.handle(ProfileAccepted(1), 3.0)
    assert actions == [FetchPackage(first, b"envelope:" + first.proposal_id), ServePackage(mine), PollProposals(1, at=3.0)]
    assert machine.phase == "exchanging"
    assert machine.handle(seen(second), 4.0) == [NoteProposal(second, "student"),
                                                 FetchPackage(second, b"envelope:" + second.proposal_id)]
    assert machine.handle(PollAnswered(1, paired=True), 5.0) == [PollProposals(1, at=6.0)]  # lessons pending
    assert machine.handle(PackageFetched(first.proposal_id), 6.0) == []  # waits for the round's other package
    assert machine.exchanges[first.proposal_id].step is Step.FETCHED
    assert machine.handle(FetchFailed(second.proposal_id), 6.0) == [ReportFeedback(second, failed=True),
                                                                     Distil((first,))]
    assert machine.handle(Distilled(first.proposal_id), 7.0) == [ReportFeedback(first, failed=False)]
    assert machine.handle(FeedbackReported(second.proposal_id), 8.0) == []
    assert machine.handle(FeedbackReported(first.proposal_id), 9.0) == [CloseRound(1, completed=True)]
    assert machine.exchanges[mine.proposal_id].step is Step.SERVING  # teaching never holds the round
    assert machine.handle(TeachingFinished(mine.proposal_id), 9.0) == []
    assert machine.exchanges[mine.proposal_id].step is Step.DONE


def test_a_students_packages_are_distilled_together_once_all_are_here():
    machine = following()
    first, second = proposal(1, "t1", ME, 1), proposal(1, "t2", ME, 2)
    machine.handle(seen(first), 11.0)
    machine.handle(seen(second), 11.0)
    machine.handle(PollAnswered(1, True), 12.0)
    assert machine.handle(PackageFetched(second.proposal_id), 13.0) == []
    assert machine.handle(PackageFetched(first.proposal_id), 14.0) == [Distil((first, second))]
    assert {x.step for x in machine.exchanges.values()} == {Step.DISTILLING}
    assert machine.handle(Distilled(first.proposal_id), 20.0) == [ReportFeedback(first, failed=False)]
    assert machine.handle(Distilled(second.proposal_id), 20.0) == [ReportFeedback(second, failed=False)]
    machine.handle(FeedbackReported(first.proposal_id), 21.0)
    assert machine.handle(FeedbackReported(second.proposal_id), 21.0) == [CloseRound(1, completed=True)]


def test_a_package_that_does_not_come_is_abandoned_and_the_others_are_distilled():
    limits = RoundLimits(poll_s=1.0, pairing_grace_s=30.0, exchange_limit_s=None, collect_s=100.0)
    machine = waiting(limits)
    for event in (RoundOpened(1, 1e6), TrainingDone(1), ProfileAccepted(1)):
        machine.handle(event, 0.0)
    here, lost = proposal(1, "t1", ME, 1), proposal(1, "t2", ME, 2)
    machine.handle(seen(here), 1.0)
    machine.handle(seen(lost), 1.0)
    machine.handle(PollAnswered(1, True), 2.0)
    assert machine.handle(PackageFetched(here.proposal_id), 10.0) == []
    assert machine.handle(Tick(), 109.0) == []
    actions = machine.handle(Tick(), 110.0)
    assert [type(a) for a in actions] == [AbandonExchange, Distil]
    assert actions[0].proposal == lost and actions[1] == Distil((here,))
    machine.handle(Distilled(here.proposal_id), 120.0)
    assert machine.handle(FeedbackReported(here.proposal_id), 121.0) == [CloseRound(1, completed=True)]
    # It came after all: distilled in a phase of its own, and reported.
    machine.handle(RoundClosed(1), 122.0)
    assert machine.handle(PackageFetched(lost.proposal_id), 130.0) == [Distil((lost,))]
    assert machine.handle(Distilled(lost.proposal_id), 131.0) == [ReportFeedback(lost, failed=False)]


def test_packages_are_distilled_before_their_proposal_expires():
    limits = RoundLimits(exchange_limit_s=None, collect_s=1e6, report_margin_s=60.0)
    machine = waiting(limits)
    for event in (RoundOpened(1, 1e6), TrainingDone(1), ProfileAccepted(1)):
        machine.handle(event, 0.0)
    soon = PairingProposal(proposal_id=b"\1" * 16, round=1, teacher="t1", student=ME, protocol="text", context=(),
                           score=0.0, expires=500.0)
    slow = proposal(1, "t2", ME, 2)
    machine.handle(seen(soon), 1.0)
    machine.handle(seen(slow), 1.0)
    machine.handle(PackageFetched(soon.proposal_id), 2.0)
    assert machine.handle(Tick(), 439.0) == []
    actions = machine.handle(Tick(), 440.0)
    assert [type(a) for a in actions] == [AbandonExchange, Distil] and actions[1] == Distil((soon,))


def test_a_failed_distillation_is_reported_as_a_failure():
    machine = following()
    p = proposal(1, "t1", ME)
    machine.handle(seen(p), 11.0)
    assert machine.handle(PackageFetched(p.proposal_id), 12.0) == []  # the CPM has not said it paired yet
    assert machine.handle(PollAnswered(1, True), 12.5) == [PollProposals(1, at=13.5), Distil((p,))]
    assert machine.handle(ExchangeFailed(p.proposal_id, "bad package"), 13.0) == [ReportFeedback(p, failed=True)]
    # Reporting the reward raised: the failure is reported instead.
    assert machine.handle(ExchangeFailed(p.proposal_id, "audit"), 13.0) == [ReportFeedback(p, failed=True)]
    assert machine.handle(FeedbackReported(p.proposal_id), 14.0) == [CloseRound(1, completed=True)]


def test_a_refused_profile_closes_the_round_without_completing_it():
    machine = waiting()
    machine.handle(RoundOpened(1, 100.0), 0.0)
    machine.handle(TrainingDone(1), 1.0)
    assert machine.handle(ProfileRefused(1, "late"), 2.0) == [CloseRound(1, completed=False)]
    assert machine.phase == "waiting"
    machine.handle(RoundClosed(1), 3.0)
    assert machine.state is S.WAITING


def test_a_model_that_does_not_load_leaves_a_relay():
    machine = NodeRound(me=ME)
    assert machine.handle(ModelFailed("OSError"), 0.0) == []
    assert machine.phase == "no-model"
    assert machine.handle(RoundOpened(1, 10.0), 1.0) == []
    assert machine.handle(seen(proposal(1, "t", ME)), 1.0) == [NoteProposal(proposal(1, "t", ME), "student")]
    assert machine.state is S.NO_MODEL


def test_a_round_announced_during_start_up_begins_after_warm_up():
    machine = NodeRound(me=ME)
    assert machine.handle(RoundOpened(1, 10.0), 0.0) == []
    assert machine.handle(RoundOpened(2, 20.0), 0.0) == []  # only the latest is kept
    assert machine.handle(ModelLoaded(), 1.0) == [WarmUp()]
    assert machine.phase == "warm-up"
    assert machine.handle(WarmedUp(), 2.0) == [Train(2)]


def test_a_later_round_during_following_closes_this_one_then_begins():
    machine = following()
    p = proposal(1, "t1", ME)
    machine.handle(seen(p), 11.0)
    assert machine.handle(RoundOpened(2, 200.0), 12.0) == [CloseRound(1, completed=True)]
    assert machine.handle(PollAnswered(1, True), 12.5) == []  # a poll still in flight
    assert machine.handle(RoundClosed(1), 13.0) == [Train(2)]
    # The first round's lesson still finishes and is reported; it does not hold round 2.
    assert machine.handle(PackageFetched(p.proposal_id), 14.0) == [Distil((p,))]
    assert machine.handle(Distilled(p.proposal_id), 15.0) == [ReportFeedback(p, failed=False)]
    assert machine.handle(FeedbackReported(p.proposal_id), 15.0) == []
    assert machine.state is S.TRAINING and machine.round == 2


def test_a_later_round_during_training_waits_for_this_round_to_end():
    machine = waiting()
    machine.handle(RoundOpened(1, 100.0), 0.0)
    assert machine.handle(RoundOpened(2, 200.0), 1.0) == []
    assert machine.handle(TrainingDone(1), 2.0) == [SendProfile(1)]
    actions = machine.handle(ProfileAccepted(1), 3.0)
    assert actions[-1] == CloseRound(1, completed=True)
    assert machine.handle(RoundClosed(1), 4.0) == [Train(2)]


def test_late_and_repeated_input_changes_nothing():
    machine = following(round_=3)
    before = copy.deepcopy(machine)
    for event in (RoundOpened(3, 1.0), RoundOpened(2, 1.0), PollAnswered(2, True), seen(proposal(2, "t", ME)),
                  seen(proposal(3, "a", "b")), Tick()):
        assert machine.handle(event, 20.0) == []
    assert machine == before


def test_the_cpm_that_never_pairs_is_given_up_after_its_deadline_and_the_grace():
    machine = following(deadline=100.0)
    assert machine.handle(Tick(), 100.0 + LIMITS.pairing_grace_s) == []
    actions = machine.handle(Tick(), 100.0 + LIMITS.pairing_grace_s + 0.1)
    assert isinstance(actions[0], GiveUp) and actions[0].what == "round 1" and "did not pair" in actions[0].reason
    assert actions[1:] == [CloseRound(1, completed=False)]
    assert machine.phase == "waiting"


def test_a_straggler_stops_holding_the_round_but_still_reports():
    machine = following(now=10.0)
    slow, quick = proposal(1, "t1", ME, 1), proposal(1, "t2", ME, 2)
    machine.handle(seen(slow), 10.0)
    machine.handle(seen(quick), 20.0)
    machine.handle(PollAnswered(1, True), 21.0)
    assert machine.handle(Tick(), 10.0 + 60.0) == []
    actions = machine.handle(Tick(), 10.0 + 60.5)
    assert [type(a) for a in actions] == [AbandonExchange]
    assert actions[0].proposal == slow
    machine.handle(FetchFailed(quick.proposal_id), 75.0)
    assert machine.handle(FeedbackReported(quick.proposal_id), 76.0) == [CloseRound(1, completed=True)]
    assert machine.handle(PackageFetched(slow.proposal_id), 90.0) == [Distil((slow,))]


def test_no_straggler_limit_waits_as_long_as_it_takes():
    machine = NodeRound(me=ME, limits=RoundLimits(exchange_limit_s=None))
    for event in (ModelLoaded(), WarmedUp(), RoundOpened(1, 1e12), TrainingDone(1), ProfileAccepted(1),
                  seen(proposal(1, "t", ME)), PollAnswered(1, True)):
        machine.handle(event, 0.0)
    assert machine.handle(Tick(), 1e9) == [] and machine.state is S.FOLLOWING


def test_a_failed_step_gives_up_the_round_and_a_pending_one_begins():
    machine = waiting()
    machine.handle(RoundOpened(1, 100.0), 0.0)
    machine.handle(RoundOpened(2, 200.0), 1.0)
    actions = machine.handle(StepFailed(1, "RuntimeError: oom"), 2.0)
    assert actions == [GiveUp(1, "round 1", "RuntimeError: oom"), Train(2)]
    warm = NodeRound(me=ME)
    warm.handle(ModelLoaded(), 0.0)
    assert warm.handle(StepFailed(0, "x"), 0.0) == [GiveUp(0, "warm-up", "x")]


@pytest.mark.parametrize("state", list(S))
def test_every_listed_transition_lands_where_the_table_says(state):
    for event_type, target in ROUND_TRANSITIONS[state].items():
        if event_type.__name__.startswith("_"):
            continue  # the machine's own moves, exercised by the paths above
        machine = in_state(state)
        event = {
            ModelLoaded: ModelLoaded(), ModelFailed: ModelFailed("x"), WarmedUp: WarmedUp(),
            RoundOpened: RoundOpened(5, 1e9), TrainingDone: TrainingDone(1), ProfileAccepted: ProfileAccepted(1),
            ProfileRefused: ProfileRefused(1, "x"), PollAnswered: PollAnswered(1, False),
            StepFailed: StepFailed(machine.round, "x"), RoundClosed: RoundClosed(1),
        }[event_type]
        machine.handle(event, 20.0)
        # A pending round begins at once from WAITING: TRAINING is where such a move lands.
        assert machine.state in (target, S.TRAINING if target is S.WAITING else target), (state, event_type)


# --- illegal events --------------------------------------------------------------------------------

ROUND_EVENTS = {
    ModelLoaded: lambda r: ModelLoaded(), ModelFailed: lambda r: ModelFailed("x"), WarmedUp: lambda r: WarmedUp(),
    TrainingDone: TrainingDone, ProfileAccepted: ProfileAccepted, ProfileRefused: lambda r: ProfileRefused(r, "x"),
    StepFailed: lambda r: StepFailed(r, "x"), RoundClosed: RoundClosed,
}


@pytest.mark.parametrize("state", list(S))
def test_every_event_the_table_does_not_list_raises_a_typed_error(state):
    for event_type, make in ROUND_EVENTS.items():
        if event_type in ROUND_TRANSITIONS[state]:
            continue
        machine = in_state(state)
        before = copy.deepcopy(machine)
        with pytest.raises(RoundProtocolError):
            machine.handle(make(machine.round), 20.0)
        assert machine == before  # refused before anything moved


def test_round_events_for_another_round_and_unknown_exchanges_are_refused():
    machine = in_state(S.TRAINING)
    with pytest.raises(RoundProtocolError, match="works in round 1"):
        machine.handle(TrainingDone(2), 0.0)
    for event in (PackageFetched(b"?" * 16), Distilled(b"?" * 16), FeedbackReported(b"?" * 16),
                  ExchangeFailed(b"?" * 16, "x"), FetchFailed(b"?" * 16)):
        with pytest.raises(RoundProtocolError, match="no such exchange"):
            machine.handle(event, 0.0)
    assert machine.handle(TeachingFinished(b"?" * 16), 0.0) == []  # served without being seen: nothing to track
    follow = following()
    p, t = proposal(1, "t", ME), proposal(1, ME, "s", 1)
    follow.handle(seen(p), 11.0)
    follow.handle(seen(t), 11.0)
    with pytest.raises(RoundProtocolError):
        follow.handle(Distilled(p.proposal_id), 12.0)  # still fetching
    with pytest.raises(RoundProtocolError, match="teacher"):
        follow.handle(PackageFetched(t.proposal_id), 12.0)


def test_internal_moves_are_not_events():
    from knexa_node.daemon import round_machine
    for name in ("_Begin", "_Complete", "_Superseded", "_PairingOverdue", "_Start", "_Serve"):
        with pytest.raises(RoundProtocolError, match="internal"):
            NodeRound(me=ME).handle(getattr(round_machine, name)(), 0.0)


def test_the_tables_name_every_state_and_step():
    assert set(ROUND_TRANSITIONS) == set(RoundState)
    assert set(STEP_TRANSITIONS) == set(Step)
    assert not any(event in ANY_STATE for row in ROUND_TRANSITIONS.values() for event in row)


# --- event orders (hypothesis) ---------------------------------------------------------------------

peers = st.sampled_from([ME, "a", "b"])
any_event = st.one_of(
    st.builds(ModelLoaded), st.builds(ModelFailed, st.text(max_size=3)), st.builds(WarmedUp),
    st.builds(RoundOpened, st.integers(0, 4), st.floats(0, 200)),
    *[st.builds(cls, st.integers(0, 4)) for cls in (TrainingDone, ProfileAccepted, RoundClosed)],
    st.builds(ProfileRefused, st.integers(0, 4), st.just("x")), st.builds(StepFailed, st.integers(0, 4), st.just("x")),
    st.builds(PollAnswered, st.integers(0, 4), st.sampled_from([True, False, None])), st.builds(Tick),
    st.builds(lambda r, t, s, n: seen(proposal(r, t, s, n)), st.integers(0, 4), peers, peers, st.integers(0, 3)),
    *[st.builds(cls, st.binary(min_size=16, max_size=16)) for cls in
      (PackageFetched, FetchFailed, Distilled, FeedbackReported, TeachingFinished)],
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(any_event, st.floats(0, 500)), max_size=40))
def test_any_event_order_is_taken_or_refused_with_a_typed_error_and_nothing_moved(events):
    machine = NodeRound(me=ME, limits=LIMITS)
    for event, now in events:
        before = copy.deepcopy(machine)
        try:
            actions = machine.handle(event, now)
        except RoundProtocolError:
            assert machine == before
            continue
        assert machine.phase in PHASES
        assert all(type(a).__module__ == NodeRound.__module__ for a in actions)


class SimulatedDriver:
    """Performs the machine's actions in any order, with any outcome, as the trio driver would."""

    def __init__(self, machine: NodeRound) -> None:
        self.machine, self.now, self.todo = machine, 0.0, []

    def feed(self, event) -> None:
        for action in self.machine.handle(event, self.now):
            assert self.machine.phase in PHASES
            if not isinstance(action, (NoteProposal, GiveUp, AbandonExchange)):
                self.todo.append(action)

    def complete(self, action, choice: int) -> None:
        m = self.machine
        if isinstance(action, WarmUp):
            self.feed([WarmedUp(), StepFailed(m.round, "x")][choice % 2])
        elif isinstance(action, Train):
            self.feed([TrainingDone(action.round), StepFailed(action.round, "x")][choice % 2])
        elif isinstance(action, SendProfile):
            self.feed([ProfileAccepted(action.round), ProfileRefused(action.round, "x"),
                       StepFailed(action.round, "x")][choice % 3])
        elif isinstance(action, PollProposals):
            self.feed(PollAnswered(action.round, [True, False, None][choice % 3]))
        elif isinstance(action, CloseRound):
            self.feed(RoundClosed(action.round))
        elif isinstance(action, ServePackage):
            self.feed(TeachingFinished(action.proposal.proposal_id))
        elif isinstance(action, Distil):
            for p in action.proposals:
                self.feed([Distilled(p.proposal_id), ExchangeFailed(p.proposal_id, "x")][choice % 2])
        else:
            pid = action.proposal.proposal_id
            if isinstance(action, FetchPackage):
                self.feed([PackageFetched(pid), FetchFailed(pid), ExchangeFailed(pid, "x")][choice % 3])
            else:
                self.feed(FeedbackReported(pid))


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_a_driver_completing_actions_in_any_order_always_gets_back_to_waiting(data):
    machine = NodeRound(me=ME, limits=LIMITS)
    driver = SimulatedDriver(machine)
    next_round = 1
    driver.feed(RoundOpened(next_round, 50.0))
    driver.feed(ModelLoaded())
    for _ in range(data.draw(st.integers(0, 60))):
        move = data.draw(st.sampled_from(["complete", "complete", "complete", "round", "proposal", "tick"]))
        if move == "complete" and driver.todo:
            action = driver.todo.pop(data.draw(st.integers(0, len(driver.todo) - 1)))
            driver.complete(action, data.draw(st.integers(0, 2)))
        elif move == "round":
            next_round += 1
            driver.feed(RoundOpened(next_round, driver.now + 50.0))
        elif move == "proposal":
            round_ = data.draw(st.integers(max(1, machine.round), next_round))
            teacher, student = data.draw(st.sampled_from([("a", ME), ("b", ME), (ME, "a"), ("a", "b")]))
            driver.feed(seen(proposal(round_, teacher, student, data.draw(st.integers(0, 5)))))
        else:
            driver.now += data.draw(st.floats(0, 40))
            driver.feed(Tick())
    # Drain: every outstanding action completes benignly and the CPM says it paired.
    for _ in range(1000):
        if not driver.todo:
            break
        driver.complete(driver.todo.pop(0), 0)
    assert not driver.todo
    assert machine.state is S.WAITING
    assert not any(x.step in (Step.FETCHING, Step.FETCHED, Step.DISTILLING, Step.REPORTING)
                   for x in machine.exchanges.values())
