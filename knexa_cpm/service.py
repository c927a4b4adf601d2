"""The CPM daemon's service: profiles and feedback in, signed proposals out.

Plugs into :class:`knexa_node.daemon.daemon.Daemon` (the same host code as a
node) with :func:`install`:

- ``/knexa/cpm/1.0.0`` handler: one signed request, one signed answer.
  ``Profile`` and ``Feedback`` get an ``Ack``; ``ProposalQuery`` gets a
  ``ProposalList`` (catch-up for nodes that missed the gossip).
- a round driver: rounds opened by the operator (``knexa-cpm round open``) or
  automatically (``cpm.auto_rounds``); pairs on quorum or deadline with the
  configured policy; proposals signed and published on
  ``knexa/<consortium>/proposals``. While some member's profile is missing,
  the open round is announced again every ``REANNOUNCE_S`` (a member that
  restarted mid-round missed the first announcement: gossip keeps no history).
- state: the policy behind a :class:`knexa_cpm.state.PolicyStore`; a feedback is
  journaled and fsynced before its ``Ack`` leaves, so ``kill -9`` never loses an
  acknowledged reward. The round number is kept in the snapshot; a restarted
  CPM closes the round it had open as ``interrupted`` (logged), opens the
  next one, and goes on with ``cpm.auto_rounds`` where the plan stood
  (``rounds_closed`` in its status counts the rounds of every run).
- idempotent feedback: a node retries its feedback until it is answered, so an
  ``Ack`` lost on the way back brings the same feedback again; a repeat of an
  acknowledged feedback (same student, same content) is answered ``ok`` with
  code ``duplicate`` and counted nowhere else (``counters.duplicates``).

The round rules themselves live in :mod:`knexa_cpm.rounds` (pure).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import trio

from knexa_cpm.policies import PolicyError, build_policy
from knexa_cpm.rounds import CLOSED, COLLECTING, Refusal, RoundBook, RoundSettings
from knexa_cpm.state import PolicyStore
from knexa_node.config import Config
from knexa_node.crypto import Signer, sha256
from knexa_node.daemon.role import RoleHost
from knexa_node.net.protocols import CPM_PROTOCOL, PROPOSALS, ROUNDS, topic
from knexa_node.wire import (
    Ack,
    Envelope,
    Feedback,
    Message,
    PairingProposal,
    Profile,
    ProposalList,
    ProposalQuery,
    WireError,
    open_envelope,
    seal_envelope,
)

REQUEST_TIMEOUT_S = 30.0
MAX_REQUEST = 256 * 1024
TICK_S = 0.2
# Gossip keeps no history: a member that (re)starts while a round collects profiles would never hear of it.
# The open round is announced again this often until every member's profile is in.
REANNOUNCE_S = 5.0
DUPLICATE = "duplicate"  # the Ack code of a repeated, already acknowledged feedback


def feedback_digest(feedback: Feedback) -> str:
    """What identifies one feedback's content (a retry re-sends the same content)."""
    return sha256(feedback.to_body()).hex()


