"""The CPM's RoundBook driven directly, in memory: each rule, then hypothesis over event orders."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knexa_cpm.policies import Pairing
from knexa_cpm.rounds import CLOSED, COLLECTING, PAIRED, Refusal, RoundBook, RoundSettings
from knexa_node.profile import PROFILE_DIM
from knexa_node.wire import Feedback, Profile
from knexa_node.wire.messages import NO_RECEIPT

MEMBERS = ("a", "b", "c", "d")
GOOD = (1.0,) + (0.0,) * 7 + (0.5,) * 12 + (1 / 12,) * 12
BAD = (0.0,) * PROFILE_DIM  # no family bit, no histogram
SETTINGS = RoundSettings(deadline_s=100.0, quorum=1.0, proposal_ttl_s=50.0)
CODES = {"not-member", "wrong-round", "late", "bad-profile", "unknown-proposal", "not-student", "replay", "expired"}
assert len(GOOD) == PROFILE_DIM


def book(members=MEMBERS, settings_=SETTINGS) -> RoundBook:
    counter = iter(range(1, 10_000))
    return RoundBook(round=2, opened_at=0.0, settings=settings_, expected_members=len(members) if members else 0,
                     members=frozenset(members) if members else None,
                     new_id=lambda: next(counter).to_bytes(16, "big"))


def profile(round_: int = 2, vector=GOOD, tokenizer: str = "tok") -> Profile:
    return Profile(round=round_, vector=vector, model_type="m", tokenizer_id=tokenizer, addrs=())


def pairing(teacher: str, student: str, protocol: str = "text") -> Pairing:
    return Pairing(teacher=teacher, student=student, protocol=protocol, context=np.zeros(3), round=2, score=0.5)


def feedback(proposal_id: bytes, round_: int = 2, *, failed: bool = False) -> Feedback:
    if failed:
        return Feedback.failure(proposal_id, round_)
    return Feedback(proposal_id, round_, 0.1, 1.0, 0.9, 100, b"\1" * 32)


def refused(code: str, fn, *args) -> None:
    with pytest.raises(Refusal) as info:
        fn(*args)
    assert info.value.code == code


def test_budget_is_half_the_members_or_c_per_member():
    for c, expected in ((1, 2), (2, 8), (3, 12)):
        b = book(settings_=RoundSettings(teachers_per_student=c))
        for peer in MEMBERS:
            b.add_profile(peer, profile())
        assert b.budget() == expected
    fixed = book(settings_=RoundSettings(teachers_per_student=2, pairs_per_round=3))
    assert fixed.budget() == 3


def test_competence_is_given_for_the_profiles_that_carry_one():
    b = book()
    b.add_profile("a", Profile.with_competence({"math": 0.5}, round=2, vector=GOOD, model_type="m", tokenizer_id="t",
                                               addrs=()))
    b.add_profile("b", profile())  # an older node: no competence
    assert b.competence() == {"a": {"math": 0.5}}


def test_two_teachers_per_student_each_get_their_own_proposal_and_feedback():
    b = book(settings_=RoundSettings(teachers_per_student=2, proposal_ttl_s=50.0))
    for peer in MEMBERS[:3]:
        b.add_profile(peer, profile())
    proposals = b.record_pairings([pairing("b", "a"), pairing("c", "a"), pairing("a", "b")], now=1.0)
    assert [(p.teacher, p.student) for p in proposals] == [("b", "a"), ("c", "a"), ("a", "b")]
    first, second, third = proposals
    b.add_feedback("a", feedback(first.proposal_id), 2.0)
    refused("not-student", b.add_feedback, "b", feedback(second.proposal_id), 2.0)
    b.add_feedback("a", feedback(second.proposal_id), 2.0)
    assert b.phase == PAIRED  # the third is still open
    b.add_feedback("b", feedback(third.proposal_id, failed=True), 3.0)
    assert b.phase == CLOSED


def test_profiles_pair_on_quorum_or_at_the_deadline_with_two():
    quorum = book()
    for peer in MEMBERS[:3]:
        quorum.add_profile(peer, profile())
        assert not quorum.ready_to_pair(1.0)
    quorum.add_profile("d", profile())
    assert quorum.ready_to_pair(1.0)
    late = book()
    late.add_profile("a", profile())
    assert not late.ready_to_pair(100.0)  # one profile is nobody to pair with
    late.add_profile("b", profile())
    assert not late.ready_to_pair(99.9) and late.ready_to_pair(100.0)
    assert late.announcement("knexa").deadline == 100.0


def test_profiles_are_refused_from_outsiders_for_other_rounds_late_or_malformed():
    b = book()
    refused("not-member", b.add_profile, "z", profile())
    refused("wrong-round", b.add_profile, "a", profile(round_=3))
    refused("bad-profile", b.add_profile, "a", profile(vector=BAD))
    b.add_profile("a", profile(tokenizer="first"))
    b.add_profile("a", profile(tokenizer="second"))  # a later profile replaces the earlier one
    assert b.profiles["a"].tokenizer_id == "second" and len(b.profiles) == 1
    b.add_profile("b", profile())
    b.record_pairings([pairing("a", "b")], 1.0)
    refused("late", b.add_profile, "c", profile())
    refused("late", b.record_pairings, [], 2.0)
    open_book = book(members=None)
    open_book.add_profile("anyone", profile())  # no member list: the demo's open consortium


def test_pairings_become_proposals_only_between_profiled_peers():
    b = book()
    for peer in ("a", "b", "c"):
        b.add_profile(peer, profile(tokenizer="shared" if peer != "c" else "other"))
    proposals = b.record_pairings([pairing("a", "b", "logits"), pairing("a", "c", "logits"), pairing("a", "z")], 10.0)
    assert [(p.teacher, p.student, p.protocol) for p in proposals] == [("a", "b", "logits"), ("a", "c", "text")]
    assert all(p.expires == 10.0 + SETTINGS.proposal_ttl_s and p.round == 2 for p in proposals)
    assert b.phase == PAIRED and b.statistics()["proposals"] == 2
    empty = book()
    empty.add_profile("a", profile())
    assert empty.record_pairings([], 1.0) == [] and empty.phase == CLOSED


def test_feedback_only_once_from_the_student_before_expiry_and_it_closes_the_round():
    b = book()
    for peer in ("a", "b", "c", "d"):
        b.add_profile(peer, profile())
    first, second = b.record_pairings([pairing("a", "b"), pairing("c", "d")], 10.0)
    refused("unknown-proposal", b.add_feedback, "b", feedback(b"\0" * 16), 11.0)
    refused("unknown-proposal", b.add_feedback, "b", feedback(first.proposal_id, round_=1), 11.0)
    refused("not-student", b.add_feedback, "a", feedback(first.proposal_id), 11.0)
    refused("expired", b.add_feedback, "b", feedback(first.proposal_id), 60.1)
    b.add_feedback("b", feedback(first.proposal_id), 60.0)
    refused("replay", b.add_feedback, "b", feedback(first.proposal_id), 60.0)
    assert b.phase == PAIRED
    record = b.add_feedback("d", feedback(second.proposal_id, failed=True), 20.0)
    assert record.feedback is not None and record.feedback.reports_failure and record.feedback.receipt_hash == NO_RECEIPT
    assert b.phase == CLOSED and b.statistics()["feedback"] == 2


def test_a_round_whose_proposals_all_expire_closes():
    b = book()
    b.add_profile("a", profile())
    b.add_profile("b", profile())
    b.record_pairings([pairing("a", "b")], 0.0)
    assert not b.expire(50.0) and b.phase == PAIRED
    assert b.expire(50.1) and b.phase == CLOSED
    assert not b.expire(60.0)


# --- event orders ----------------------------------------------------------------------------------

peers = st.sampled_from(MEMBERS + ("z",))
steps = st.one_of(
    st.tuples(st.just("profile"), peers, st.sampled_from([2, 2, 2, 3]), st.sampled_from([GOOD, GOOD, BAD])),
    st.tuples(st.just("pair"), st.lists(st.tuples(peers, peers), max_size=3)),
    st.tuples(st.just("feedback"), peers, st.integers(0, 4), st.sampled_from([2, 2, 1]), st.booleans()),
    st.tuples(st.just("expire")),
    st.tuples(st.just("wait"), st.floats(0, 40)),
)
ORDER = {COLLECTING: 0, PAIRED: 1, CLOSED: 2}


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, max_size=30))
def test_any_order_of_events_keeps_the_rules(events):
    b, now = book(), 0.0
    accepted: dict[bytes, str] = {}
    for event in events:
        phase = b.phase
        try:
            if event[0] == "profile":
                _, peer, round_, vector = event
                b.add_profile(peer, profile(round_, vector))
                assert phase == COLLECTING and peer in MEMBERS and round_ == 2 and vector == GOOD
            elif event[0] == "pair":
                if not b.ready_to_pair(now) and b.phase == COLLECTING:
                    continue
                proposals = b.record_pairings([pairing(t, s) for t, s in event[1]], now)
                assert phase == COLLECTING
                assert all(p.teacher in b.profiles and p.student in b.profiles for p in proposals)
            elif event[0] == "feedback":
                _, peer, index, round_, failed = event
                ids = list(b.proposals)
                pid = ids[index] if index < len(ids) else b"\xff" * 16
                record = b.add_feedback(peer, feedback(pid, round_, failed=failed), now)
                assert pid not in accepted and peer == record.proposal.student and round_ == 2
                assert now <= record.proposal.expires
                accepted[pid] = peer
            elif event[0] == "expire":
                b.expire(now)
            else:
                now += event[1]
        except Refusal as refusal:
            assert refusal.code in CODES
            assert b.phase == phase  # a refusal changes nothing
        assert ORDER[b.phase] >= ORDER[phase]  # phases only move forward
        stats = b.statistics()
        assert stats["feedback"] == len(accepted) <= stats["proposals"]
        if b.phase == PAIRED:
            assert b.proposals and not all(r.feedback for r in b.proposals.values())
