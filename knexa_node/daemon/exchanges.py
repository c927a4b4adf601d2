"""The knowledge exchange inside the node daemon: teacher handler, student fetch, audit log, checkpoints.

    service = ExchangeService(daemon, agent_call, transfer, private_texts, current_round)
    service.install()                              # handler, status section, checkpoint topic, shutdown
    outcome = await service.fetch(envelope, proposal)          # student side
    await service.record_distillation(outcome, report)         # after distilling
    await service.record_reward(proposal, feedback)            # after the CPM acked the feedback

``agent_call(fn)`` runs ``fn(agent)`` in a worker thread under the agent's
lock and returns its result (the learner owns the agent; this module never
touches it directly, so it imports no torch).

The service owns, in the node's home: the replay cache and the privacy
budget (``state/``), the signed exchange log and the checkpoint store
(``audit/``). Every exchange, on either side, ends in one outcome that is
logged as a daemon event and written to the audit log before anything else
happens with it; audit failures are logged and counted, never raised into
the network handler. After each completed exchange (or every
``checkpoint_every`` entries) a signed checkpoint of the log's head is
stored and published on the consortium's checkpoints topic; checkpoints of
members arriving on that topic are kept in the store, so that an auditor
can later hold each node's log against what others saw.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import ExitStack
from typing import Any, Protocol, TypeVar

import trio

from knexa_node.audit import (
    AuditError,
    AuditLog,
    Checkpointer,
    CheckpointStore,
    Entry,
    Event,
    checkpoint_path,
    events,
)
from knexa_node.audit.entry import FAILED, OK
from knexa_node.daemon.packaging import Packager
from knexa_node.daemon.refusals import RefusalGate
from knexa_node.daemon.role import RoleHost
from knexa_node.exchange.driver import BuiltPackage, fetch_package, serve_exchange
from knexa_node.exchange.errors import (
    FORGED_PROPOSAL,
    MALFORMED,
    NON_MEMBER,
    STREAM_ERROR,
    TIMEOUT,
    ExchangeError,
    ExchangeOutcome,
)
from knexa_node.exchange.policy import ExchangePolicy
from knexa_node.exchange.proposals import check_proposal
from knexa_node.exchange.replay import ReplayCache
from knexa_node.fsutil import private_dir
from knexa_node.learn.problems import Problem
from knexa_node.net.errors import NetError, StreamClosed, StreamTimeout
from knexa_node.net.protocols import CHECKPOINTS, EXCHANGE_PROTOCOL, topic
from knexa_node.net.streams import FramedStream
from knexa_node.privacy.budget import PrivacyBudget
from knexa_node.wire import (
    Checkpoint,
    Envelope,
    ExchangeRequest,
    Feedback,
    Message,
    PackageHeader,
    PairingProposal,
    WireError,
    open_envelope,
)
from knexa_node.wire.messages import newest_held

log = logging.getLogger("knexa.daemon.exchanges")

T = TypeVar("T")
AgentCall = Callable[[Callable[[Any], T]], Awaitable[T]]
"""``await agent_call(fn)``: ``fn(agent)`` in a worker thread, under the agent's lock."""
CurrentRound = Callable[[], "int | None"]

DEFAULT_CHECKPOINT_EVERY = 16
# Proposals fetched and not yet distilled, remembered for record_distillation (bounded).
_MAX_PENDING = 256
_MAX_PROPOSAL_ENVELOPE = 64 * 1024


class DistillResult(Protocol):
    """What :meth:`ExchangeService.record_distillation` reads (``knexa_node.learn.agent.DistillReport``)."""

    loss_pre: float
    loss_post: float
    steps: int
    seconds: float


class Libp2pExchangeStream:
    """The exchange driver's stream protocol over the network's :class:`FramedStream`.

    The driver expects ``trio.TooSlowError`` for a deadline and ``EOFError``
    for a closed stream (its codes ``timeout`` / ``stream-error``); the
    network layer raises its own typed errors, translated here.
    """

    def __init__(self, stream: FramedStream) -> None:
        self.stream = stream

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def receive(self, max_size: int, timeout: float) -> bytes:
        try:
            return await self.stream.receive(max_size, timeout)
        except StreamTimeout:
            raise trio.TooSlowError from None
        except StreamClosed as exc:
            raise EOFError(str(exc)) from None

    async def close(self) -> None:
        await self.stream.close()