class CpmService:
    def __init__(self, signer: Signer, config: Config, state_dir: Path, *, publish: Callable[[str, bytes], Any],
                 on_event: Callable[..., None], policy_name: str | None = None, seed: int = 0,
                 topic_peers: Callable[[str], int] = lambda topic: 1, clock: Callable[[], float] = time.time,
                 on_round: Callable[[int], None] = lambda round_: None) -> None:
        self.signer, self.config, self.clock, self.on_event, self.on_round = signer, config, clock, on_event, on_round
        self.publish, self.topic_peers = publish, topic_peers
        self.policy_name = policy_name or config.cpm.policy
        self.policy = build_policy(self.policy_name, seed, competence=config.cpm.competence,
                                   budget_categories=config.cpm.package_categories)
        self.store = PolicyStore.open(Path(state_dir), self.policy)
        self.last_round = int(self.store.extra.get("round", 0))
        self.rounds_closed = int(self.store.extra.get("rounds_closed", 0))  # over every run of this CPM
        self.members = frozenset(config.consortium.members) or None
        self.settings = RoundSettings(
            deadline_s=config.cpm.round_deadline_s,
            quorum=config.cpm.quorum,
            proposal_ttl_s=config.cpm.proposal_ttl_s,
            pairs_per_round=config.cpm.pairs_per_round,
            teachers_per_student=config.cpm.teachers_per_student,
        )
        self.book: RoundBook | None = None
        self.closed_round = 0  # the last round whose closing was recorded
        self.proposal_envelopes: dict[bytes, bytes] = {}
        self.history: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {"profiles": 0, "feedback": 0, "proposals": 0, "refused": 0, "rounds": 0}
        self.refusals: dict[str, int] = {}
        self.rewards: list[float] = []
        self.feedback_log: list[dict[str, Any]] = []
        # proposal id -> (round, student, digest) of each acknowledged feedback of recent rounds, so that a retry
        # after a lost Ack is answered again instead of refused; the journal gives back the open round's.
        self.acknowledged: dict[bytes, tuple[int, str, str]] = {}
        for entry in self.store.replayed:
            meta = entry.meta
            if "student" in meta and "digest" in meta:
                pid = bytes.fromhex(str(meta["proposal_id"]))
                self.acknowledged[pid] = (int(meta["round"]), str(meta["student"]), str(meta["digest"]))
        self._wake = trio.Event()
        self._announced_at = 0.0
        self.rounds_topic = topic(config.consortium.name, ROUNDS)
        self.proposals_topic = topic(config.consortium.name, PROPOSALS)
        self._close_interrupted_round()

    def _close_interrupted_round(self) -> None:
        """A round the last run opened and never closed (kill -9, power loss) ends here with a logged outcome.

        Its proposals and profiles were in memory only: they are gone, and the nodes' late feedback for it
        is refused (``no-round``/``unknown-proposal``), never half-counted; the next round is ``last_round + 1``.
        """
        if self.last_round and self.store.extra.get("closed") is False:
            stats = {"round": self.last_round, "phase": CLOSED, "closed_by": "interrupted"}
            self.history.append(stats)
            self.closed_round = self.last_round
            self.rounds_closed += 1
            self.store.checkpoint({"round": self.last_round, "closed": True, "rounds_closed": self.rounds_closed})
            self.on_event("round-closed", **stats)

    # --- requests ----------------------------------------------------------------------------------

    def handle_request(self, data: bytes, remote: str) -> Message:
        """One signed request from ``remote`` -> the answer to sign (pure apart from the store's fsync)."""
        try:
            envelope, message = open_envelope(data, max_size=MAX_REQUEST, expect=(Profile, Feedback, ProposalQuery))
        except WireError as exc:
            return self._refuse(b"\0" * 32, exc.reason, str(exc))
        if envelope.sender != remote:
            return self._refuse(envelope.digest, "sender-mismatch", "the envelope's signer is not the stream's peer")
        if self.members is not None and remote not in self.members:
            return self._refuse(envelope.digest, "not-member", f"{remote} is not a consortium member")
        try:
            if isinstance(message, ProposalQuery):
                return self._proposals_for(remote, message.round)
            if isinstance(message, Feedback) and self._acknowledged(remote, message):
                self.counters["duplicates"] = self.counters.get("duplicates", 0) + 1
                self.on_event("feedback-duplicate", round=message.round, student=remote)
                return Ack(ref=envelope.digest, ok=True, code=DUPLICATE, reason="already acknowledged")
            if self.book is None:
                raise Refusal("no-round", "no round is open")
            if isinstance(message, Profile):
                self.book.add_profile(remote, message)
                self.counters["profiles"] += 1
                self.on_event("profile", round=message.round, peer_id=remote)
                self._wake.set()
            elif isinstance(message, Feedback):
                self._accept_feedback(remote, envelope, message)
            else:  # open_envelope's `expect` admits no other type
                raise Refusal("unexpected-type", type(message).__name__)
        except Refusal as refusal:
            return self._refuse(envelope.digest, refusal.code, str(refusal))
        if isinstance(message, Feedback):
            self.acknowledged[message.proposal_id] = (message.round, remote, feedback_digest(message))
        return Ack(ref=envelope.digest, ok=True, code="ok", reason="")

    def _acknowledged(self, remote: str, feedback: Feedback) -> bool:
        """Was this very feedback, from this student, acknowledged already?"""
        known = self.acknowledged.get(feedback.proposal_id)
        return known is not None and known[1:] == (remote, feedback_digest(feedback))

    def _accept_feedback(self, remote: str, envelope: Envelope, feedback: Feedback) -> None:
        if self.book is None:  # handle_request refuses feedback while no round is open
            raise Refusal("no-round", "no round is open")
        if feedback.reports_failure:
            # The exchange never completed: close the proposal, but a transport or refusal
            # failure is no measurement of teaching, so it never reaches the bandit.
            record = self.book.add_feedback(remote, feedback, self.clock())
            self.counters["failed_exchanges"] = self.counters.get("failed_exchanges", 0) + 1
            self.on_event("exchange-failed", round=feedback.round, teacher=record.proposal.teacher, student=remote)
            self._wake.set()
            return
        record = self.book.proposals.get(feedback.proposal_id)
        if record is not None and record.feedback is None and remote == record.proposal.student:
            try:
                self.policy.validate_feedback(record.pairing, feedback.reward)
            except PolicyError as exc:
                raise Refusal("bad-feedback", str(exc)) from None
        record = self.book.add_feedback(remote, feedback, self.clock())
        # Journaled and fsynced before the Ack is sent: an acknowledged reward survives kill -9.
        # claims_failed > 0 (verified answers that failed the student's tests) also counts against the teacher's trust.
        seq = self.store.record_feedback(record.pairing, feedback.reward, {
            "proposal_id": feedback.proposal_id.hex(), "round": feedback.round, "nonce": envelope.nonce.hex(),
            "claims_failed": feedback.claims_failed,
            "student": remote, "digest": feedback_digest(feedback),
        })
        self.counters["feedback"] += 1
        if feedback.claims_failed:
            self.counters["failed_claims"] = self.counters.get("failed_claims", 0) + 1
        self.rewards.append(feedback.reward)
        entry = {"round": feedback.round, "teacher": record.proposal.teacher, "student": remote,
                 "reward": feedback.reward, "loss_before": feedback.loss_before, "loss_after": feedback.loss_after,
                 "bytes": feedback.package_bytes, "items_used": feedback.items_used,
                 "items_failed": feedback.items_failed, "claims_failed": feedback.claims_failed, "seq": seq}
        self.feedback_log.append(entry)
        self.on_event("feedback", **entry)
        self._wake.set()

    def _proposals_for(self, remote: str, round_: int) -> ProposalList:
        book = self.book
        if book is None or book.round != round_:
            phase = CLOSED if round_ <= self.last_round else "unknown"
            return ProposalList(round=round_, phase=phase, proposals=())
        mine = tuple(self.proposal_envelopes[pid] for pid, record in book.proposals.items()
                     if remote in (record.proposal.teacher, record.proposal.student))
        return ProposalList(round=round_, phase=book.phase, proposals=mine)

    def _refuse(self, ref: bytes, code: str, reason: str) -> Ack:
        self.counters["refused"] += 1
        self.refusals[code] = self.refusals.get(code, 0) + 1
        self.on_event("request-refused", code=code, reason=reason[:200])
        return Ack(ref=ref, ok=False, code=code, reason=reason[:500])

    async def serve_stream(self, stream: Any, remote: str) -> None:
        data = await stream.receive(MAX_REQUEST, REQUEST_TIMEOUT_S)
        answer = self.handle_request(data, remote)
        await stream.send(seal_envelope(self.signer, answer).to_bytes())

    # --- rounds ------------------------------------------------------------------------------------

    async def open_round(self, round_: int | None = None, deadline_s: float | None = None) -> dict[str, Any]:
        """Start collecting profiles for a round and announce it on gossip."""
        if self.book is not None and not self.round_closed():
            self._finish_round("superseded")
        number = self.last_round + 1 if round_ is None else int(round_)
        if number <= 0:
            raise ValueError("round must be >= 1")
        settings = self.settings if deadline_s is None else dataclasses.replace(self.settings, deadline_s=deadline_s)
        expected = len(self.members) if self.members else 0
        self.book = RoundBook(round=number, opened_at=self.clock(), settings=settings, expected_members=expected,
                              members=self.members)
        # A retry comes no later than its proposal's expiry: the previous round's are enough to keep.
        self.acknowledged = {pid: known for pid, known in self.acknowledged.items() if known[0] >= number - 1}
        self.last_round = number
        self.on_round(number)
        self.proposal_envelopes = {}
        self.counters["rounds"] += 1
        self.store.checkpoint({"round": number, "closed": False, "rounds_closed": self.rounds_closed})
        envelope = await self._announce()
        self.on_event("round-open", round=number, deadline=round(self.book.deadline, 3), policy=self.policy_name)
        self._wake.set()
        return {"round": number, "topic": self.rounds_topic, "digest": envelope.digest.hex(), "deadline": self.book.deadline}

    async def _announce(self) -> Envelope:
        """Publish the open round's announcement (sealed anew: a new message id, so gossip relays it again)."""
        if self.book is None:  # open_round and tick call this with a book
            raise RuntimeError("no round to announce")
        envelope = seal_envelope(self.signer, self.book.announcement(self.policy_name))
        self._announced_at = self.clock()
        await self.publish(self.rounds_topic, envelope.to_bytes())
        return envelope

    def _members_missing(self) -> bool:
        book = self.book
        return book is not None and (self.members is None or len(book.profiles) < len(self.members))

    async def pair_now(self) -> list[PairingProposal]:
        book = self.book
        if book is None or book.phase != COLLECTING:
            raise Refusal("not-collecting", "no round is collecting profiles")
        vectors = book.profile_vectors()
        started = time.perf_counter()
        per_node = max(1, book.settings.teachers_per_student)
        competence = book.competence()
        pairings = (self.policy.propose(vectors, book.budget(), book.round, per_node=per_node,
                                        competence=competence or None)
                    if len(vectors) >= 2 else [])
        seconds = time.perf_counter() - started
        proposals = book.record_pairings(pairings, self.clock())
        for proposal in proposals:
            envelope = seal_envelope(self.signer, proposal).to_bytes()
            self.proposal_envelopes[proposal.proposal_id] = envelope
            await self.publish(self.proposals_topic, envelope)
            self.on_event("proposal", round=book.round, teacher=proposal.teacher, student=proposal.student,
                          protocol=proposal.protocol, score=round(proposal.score, 4))
        self.counters["proposals"] += len(proposals)
        self.on_event("paired", round=book.round, profiles=len(vectors), pairs=len(proposals),
                      with_competence=len(competence), matchmaking_s=round(seconds, 6))
        if not proposals:
            self._finish_round("no-pairs")
        return proposals

    def _finish_round(self, how: str) -> None:
        book = self.book
        if book is None:  # every caller holds an open book
            raise RuntimeError("no round to finish")
        book.phase = CLOSED
        stats = book.statistics()
        stats["closed_by"] = how
        self.closed_round = book.round
        self.history.append(stats)
        self.rounds_closed += 1
        self.store.checkpoint({"round": book.round, "closed": True, "rounds_closed": self.rounds_closed})
        self.on_event("round-closed", **stats)

    async def tick(self) -> None:
        """Advance the open round by the clock: pair on quorum/deadline, close on feedback/expiry."""
        book = self.book
        if book is None or self.round_closed():
            return
        now = self.clock()
        if book.ready_to_pair(now):
            await self.pair_now()
        elif book.phase == COLLECTING and now >= book.deadline:
            self._finish_round("deadline-without-quorum")
        elif book.phase == COLLECTING and self._members_missing() and now >= self._announced_at + REANNOUNCE_S:
            await self._announce()
            self.counters["reannounced"] = self.counters.get("reannounced", 0) + 1
        elif book.phase != COLLECTING:
            book.expire(now)
            if book.phase == CLOSED:
                self._finish_round("feedback" if all(r.feedback for r in book.proposals.values()) else "expired")

    def round_closed(self) -> bool:
        return self.book is not None and self.closed_round == self.book.round

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        planned = self.config.cpm.auto_rounds
        done = min(self.last_round, planned)  # a restarted CPM goes on with the plan instead of starting it again
        while True:
            if planned and done < planned and (self.book is None or self.round_closed()):
                if self.book is not None:
                    await trio.sleep(self.config.cpm.round_gap_s)
                await self._wait_for_members()
                await self.open_round()
                done += 1
            await self.tick()
            self._wake = trio.Event()
            with trio.move_on_after(TICK_S):
                await self._wake.wait()

    async def _wait_for_members(self) -> None:
        """Before the first automatic round, let the members join the rounds topic (bounded)."""
        if self.counters["rounds"]:
            return
        wanted = len(self.members) if self.members else 1
        with trio.move_on_after(self.config.cpm.round_deadline_s):
            while self.topic_peers(self.rounds_topic) < wanted:
                await trio.sleep(TICK_S)

    # --- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        rewards = np.asarray(self.rewards, dtype=np.float64)
        return {
            "policy": self.policy_name,
            "round": self.book.statistics() if self.book else None,
            "last_round": self.last_round,
            "auto_rounds": self.config.cpm.auto_rounds,
            "rounds_closed": self.rounds_closed,
            "members": sorted(self.members) if self.members else None,
            "counters": dict(self.counters),
            "refusals": dict(self.refusals),
            "bandit_updates": self.store.seq,
            "mean_reward": float(rewards.mean()) if rewards.size else None,
            "history": self.history[-50:],
            "feedback": self.feedback_log[-200:],
            "trust": _trust_of(self.policy),
        }

    def close(self) -> None:
        self.store.close()


