"""The CPM's bookkeeping of one round, as a pure state machine (no I/O, no clock of its own).

Phases: ``collecting`` profiles -> ``paired`` (proposals out, feedback coming in)
-> ``closed``. The service feeds it verified wire messages with the current time
and acts on what it returns; tests drive it in memory.

Rules enforced here (DESIGN.md, "Protocol"):
- profiles only from members, for the open round, one per member (a later one replaces it),
  and only within the layout's ranges (:func:`knexa_node.profile.validate_profile`, ``bad-profile``);
- pairing on quorum, or at the deadline with at least two profiles;
- feedback only for a proposal of this round, only from its named student, only once,
  and only before the proposal expires.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from knexa_node.profile import validate_profile, ProfileError
from knexa_node.wire import Feedback, PairingProposal, Profile, RoundOpen

COLLECTING, PAIRED, CLOSED = "collecting", "paired", "closed"


@dataclass(frozen=True)
class RoundSettings:
    deadline_s: float = 300.0
    quorum: float = 1.0
    proposal_ttl_s: float = 900.0
    pairs_per_round: int = 0  # 0: half the members with profiles (c = 1), or c times them
    teachers_per_student: int = 1  # c: teachers per student and students per teacher (1: disjoint pairs)


class Refusal(Exception):
    """A message the round cannot accept; ``code`` is stable, for acks and counters."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        super().__init__(reason)


@dataclass
class ProposalRecord:
    proposal: PairingProposal
    pairing: Any  # the policy's Pairing, handed back to policy.feedback()
    feedback: Feedback | None = None


@dataclass
class RoundBook:
    round: int
    opened_at: float
    settings: RoundSettings
    expected_members: int
    members: frozenset[str] | None = None  # None: anyone may join (demo)
    phase: str = COLLECTING
    profiles: dict[str, Profile] = field(default_factory=dict)
    proposals: dict[bytes, ProposalRecord] = field(default_factory=dict)
    new_id: Callable[[], bytes] = field(default=lambda: os.urandom(16), repr=False)

    @property
    def deadline(self) -> float:
        return self.opened_at + self.settings.deadline_s

    def announcement(self, policy: str) -> RoundOpen:
        return RoundOpen(round=self.round, deadline=self.deadline, policy=policy)

    def add_profile(self, sender: str, profile: Profile) -> None:
        if self.members is not None and sender not in self.members:
            raise Refusal("not-member", f"{sender} is not a consortium member")
        if profile.round != self.round:
            raise Refusal("wrong-round", f"profile for round {profile.round}, open round is {self.round}")
        if self.phase != COLLECTING:
            raise Refusal("late", f"round {self.round} is already paired")
        try:
            validate_profile(profile.vector)
        except ProfileError as exc:
            raise Refusal("bad-profile", str(exc)) from None
        self.profiles[sender] = profile

    def ready_to_pair(self, now: float) -> bool:
        if self.phase != COLLECTING:
            return False
        quorum = max(2, int(np.ceil(self.settings.quorum * max(self.expected_members, 1))))
        return len(self.profiles) >= quorum or (now >= self.deadline and len(self.profiles) >= 2)

    def profile_vectors(self) -> dict[str, np.ndarray]:
        return {peer: np.asarray(p.vector, dtype=np.float64) for peer, p in sorted(self.profiles.items())}

    def competence(self) -> dict[str, dict[str, float]]:
        """Peer -> public dev-set Pass@1 per category, for the profiles that carry one (older nodes send none)."""
        return {peer: p.competence for peer, p in sorted(self.profiles.items()) if p.competence}

    def budget(self) -> int:
        """Pairs to ask the policy for: the configured number, else every member's share at ``c`` per node."""
        if self.settings.pairs_per_round > 0:
            return self.settings.pairs_per_round
        per_node = max(1, self.settings.teachers_per_student)
        if per_node == 1:
            return max(1, len(self.profiles) // 2)
        return per_node * len(self.profiles)

    def record_pairings(self, pairings: list[Any], now: float) -> list[PairingProposal]:
        """Turn the policy's pairings into signed-to-be proposals; the round is then paired."""
        if self.phase != COLLECTING:
            raise Refusal("late", "round already paired")
        self.phase = PAIRED
        for pairing in pairings:
            protocol = pairing.protocol
            teacher, student = self.profiles.get(pairing.teacher), self.profiles.get(pairing.student)
            if teacher is None or student is None:
                continue  # the policy named someone without a profile: never propose it
            if protocol == "logits" and teacher.tokenizer_id != student.tokenizer_id:
                protocol = "text"  # logits need one shared tokenizer
            proposal = PairingProposal(
                proposal_id=self.new_id(),
                round=self.round,
                teacher=pairing.teacher,
                student=pairing.student,
                protocol=protocol,
                context=tuple(float(x) for x in np.asarray(pairing.context, dtype=np.float64).ravel()),
                score=float(getattr(pairing, "score", 0.0) or 0.0),
                expires=now + self.settings.proposal_ttl_s,
            )
            self.proposals[proposal.proposal_id] = ProposalRecord(proposal, pairing)
        if not self.proposals:
            self.phase = CLOSED
        return [record.proposal for record in self.proposals.values()]

    def add_feedback(self, sender: str, feedback: Feedback, now: float) -> ProposalRecord:
        record = self.proposals.get(feedback.proposal_id)
        if record is None or feedback.round != self.round:
            raise Refusal("unknown-proposal", "no such proposal in the open round")
        if sender != record.proposal.student:
            raise Refusal("not-student", "feedback must come from the proposal's student")
        if record.feedback is not None:
            raise Refusal("replay", "feedback for this proposal was already accepted")
        if now > record.proposal.expires:
            raise Refusal("expired", "the proposal expired before its feedback arrived")
        record.feedback = feedback
        if all(r.feedback is not None for r in self.proposals.values()):
            self.phase = CLOSED
        return record

    def expire(self, now: float) -> bool:
        """Close the round once every open proposal has expired; True when it closed now."""
        if self.phase == PAIRED and all(r.feedback is not None or now > r.proposal.expires for r in self.proposals.values()):
            self.phase = CLOSED
            return True
        return False

    def statistics(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "phase": self.phase,
            "profiles": len(self.profiles),
            "proposals": len(self.proposals),
            "feedback": sum(r.feedback is not None for r in self.proposals.values()),
            "deadline": self.deadline,
        }