class ExchangeStats:
    """Counters behind the ``exchanges`` status section."""

    def __init__(self) -> None:
        self.by_outcome: dict[str, Counter] = {"teacher": Counter(), "student": Counter()}
        self.by_code: dict[str, Counter] = {"teacher": Counter(), "student": Counter()}
        self.bytes_sent = 0
        self.bytes_received = 0
        self.redactions = 0  # guardrail actions in packages that left this node
        self.audit_errors = 0
        self.checkpoints_published = 0
        self.checkpoints_received = 0

    def add(self, outcome: ExchangeOutcome, sent: int, received: int) -> None:
        self.by_outcome[outcome.role][outcome.status] += 1
        if outcome.code:
            self.by_code[outcome.role][outcome.code] += 1
        self.bytes_sent += sent
        self.bytes_received += received
        if outcome.role == "teacher" and outcome.header_envelope:
            self.redactions += outcome.redactions


class ExchangeService:
    """One node's exchanges: both roles, their audit trail, and their status."""

    def __init__(self, daemon: RoleHost, agent_call: AgentCall, transfer: Sequence[Problem], private_texts: Iterable[str],
                 current_round: CurrentRound, *, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                 packager: Packager | None = None, clock: Callable[[], float] = time.time) -> None:
        self.daemon = daemon
        self.signer = daemon.signer
        self.agent_call = agent_call
        self.current_round = current_round
        self.clock = clock
        config, home = daemon.config, daemon.home
        self.policy = ExchangePolicy.from_config(config)
        self.packager = packager or Packager(config.privacy, transfer, private_texts,
                                             max_package_bytes=self.policy.max_package_bytes,
                                             budget=config.learning.exchange_budget)
        self.stats = ExchangeStats()
        self.refusals = RefusalGate()  # outsiders' refusals reach the audit log at most once per peer per minute
        self._pending: OrderedDict[bytes, PairingProposal] = OrderedDict()
        # AuditLog and CheckpointStore are not thread-safe; appends (fsync) run in a thread, one at a time.
        self._audit_lock = trio.Lock()
        self._installed = False
        self._closed = False
        self._teacher_listeners: list[Callable[[ExchangeOutcome], None]] = []
        private_dir(home.state_dir)
        with ExitStack() as stack:
            self.replay = ReplayCache.in_state_dir(home.state_dir)
            self.budget = PrivacyBudget.in_state_dir(home.state_dir, total=config.privacy.dp_budget_total,
                                                     per_peer=config.privacy.dp_budget_per_peer)
            self.audit = stack.enter_context(AuditLog.open_home(home, self.signer))
            self.checkpoints = stack.enter_context(CheckpointStore.open(checkpoint_path(home)))
            self._closer = stack.pop_all()
        self.checkpointer = Checkpointer(self.audit, self.signer, every=checkpoint_every)
        self.checkpoint_topic = topic(config.consortium.name, CHECKPOINTS)

    # --- wiring into the daemon ------------------------------------------------------------------

    def add_teacher_listener(self, listener: Callable[[ExchangeOutcome], None]) -> None:
        """Call ``listener(outcome)`` once each exchange this node served as teacher has ended (any outcome)."""
        self._teacher_listeners.append(listener)

    def install(self) -> None:
        """Serve ``/knexa/exchange/1.0.0``, add the ``exchanges`` status, follow checkpoints, close on shutdown."""
        if self._installed:
            raise RuntimeError("the exchange service is already installed")
        self._installed = True
        self.daemon.net.set_handler(EXCHANGE_PROTOCOL, self._serve)
        self.daemon.net.subscribe(self.checkpoint_topic, self._on_checkpoint)
        self.daemon.add_status("exchanges", self.status)
        self.daemon.add_service(self.serve, name="exchanges")

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The daemon service: nothing to run, but the audit files close when the daemon stops."""
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            # Let an append already in its worker thread finish before its file closes under it.
            held = False
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._audit_lock.acquire()
                held = True
            self.close()
            if held:
                self._audit_lock.release()

    def close(self) -> None:
        self._closed = True
        self._closer.close()

    def __enter__(self) -> ExchangeService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- teacher side ------------------------------------------------------------------------------

    async def _serve(self, stream: FramedStream, remote: str) -> None:
        outcome = await serve_exchange(
            Libp2pExchangeStream(stream), remote=remote, signer=self.signer, policy=self.policy, replay=self.replay,
            build_package=self._build, current_round=self.current_round(), budget=self.budget, clock=self.clock,
        )
        if outcome.code == NON_MEMBER:
            await self._refused_outsider(outcome, stream)
            return
        await self._finish(outcome, stream.bytes_sent, stream.bytes_received)

    async def _refused_outsider(self, outcome: ExchangeOutcome, stream: FramedStream) -> None:
        """A stream from outside the consortium: always counted, logged and audited at most once per peer per interval."""
        net_stats = self.daemon.net.stats
        net_stats.stream_errors[f"{EXCHANGE_PROTOCOL} {NON_MEMBER}"] += 1
        suppressed = self.refusals.admit(outcome.peer, trio.current_time())
        if suppressed is None:
            net_stats.refusals_unlogged += 1
            self.stats.add(outcome, stream.bytes_sent, stream.bytes_received)
            return
        await self._finish(outcome, stream.bytes_sent, stream.bytes_received, extra={"suppressed": suppressed})

    async def _build(self, proposal: PairingProposal, request: ExchangeRequest) -> BuiltPackage:
        self.daemon.log.event("request-received", proposal_id=proposal.proposal_id.hex(), round=proposal.round,
                              peer_id=proposal.student, categories=list(request.categories), budget=request.budget,
                              held=len(request.held))
        return await self.agent_call(lambda agent: self.packager.build(agent, proposal, request))

    # --- student side ------------------------------------------------------------------------------

    async def fetch(self, proposal_envelope: bytes, proposal: PairingProposal, *, categories: tuple[str, ...] = (),
                    budget: int = 0, held: tuple[str, ...] = ()) -> ExchangeOutcome:
        """Fetch the package of ``proposal`` from its teacher; never raises for a failed exchange.

        ``proposal`` must be the message inside ``proposal_envelope`` (the CPM's
        signed bytes, which the teacher checks again); ``categories``,
        ``budget`` and ``held`` are what the request asks for (``held``: the
        newest that fit a request, :func:`~knexa_node.wire.messages.newest_held`). The outcome is logged and
        audited before it is returned; ``outcome.payload`` holds the package
        when ``outcome.ok``.
        """
        started = trio.current_time()
        teacher = proposal.teacher
        sent = received = 0
        current = self.current_round()
        try:
            # Everything checkable here is checked before dialing: a bad proposal costs the teacher nothing.
            self._precheck(proposal_envelope, proposal, current)
            stream = await self.daemon.net.open_request(teacher, EXCHANGE_PROTOCOL, timeout=min(self.policy.timeout_s, 60.0))
        except ExchangeError as exc:
            outcome = _student_failure(proposal, exc.code, exc.reason, started)
        except NetError as exc:
            outcome = _student_failure(proposal, TIMEOUT if isinstance(exc, StreamTimeout) else STREAM_ERROR, str(exc), started)
        else:
            async with self._audit_lock:  # the receipt pins the log's head: read both halves of it together
                head = (self.audit.count, self.audit.head_hash)
            outcome = await fetch_package(
                Libp2pExchangeStream(stream), remote=teacher, signer=self.signer, policy=self.policy,
                proposal_envelope=proposal_envelope, current_round=current, clock=self.clock, log_head=head,
                categories=categories, budget=budget, held=newest_held(held),
            )
            sent, received = stream.bytes_sent, stream.bytes_received
        if outcome.ok:
            self._pending[proposal.proposal_id] = proposal
            while len(self._pending) > _MAX_PENDING:
                self._pending.popitem(last=False)
        await self._finish(outcome, sent, received)
        return outcome

    def _precheck(self, proposal_envelope: bytes, proposal: PairingProposal, current_round: int | None) -> None:
        """Raise :class:`ExchangeError` for a proposal the teacher would refuse anyway (same codes)."""
        try:
            _, message = open_envelope(proposal_envelope, max_size=_MAX_PROPOSAL_ENVELOPE, expect=(PairingProposal,))
        except WireError as exc:
            raise ExchangeError(FORGED_PROPOSAL, f"not a valid signed proposal ({exc.reason})") from None
        if message != proposal:
            raise ExchangeError(MALFORMED, "the proposal does not match its signed envelope")
        self.policy.membership.check(proposal.teacher)
        check_proposal(proposal_envelope, cpm=self.policy.cpm, me=self.signer.peer_id, remote=proposal.teacher,
                       my_role="student", current_round=current_round, now=self.clock(),
                       clock_skew_s=self.policy.clock_skew_s)

    async def record_distillation(self, outcome: ExchangeOutcome, report: DistillResult | None, *,
                                  error: str = "") -> Entry | None:
        """Audit the distillation of a fetched package: ``report`` from the agent, or None and ``error`` if it failed."""
        proposal = self._pending.pop(outcome.proposal_id, None)
        if proposal is None:
            raise ValueError("not a completed exchange fetched by this service (or already recorded)")
        if report is None:
            event = events.distillation(proposal, loss_before=0.0, loss_after=0.0, steps=0, seconds=0.0, outcome=FAILED,
                                        extra={"error": (error or "distillation failed")[:200]})
        else:
            extra: dict[str, float | int] = {}
            for name, key in (("reward", "reward"), ("items_used", "items_used"), ("alpha", "alpha"),
                              ("temperature", "temperature"), ("dev_loss_pre", "dev_loss_before"),
                              ("dev_loss_post", "dev_loss_after"), ("reward_dev", "reward_dev"),
                              ("reward_covered", "reward_covered"), ("items_failed", "items_failed"),
                              ("claims_failed", "claims_failed")):
                value = getattr(report, name, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    extra[key] = value
            event = events.distillation(proposal, loss_before=report.loss_pre, loss_after=report.loss_post,
                                        steps=report.steps, seconds=report.seconds, extra=extra)
        self.daemon.log.event("distillation-recorded", proposal_id=outcome.proposal_id.hex(), round=outcome.round,
                              ok=report is not None, error=error[:200] if report is None else "")
        return await self._append(event)

    async def record_reward(self, proposal: PairingProposal, feedback: Feedback, *, outcome: str = OK) -> Entry | None:
        """Audit the reward reported to the CPM for ``proposal`` (``outcome`` "ok" once the CPM acked it)."""
        if feedback.proposal_id != proposal.proposal_id:
            raise ValueError("feedback is for another proposal")
        self.daemon.log.event("reward-recorded", proposal_id=proposal.proposal_id.hex(), round=proposal.round,
                              reward=feedback.reward, outcome=outcome)
        return await self._append(events.reward_reported(feedback, proposal.teacher, outcome=outcome))

    # --- outcome, audit, checkpoints ----------------------------------------------------------------

    async def _finish(self, outcome: ExchangeOutcome, sent: int, received: int, *,
                      extra: dict[str, int] | None = None) -> None:
        self.daemon.log.event(
            "exchange", role=outcome.role, peer=outcome.peer, status=outcome.status, code=outcome.code or "-",
            reason=outcome.reason[:200], proposal_id=outcome.proposal_id.hex() or "-", round=outcome.round,
            protocol=outcome.protocol or "-", package_bytes=outcome.payload_size, dp_epsilon=outcome.dp_epsilon,
            redactions=outcome.redactions, seconds=round(outcome.elapsed_s, 3), **(extra or {}),
        )
        for event in self._events_of(outcome):
            if extra:
                event = dataclasses.replace(event, metrics={**event.metrics, **extra})
            await self._append(event)
        # Counted once on the record, so a status that shows an exchange implies its audit entries.
        self.stats.add(outcome, sent, received)
        await self._checkpoint(round_closed=outcome.ok)
        if outcome.role == "teacher":
            for listener in self._teacher_listeners:
                listener(outcome)

    def _events_of(self, outcome: ExchangeOutcome) -> list[Event]:
        try:
            found = [events.from_exchange_outcome(outcome)]
        except Exception as exc:  # an outcome the audit schema rejects (e.g. an unparsable peer) is still logged
            self._audit_failed("outcome", exc)
            return []
        if outcome.role == "teacher" and outcome.ok:
            header = _header_of(outcome.header_envelope)
            if header is not None and header.dp_epsilon > 0:
                found.append(events.dp_epsilon_spent(header, delta=self.policy.dp_delta,
                                                     epsilon_total=self.budget.total.epsilon))
            if header is not None and header.redactions > 0:
                found.append(events.guardrail_redactions(header))
        return found

    async def _append(self, event: Event) -> Entry | None:
        async with self._audit_lock:
            if self._closed:
                self._audit_failed(event.kind, AuditError("closed", "the exchange service is closed (daemon stopping)"))
                return None
            try:
                return await trio.to_thread.run_sync(self.audit.append, event)
            except (AuditError, OSError) as exc:
                self._audit_failed(event.kind, exc)
                return None

    def _audit_failed(self, what: str, exc: BaseException) -> None:
        self.stats.audit_errors += 1
        log.error("audit entry for %s not written: %s", what, exc)
        self.daemon.log.event("audit-error", entry=what, error=f"{type(exc).__name__}: {exc}"[:300])

    async def _checkpoint(self, *, round_closed: bool) -> None:
        async with self._audit_lock:
            if self._closed:
                return
            try:
                envelope = self.checkpointer.maybe(round_closed=round_closed)
                if envelope is None:
                    return
                await trio.to_thread.run_sync(self.checkpoints.add, envelope.to_bytes())
            except (AuditError, OSError, WireError) as exc:
                self._audit_failed("checkpoint", exc)
                return
        try:
            await self.daemon.net.publish(self.checkpoint_topic, envelope.to_bytes())
        except Exception as exc:  # gossip is best effort; the checkpoint is stored either way
            self.daemon.log.event("checkpoint-publish-failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return
        self.stats.checkpoints_published += 1
        self.daemon.log.event("checkpoint-published", seq=self.audit.head_seq, round=self.audit.head_round)

    async def _on_checkpoint(self, envelope: Envelope, message: Message, origin: str) -> None:
        if not isinstance(message, Checkpoint):
            self.daemon.net.stats.drop("unexpected-type")
            return
        if not self.policy.membership.is_member(envelope.sender):
            self.daemon.net.stats.drop("checkpoint-non-member")
            return
        async with self._audit_lock:
            if self._closed:
                return
            try:
                await trio.to_thread.run_sync(self.checkpoints.add, envelope.to_bytes())
            except (AuditError, OSError, WireError) as exc:
                self._audit_failed("received-checkpoint", exc)
                return
        self.stats.checkpoints_received += 1
        if self.checkpoints.conflicts(envelope.sender):
            self.daemon.log.event("checkpoint-equivocation", peer=envelope.sender, seq=message.seq)

    # --- status ---------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``exchanges`` section of ``knexa-node status``."""
        s = self.stats
        return {
            "served": s.by_outcome["teacher"]["done"],  # packages sent, receipt in hand
            "fetched": s.by_outcome["student"]["done"],  # packages received and verified
            "counts": {role: dict(c) for role, c in s.by_outcome.items()},
            "codes": {role: dict(c) for role, c in s.by_code.items()},
            "bytes_sent": s.bytes_sent,
            "bytes_received": s.bytes_received,
            "epsilon_spent": self.budget.total.epsilon,
            "budget": self.budget.snapshot(),
            "guardrail_redactions": s.redactions,
            "guardrail_by_kind": dict(self.packager.guardrail.totals),
            "audit": {"entries": self.audit.count, "head_round": self.audit.head_round, "errors": s.audit_errors,
                      "last_checkpoint_seq": self.checkpointer.last_seq, "checkpoints_stored": len(self.checkpoints),
                      "checkpoints_published": s.checkpoints_published,
                      "checkpoints_received": s.checkpoints_received},
            "pending_distillations": len(self._pending),
        }


def _student_failure(proposal: PairingProposal, code: str, reason: str, started: float) -> ExchangeOutcome:
    return ExchangeOutcome(
        status="timed-out" if code == TIMEOUT else "refused", role="student", peer=proposal.teacher, code=code,
        reason=reason[:300], proposal_id=proposal.proposal_id, round=proposal.round, protocol=proposal.protocol,
        elapsed_s=trio.current_time() - started,
    )


def _header_of(header_envelope: bytes) -> PackageHeader | None:
    try:
        _, message = open_envelope(header_envelope, max_size=len(header_envelope) + 1, expect=(PackageHeader,))
    except WireError:
        return None
    return message if isinstance(message, PackageHeader) else None