def _trust_of(policy: Any) -> dict[str, Any]:
    """Highest and lowest trust scores (policies with a trust tracker: knexa)."""
    trust = getattr(policy, "trust", None)
    if trust is None:
        return {}
    return {"top": [[agent, round(float(score), 4)] for agent, score in trust.top(5)],
            "bottom": [[agent, round(float(score), 4)] for agent, score in trust.bottom(5)]}


def install(daemon: RoleHost, *, policy_name: str | None = None, seed: int = 0) -> CpmService:
    """Wire a :class:`CpmService` into a CPM daemon (handler, service, commands, status)."""
    def topic_peers(name: str) -> int:
        return int(daemon.net.gossip.topics().get(name, {}).get("peers", 0))

    service = CpmService(daemon.signer, daemon.config, daemon.home.state_dir / "cpm", publish=daemon.net.publish,
                         on_event=daemon.log.event, policy_name=policy_name, seed=seed, topic_peers=topic_peers,
                         on_round=daemon.rounds.enter)
    daemon.rounds.enter(service.last_round)  # the daemon's current round is the CPM's, restored from its state
    daemon.net.set_handler(CPM_PROTOCOL, service.serve_stream)
    daemon.add_service(service.serve, name="cpm")
    daemon.add_status("cpm", service.status)

    async def round_open(args: dict[str, Any]) -> Any:
        round_ = args.get("round")
        if round_ is not None and (isinstance(round_, bool) or not isinstance(round_, int)):
            raise ValueError("round must be an integer")
        deadline = args.get("deadline_s")
        return await service.open_round(round_, float(deadline) if deadline is not None else None)

    async def cpm_status(args: dict[str, Any]) -> Any:
        return service.status()

    daemon.add_command("round-open", round_open)
    daemon.add_command("cpm-status", cpm_status)
    return service
