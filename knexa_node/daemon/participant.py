"""A node's part in the rounds: train, profile, exchange, distil, report.

One round t, as this node lives it (DESIGN.md, "Protocol"):

1. ``RoundOpen(t)`` from the trusted CPM (gossip) starts the round task.
2. Local epoch(s) on the private split; evaluation (Pass@1/5 on the local test
   set, loss on the private validation split and the public dev set); the
   profile goes to the CPM as a signed ``Profile`` over ``/knexa/cpm``.
3. Proposals arrive on gossip, and by ``ProposalQuery`` polling when gossip
   missed them. Named as teacher: nothing to do (the exchange handler serves
   the student). Named as student: fetch the sealed package, distil it, and
   send the signed ``Feedback`` with Eq. 3's reward; a failed exchange is
   reported too, so the round never waits on silence.
4. The agent's state is persisted at the end of the round.

Every step is an event line and an audit entry; every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from knexa_node.crypto import sha256
from knexa_node.daemon.learner import Learner, evaluation_point
from knexa_node.fsutil import atomic_write_text
from knexa_node.learn.agent import DistillReport
from knexa_node.net.protocols import CPM_PROTOCOL, PROPOSALS, topic
from knexa_node.wire import (
    Ack,
    Envelope,
    Feedback,
    Message,
    PairingProposal,
    Profile,
    ProposalList,
    ProposalQuery,
    RoundOpen,
    WireError,
    open_envelope,
    seal_envelope,
)

logger = logging.getLogger(__name__)

CPM_TIMEOUT_S = 30.0
CPM_RETRIES = 5
POLL_S = 1.0


class Participant:
    def __init__(self, daemon: Any, learner: Learner, exchanges: Any) -> None:
        self.daemon, self.learner, self.exchanges = daemon, learner, exchanges
        self.net, self.signer, self.config = daemon.net, daemon.signer, daemon.config
        self.cpm = self.config.consortium.cpm
        self.current_round = 0
        self.phase = "waiting"
        self.round_started: float | None = None
        self.proposals: dict[bytes, tuple[bytes, PairingProposal]] = {}
        self.handled: set[bytes] = set()
        self._finished: set[bytes] = set()
        self.metrics_path = daemon.home.state_dir / "metrics.jsonl"
        self.metrics: list[dict[str, Any]] = _read_metrics(self.metrics_path)
        self.counts = {"as_student": 0, "as_teacher": 0, "failed": 0, "bytes_received": 0}
        self.rewards: list[dict[str, Any]] = []
        self._nursery: trio.Nursery | None = None
        self._round_open = trio.Event()
        self._pending_round: RoundOpen | None = None

    # --- wiring ------------------------------------------------------------------------------------

    def install(self) -> None:
        consortium = self.config.consortium.name
        # The daemon's RoundWatcher already checks the CPM's signature and drops old rounds.
        self.daemon.rounds.add_listener(self._on_round)
        self.net.subscribe(topic(consortium, PROPOSALS), self._on_proposal)
        self.daemon.add_service(self.serve, name="rounds")
        self.daemon.add_status("learner", self.status)
        self.daemon.add_command("evaluate", self._cmd_evaluate)
        self.daemon.add_command("metrics", self._cmd_metrics)

    def _trusted(self, envelope: Envelope) -> bool:
        return not self.cpm or envelope.sender == self.cpm

    def _on_round(self, message: RoundOpen) -> None:
        if message.round > self.current_round:
            self._pending_round = message
            self._round_open.set()

    async def _on_proposal(self, envelope: Envelope, message: Message, origin: str) -> None:
        if not isinstance(message, PairingProposal) or not self._trusted(envelope):
            self.net.stats.drop("untrusted-proposal")
            return
        self._consider(envelope.to_bytes(), message)

    def _consider(self, raw: bytes, proposal: PairingProposal) -> None:
        if self.signer.peer_id not in (proposal.teacher, proposal.student):
            return
        if proposal.proposal_id in self.proposals:
            return
        self.proposals[proposal.proposal_id] = (raw, proposal)
        role = "teacher" if proposal.teacher == self.signer.peer_id else "student"
        self.daemon.log.event("proposal-received", round=proposal.round, role=role,
                              peer_id=proposal.student if role == "teacher" else proposal.teacher,
                              protocol=proposal.protocol)
        if role == "student" and proposal.round == self.current_round and self.phase in ("profiled", "exchanging"):
            self._start_student(proposal.proposal_id)

    def _start_student(self, proposal_id: bytes) -> None:
        if proposal_id in self.handled or self._nursery is None:
            return
        self.handled.add(proposal_id)
        self._nursery.start_soon(self._learn_from, proposal_id)

    # --- the round loop ----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self.learner.load()
            except Exception as exc:  # a model that does not load: visible in status and logs, the node still relays
                self.phase = "no-model"
                self.daemon.log.event("model-load-failed", error=f"{type(exc).__name__}: {exc}"[:500])
                await trio.sleep_forever()
            await self._guarded("warm-up", self._warm_up())
            while True:
                await self._round_open.wait()
                self._round_open = trio.Event()
                announcement = self._pending_round
                if announcement is None or announcement.round <= self.current_round:
                    continue
                await self._guarded(f"round {announcement.round}", self._run_round(announcement))

    async def _guarded(self, what: str, work: Any) -> None:
        """Run one round's work; a failure is logged and ends that round only, never the daemon."""
        try:
            await work
        except Exception as exc:
            self.phase = "waiting"
            self.daemon.log.event("round-failed", what=what, error=f"{type(exc).__name__}: {exc}"[:500])
            logger.exception("%s failed", what)

    async def _warm_up(self) -> None:
        epochs = self.config.learning.warmup_epochs
        if epochs and not any(m.get("phase") == "warm-up" for m in self.metrics):
            self.phase = "warm-up"
            self.daemon.log.event("warm-up", epochs=epochs)
            for _ in range(epochs):
                await self.learner.call(lambda agent: agent.local_epoch(), doing="warm-up")
            await self._evaluate(0, "warm-up")
            await self.learner.call(lambda agent: agent.save(), doing="saving")
        elif not self.metrics:
            await self._evaluate(0, "initial")
        self.phase = "waiting"

    async def _run_round(self, announcement: RoundOpen) -> None:
        round_ = announcement.round
        self.current_round, self.round_started = round_, time.time()
        self.daemon.log.event("round-start", round=round_)
        self.phase = "training"
        for _ in range(self.config.learning.epochs_per_round):
            report = await self.learner.call(lambda agent: agent.local_epoch(), doing=f"local epoch (round {round_})")
            self.daemon.log.event("local-epoch", round=round_, steps=report.steps, loss=round(report.mean_loss, 4),
                                  seconds=round(report.seconds, 2))
        self.phase = "evaluating"
        metrics = await self._evaluate(round_, "after-local")
        vector = await self.learner.call(lambda agent: agent.profile(
            pass1=metrics["pass1"], pass5=metrics["pass5"], val_loss=metrics["val_loss"], dev_loss=metrics["dev_loss"]),
            doing="profile")
        agent = self.learner.agent
        if agent is None:  # learner.call above succeeded, so the model is loaded
            raise RuntimeError("the learner has no agent")
        profile = Profile(round=round_, vector=tuple(float(x) for x in vector), model_type=agent.model_type,
                          tokenizer_id=agent.tokenizer_fingerprint(), addrs=tuple(self.net.dialable_addrs()))
        answer = await self._ask_cpm(profile)
        if not (isinstance(answer, Ack) and answer.ok):
            self.daemon.log.event("profile-refused", round=round_, answer=_describe(answer))
            self.phase = "waiting"
            await self.learner.call(lambda agent: agent.finish_round(), doing="saving")
            return
        self.phase = "profiled"
        self.daemon.log.event("profile-sent", round=round_)
        for proposal_id, (_, proposal) in list(self.proposals.items()):
            if proposal.round == round_ and proposal.student == self.signer.peer_id:
                self._start_student(proposal_id)
        await self._follow_round(round_)
        await self.learner.call(lambda agent: agent.finish_round(), doing="saving")
        self.phase = "waiting"
        self.daemon.log.event("round-done", round=round_, seconds=round(time.time() - (self.round_started or 0), 1))

    async def _follow_round(self, round_: int) -> None:
        """Poll the CPM until the round is paired, then until our student exchanges are done."""
        paired = False
        while True:
            answer = await self._ask_cpm(ProposalQuery(round=round_))
            if isinstance(answer, ProposalList):
                for raw in answer.proposals:
                    try:
                        envelope, message = open_envelope(raw, expect=(PairingProposal,))
                    except WireError:
                        continue
                    if isinstance(message, PairingProposal) and self._trusted(envelope) and message.round == round_:
                        self._consider(raw, message)
                paired = answer.phase in ("paired", "closed", "unknown")
            mine = [pid for pid, (_, p) in self.proposals.items() if p.round == round_ and p.student == self.signer.peer_id]
            for pid in mine:
                self._start_student(pid)
            if paired and all(pid in self.handled and pid in self._finished for pid in mine):
                return
            if self._pending_round is not None and self._pending_round.round > round_:
                return  # the CPM moved on
            await trio.sleep(POLL_S)

    async def _learn_from(self, proposal_id: bytes) -> None:
        raw, proposal = self.proposals[proposal_id]
        self.phase = "exchanging"
        try:
            outcome = await self.exchanges.fetch(raw, proposal)
            if not outcome.ok:
                self.counts["failed"] += 1
                await self._report(Feedback.failure(proposal_id, proposal.round))
                return
            self.counts["as_student"] += 1
            self.counts["bytes_received"] += outcome.payload_size
            data = self.learner.data
            payload = outcome.payload or b""
            try:
                report: DistillReport = await self.learner.call(
                    lambda agent: agent.distill(payload, data.transfer, dev=data.dev,
                                                max_package_bytes=int(self.config.exchange.max_package_mb * 1024 * 1024)),
                    doing=f"distilling (round {proposal.round})")
            except Exception as exc:  # a package the learner cannot use: audited, reported as failed
                await self.exchanges.record_distillation(outcome, None, error=f"{type(exc).__name__}: {exc}")
                raise
            await self.exchanges.record_distillation(outcome, report)
            on_dev = self.config.learning.reward_on == "dev" and report.reward_dev is not None
            reward = report.reward_dev if on_dev else report.reward
            before = report.dev_loss_pre if on_dev else report.loss_pre
            after = report.dev_loss_post if on_dev else report.loss_post
            self.daemon.log.event("distilled", round=proposal.round, teacher=proposal.teacher, reward=round(reward, 5),
                                  loss_before=round(before, 4), loss_after=round(after, 4), items=report.items_used,
                                  seconds=round(report.seconds, 2))
            feedback = Feedback(proposal_id, proposal.round, float(reward), float(before), float(after),
                                int(outcome.payload_size), sha256(outcome.receipt_envelope))
            answer = await self._report(feedback)
            accepted = isinstance(answer, Ack) and answer.ok
            await self.exchanges.record_reward(proposal, feedback, outcome="ok" if accepted else "refused")
            self.rewards.append({"round": proposal.round, "teacher": proposal.teacher, "reward": reward,
                                 "accepted": accepted, **{k: v for k, v in asdict(report).items() if isinstance(v, (int, float))}})
        except Exception as exc:  # distillation or reporting failed: logged and reported, never fatal
            self.counts["failed"] += 1
            self.daemon.log.event("exchange-error", round=proposal.round, error=f"{type(exc).__name__}: {exc}"[:300])
            await self._report(Feedback.failure(proposal_id, proposal.round))
        finally:
            self._finished.add(proposal_id)

    async def _report(self, feedback: Feedback) -> Message | None:
        answer = await self._ask_cpm(feedback)
        self.daemon.log.event("feedback-sent", round=feedback.round, reward=round(feedback.reward, 5),
                              failed=feedback.package_bytes == 0, answer=_describe(answer))
        return answer

    async def _ask_cpm(self, message: Message) -> Message | None:
        """One signed request to the CPM, retried with backoff; None if it never answered."""
        data = seal_envelope(self.signer, message).to_bytes()
        delay = 0.5
        for attempt in range(CPM_RETRIES):
            try:
                raw = await self.net.request(self.cpm, CPM_PROTOCOL, data, timeout=CPM_TIMEOUT_S)
                envelope, answer = open_envelope(raw, expect=(Ack, ProposalList))
                if envelope.sender != self.cpm:
                    raise WireError("bad-sender", "answer not signed by the CPM")
                return answer
            except Exception as exc:  # network or peer failure: retry, then give up visibly
                self.daemon.log.event("cpm-unreachable", attempt=attempt + 1, error=f"{type(exc).__name__}: {exc}"[:200])
                await trio.sleep(delay)
                delay = min(delay * 2, 8.0)
        return None

    # --- evaluation and status ---------------------------------------------------------------------

    async def _evaluate(self, round_: int, phase: str) -> dict[str, Any]:
        data = self.learner.data
        metrics = await self.learner.call(lambda agent: evaluation_point(agent, data, round_, phase),
                                          doing=f"evaluating ({phase})")
        self.metrics.append(metrics)
        atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in self.metrics))
        self.daemon.log.event("evaluated", round=round_, phase=phase, pass1=round(metrics["pass1"], 4),
                              val_loss=round(metrics["val_loss"], 4), dev_loss=round(metrics["dev_loss"], 4))
        return metrics

    async def _cmd_evaluate(self, args: dict[str, Any]) -> Any:
        return await self._evaluate(self.current_round, str(args.get("phase", "final"))[:32])

    async def _cmd_metrics(self, args: dict[str, Any]) -> Any:
        return {"metrics": self.metrics, "rewards": self.rewards, "counts": self.counts}

    def status(self) -> dict[str, Any]:
        running = time.time() - self.round_started if self.round_started and self.phase != "waiting" else 0.0
        return {
            "round": self.current_round,
            "phase": self.phase,
            "round_running_s": round(running, 1),
            "learner": self.learner.status(),
            "last_metrics": self.metrics[-1] if self.metrics else None,
            "counts": dict(self.counts),
            "rewards": self.rewards[-20:],
        }


def _describe(answer: Message | None) -> str:
    if answer is None:
        return "no answer"
    if isinstance(answer, Ack):
        return "ok" if answer.ok else f"refused {answer.code}: {answer.reason}"
    return type(answer).__name__


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return []  # an unreadable metrics history is only a report; training state lives elsewhere
