"""Thin trio drivers that move the exchange state machines over a framed stream.

The stream is anything with the three methods of :class:`FramedStream`: a
libp2p stream adapter (the daemon's job), :class:`.framed.TrioFramedStream`
over TCP, or an in-memory pair in tests. The package itself comes from a
callback (the learning engine builds it, with the guardrail and DP applied),
so this module imports no torch.

Each driver returns an :class:`ExchangeOutcome` and never raises for a
failed exchange: bad bytes, a closed stream, a refusal, a timeout and a
failing callback all become an outcome with a stable code. Only
cancellation from outside propagates. When this side refuses, it first
tells the other side why with a signed ``ExchangeRefused`` (best effort).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Awaitable, Callable, Protocol, TypeVar, cast

import trio

from knexa_node.crypto import Signer
from knexa_node.exchange.errors import (
    BUILD_FAILED,
    MALFORMED,
    REFUSED_BY_PEER,
    STREAM_ERROR,
    TIMEOUT,
    TOO_LARGE,
    ExchangeError,
    ExchangeOutcome,
    Role,
)
from knexa_node.exchange.frames import MAX_CONTROL_FRAME, refusal_frame
from knexa_node.exchange.policy import ExchangePolicy
from knexa_node.exchange.replay import ReplayCache
from knexa_node.exchange.states import StudentState, TeacherState
from knexa_node.exchange.student import StudentSession
from knexa_node.exchange.teacher import TeacherSession
from knexa_node.privacy.budget import PrivacyBudget
from knexa_node.wire import ExchangeRequest, PackageHeader, PairingProposal, WireError

log = logging.getLogger("knexa.exchange")
T = TypeVar("T")

# A refusal is a courtesy to the other side; never let it hold the stream open long.
REFUSAL_SEND_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 2.0


class FramedStream(Protocol):
    """One bidirectional stream of whole frames.

    ``receive`` returns one frame; raises ``trio.TooSlowError`` after ``timeout``
    seconds, ``EOFError`` when the peer closed, ``WireError("too-large")`` for a
    frame over ``max_size``. Any other exception counts as a broken stream.
    """

    async def send(self, data: bytes) -> None: ...

    async def receive(self, max_size: int, timeout: float) -> bytes: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class BuiltPackage:
    """What the learning engine returns for a proposal: the payload and what was done to it."""

    payload: bytes
    dp_epsilon: float = 0.0  # epsilon this package spends (0 without DP)
    redactions: int = 0  # guardrail redactions and drops applied


# (proposal, request) -> package: the request names the categories and the budget the student asks for.
BuildPackage = Callable[[PairingProposal, ExchangeRequest], Awaitable[BuiltPackage]]


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = trio.current_time() + seconds

    def left(self) -> float:
        return max(0.0, self.at - trio.current_time())


async def _receive(stream: FramedStream, max_size: int, deadline: _Deadline) -> bytes:
    try:
        return await stream.receive(max_size, deadline.left())
    except trio.TooSlowError:
        raise ExchangeError(TIMEOUT, "no frame before the deadline") from None
    except WireError as exc:
        raise ExchangeError(TOO_LARGE if exc.reason == "too-large" else MALFORMED, str(exc)) from None
    except EOFError:
        raise ExchangeError(STREAM_ERROR, "stream closed by the peer") from None
    except Exception as exc:  # the transport's own errors (libp2p, OS): a boundary, not a bug here
        raise ExchangeError(STREAM_ERROR, f"receive failed: {type(exc).__name__}: {exc}"[:300]) from None


async def _send(stream: FramedStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except Exception as exc:  # the transport's own errors: a boundary, not a bug here
        raise ExchangeError(STREAM_ERROR, f"send failed: {type(exc).__name__}: {exc}"[:300]) from None


async def _refuse(stream: FramedStream, signer: Signer, proposal_id: bytes, error: ExchangeError) -> None:
    if error.code in (STREAM_ERROR, TIMEOUT) or error.code.startswith(REFUSED_BY_PEER):
        return
    with trio.move_on_after(REFUSAL_SEND_TIMEOUT_S):
        try:
            await stream.send(refusal_frame(signer, proposal_id, error))
        except Exception:  # best effort: the stream may already be gone
            pass


async def _close(stream: FramedStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
        try:
            await stream.close()
        except Exception:  # closing a broken stream may fail; the outcome is already decided
            pass


def _on_disk(replay: ReplayCache, budget: PrivacyBudget | None) -> bool:
    return replay.path is not None or (budget is not None and budget.path is not None)


async def _in_worker_thread(step: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(step, *args)


async def _inline(step: Callable[..., T], *args: Any) -> T:
    # Nothing to fsync (in-memory cache and budget: tests, simulations): no thread hop, and a
    # MockClock cannot jump ahead while the trio thread waits for a worker.
    return step(*args)


def _status_of(code: str) -> str:
    return "timed-out" if code == TIMEOUT else "refused"


def _failed(role: Role, remote: str, error: ExchangeError, session: TeacherSession | StudentSession | None, started: float) -> ExchangeOutcome:
    proposal = getattr(session, "proposal", None)
    return ExchangeOutcome(
        status=_status_of(error.code),  # type: ignore[arg-type]
        role=role, peer=remote, code=error.code, reason=error.reason,
        proposal_id=proposal.proposal_id if proposal else b"", round=proposal.round if proposal else -1,
        protocol=proposal.protocol if proposal else "", elapsed_s=trio.current_time() - started,
        header_envelope=getattr(session, "header_envelope", b"") if session else b"",
    )


async def serve_exchange(
    stream: FramedStream,
    *,
    remote: str,
    signer: Signer,
    policy: ExchangePolicy,
    replay: ReplayCache,
    build_package: BuildPackage,
    current_round: int | None,
    budget: PrivacyBudget | None = None,
    clock: Callable[[], float] = time.time,
) -> ExchangeOutcome:
    """Teacher side: serve one exchange request on ``stream`` from the authenticated peer ``remote``."""
    started = trio.current_time()
    deadline = _Deadline(policy.timeout_s)
    session = TeacherSession(signer, policy, remote=remote, current_round=current_round, now=clock(), replay=replay, budget=budget)
    persisting = _in_worker_thread if _on_disk(replay, budget) else _inline
    outcome: ExchangeOutcome | None = None
    try:
        with trio.move_on_after(policy.timeout_s):
            try:
                session.check_remote()  # before reading a byte: non-members cost nothing
                request = await _receive(stream, MAX_CONTROL_FRAME, deadline)
                # Accepting the request persists it in the replay cache (fsync): off the trio thread.
                proposal = await persisting(session.receive_request, request)
                try:
                    # receive_request accepted the request, so the session holds it
                    built = await build_package(proposal, cast(ExchangeRequest, session.request))
                except Exception as exc:  # the learning engine's failure must not kill the daemon
                    log.exception("building the package for %s failed", remote)
                    raise ExchangeError(BUILD_FAILED, f"{type(exc).__name__}: {exc}"[:300]) from None
                if not isinstance(built, BuiltPackage):
                    raise ExchangeError(BUILD_FAILED, f"build_package returned {type(built).__name__}, not BuiltPackage")
                # Spending the DP budget persists it (fsync): off the trio thread. The chunks are sealed as they go.
                frames = await persisting(
                    partial(session.package_frames, built.payload, dp_epsilon=built.dp_epsilon, redactions=built.redactions))
                for frame in frames:
                    await _send(stream, frame)
                session.receive_receipt(await _receive(stream, MAX_CONTROL_FRAME, deadline))
            except ExchangeError as error:
                session.abort()
                await _refuse(stream, signer, session.proposal_id, error)
                outcome = _failed("teacher", remote, error, session, started)
        if outcome is None and session.state is not TeacherState.DONE:
            session.abort()
            outcome = _failed("teacher", remote, ExchangeError(TIMEOUT, f"exchange took over {policy.timeout_s} s"), session, started)
    finally:
        await _close(stream)
    if outcome is None:
        header = cast(PackageHeader, session.header)  # DONE is reached only after the header was sent
        outcome = ExchangeOutcome(
            status="done", role="teacher", peer=remote, proposal_id=header.proposal_id, round=header.round,
            protocol=header.protocol, payload_hash=header.payload_hash, payload_size=header.payload_size,
            dp_epsilon=header.dp_epsilon, redactions=header.redactions, elapsed_s=trio.current_time() - started,
            header_envelope=session.header_envelope, receipt_envelope=session.receipt_envelope,
        )
    _log(outcome)
    return outcome


async def fetch_package(
    stream: FramedStream,
    *,
    remote: str,
    signer: Signer,
    policy: ExchangePolicy,
    proposal_envelope: bytes,
    current_round: int | None,
    clock: Callable[[], float] = time.time,
    log_head: tuple[int, bytes] = (0, bytes(32)),
    categories: tuple[str, ...] = (),
    budget: int = 0,
    held: tuple[str, ...] = (),
) -> ExchangeOutcome:
    """Student side: fetch the package of ``proposal_envelope`` from the teacher ``remote`` over ``stream``.

    ``log_head`` (entries, head hash of this node's audit log) goes into the signed receipt;
    ``categories``, ``budget`` and ``held`` into the request (what this student asks the teacher for).
    """
    started = trio.current_time()
    deadline = _Deadline(policy.timeout_s)
    session: StudentSession | None = None
    outcome: ExchangeOutcome | None = None
    payload = b""
    try:
        with trio.move_on_after(policy.timeout_s):
            try:
                policy.membership.check(remote)
                session = StudentSession(
                    signer, policy, proposal_envelope=proposal_envelope, remote=remote, current_round=current_round, now=clock(),
                    log_head=log_head, categories=categories, budget=budget, held=held,
                )
                await _send(stream, session.request_frame())
                session.receive_header(await _receive(stream, MAX_CONTROL_FRAME, deadline))
                session.receive_stream_header(await _receive(stream, MAX_CONTROL_FRAME, deadline))
                while not session.receive_chunk(await _receive(stream, session.next_max_frame(), deadline)):
                    pass
                payload, receipt = session.finish()
                await _send(stream, receipt)
                session.receipt_sent()
            except ExchangeError as error:
                if session is not None:
                    session.abort()
                    await _refuse(stream, signer, session.proposal_id, error)
                outcome = _failed("student", remote, error, session, started)
        if outcome is None and (session is None or session.state is not StudentState.DONE):
            if session is not None:
                session.abort()
            outcome = _failed("student", remote, ExchangeError(TIMEOUT, f"exchange took over {policy.timeout_s} s"), session, started)
    finally:
        await _close(stream)
    if outcome is None:
        session = cast(StudentSession, session)  # DONE above
        header = cast(PackageHeader, session.header)  # DONE is reached only after the header was accepted
        outcome = ExchangeOutcome(
            status="done", role="student", peer=remote, proposal_id=header.proposal_id, round=header.round,
            protocol=header.protocol, payload_hash=header.payload_hash, payload_size=header.payload_size,
            dp_epsilon=header.dp_epsilon, redactions=header.redactions, elapsed_s=trio.current_time() - started,
            header_envelope=session.header_envelope, receipt_envelope=session.receipt_envelope, payload=payload,
        )
    _log(outcome)
    return outcome


def _log(outcome: ExchangeOutcome) -> None:
    level = logging.INFO if outcome.ok else logging.WARNING
    log.log(
        level, "exchange %s as %s with %s: %s %s (%.2f s, %d bytes)", outcome.proposal_id.hex()[:12] or "-",
        outcome.role, outcome.peer, outcome.status, outcome.code or "", outcome.elapsed_s, outcome.payload_size,
    )
