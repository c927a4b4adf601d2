"""The teacher's side of an exchange as a sans-I/O state machine.

States (``state``, a :class:`~.states.TeacherState`), in order::

    await-request --receive_request--> build --package_frames--> sending --(final chunk)--> await-receipt
        --receive_receipt--> done

The transitions are the literal table :data:`~.states.TEACHER_TRANSITIONS`; a
call out of order raises :class:`~.errors.ExchangeStateError`. Any method
raising :class:`ExchangeError` moves to ``failed``. Checks that
need no model work (membership, proposal, replay, budget) all happen before
``build``, so a non-member or a bad proposal costs the teacher no compute.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, cast

from knexa_node.crypto import Signer
from knexa_node.exchange.errors import (
    BAD_RECEIPT,
    BUDGET_EXCEEDED,
    BUILD_FAILED,
    MALFORMED,
    REPLAYED_PROPOSAL,
    WRONG_RECIPIENT,
    ExchangeError,
)
from knexa_node.exchange.frames import MAX_CONTROL_FRAME, malformed, open_peer_frame
from knexa_node.exchange.policy import ExchangePolicy
from knexa_node.exchange.proposals import check_proposal
from knexa_node.exchange.replay import ReplayCache
from knexa_node.exchange.sealing import (
    CHUNK_SIZE,
    ChunkSealer,
    EphemeralKey,
    SealingError,
    check_public_key,
    chunk_count,
    sealed_size,
    teacher_package_key,
)
from knexa_node.exchange.states import TeacherEvent, TeacherState, teacher_machine
from knexa_node.privacy.budget import BudgetExceeded, PrivacyBudget
from knexa_node.wire import (
    ExchangeRequest,
    PackageHeader,
    PairingProposal,
    Receipt,
    WireError,
    open_envelope,
    seal_envelope,
)

REPLAY_KIND = "proposal"


class TeacherSession:
    def __init__(
        self,
        signer: Signer,
        policy: ExchangePolicy,
        *,
        remote: str,
        current_round: int | None,
        now: float,
        replay: ReplayCache,
        budget: PrivacyBudget | None = None,
    ) -> None:
        self.signer = signer
        self.policy = policy
        self.remote = remote
        self.current_round = current_round
        self.now = now
        self.replay = replay
        self.budget = budget
        self._machine = teacher_machine()
        self.proposal: PairingProposal | None = None
        self.request: ExchangeRequest | None = None  # the accepted request: what the student asks for
        self.header: PackageHeader | None = None
        self.header_envelope: bytes = b""
        self.receipt_envelope: bytes = b""
        self._student_ephemeral = b""

    @property
    def state(self) -> TeacherState:
        return self._machine.state

    @property
    def proposal_id(self) -> bytes:
        return self.proposal.proposal_id if self.proposal else b""

    def abort(self) -> None:
        """Mark the exchange failed (the driver's stream broke, timed out, or a step raised)."""
        self._machine.fire(TeacherEvent.FAIL)

    def _fail(self, error: ExchangeError) -> ExchangeError:
        self.abort()
        return error

    def check_remote(self) -> None:
        """Membership of the stream's authenticated peer: call before reading anything."""
        try:
            self.policy.membership.check(self.remote)
        except ExchangeError as exc:
            raise self._fail(exc) from None

    def receive_request(self, frame: bytes) -> PairingProposal:
        """Verify the request and its proposal, record it as served, check the DP budget."""
        self._machine.require(TeacherEvent.REQUEST)
        try:
            self.check_remote()
            try:
                envelope, request = open_envelope(frame, max_size=MAX_CONTROL_FRAME, expect=(ExchangeRequest,))
            except WireError as exc:
                raise malformed(exc, "exchange request") from None
            if not isinstance(request, ExchangeRequest):  # open_envelope's `expect` makes this unreachable
                raise ExchangeError(MALFORMED, f"expected an exchange request, got {type(request).__name__}")
            if envelope.sender != self.remote:
                raise ExchangeError(WRONG_RECIPIENT, f"request signed by {envelope.sender}, stream is from {self.remote}")
            try:  # before the budget and the model work: a key nobody can seal for makes both wasted
                check_public_key(request.ephemeral_key)
            except SealingError as exc:
                raise ExchangeError(WRONG_RECIPIENT, f"cannot seal for the student: {exc}") from None
            proposal = check_proposal(
                request.proposal, cpm=self.policy.cpm, me=self.signer.peer_id, remote=self.remote,
                my_role="teacher", current_round=self.current_round, now=self.now, clock_skew_s=self.policy.clock_skew_s,
            )
            self.proposal = proposal
            if self.budget is not None and self.policy.dp_enabled:
                try:
                    self.budget.check(self.remote, self.policy.dp_epsilon)
                except BudgetExceeded as exc:
                    raise ExchangeError(BUDGET_EXCEEDED, str(exc)) from None
            # Recorded last, once everything else passed, and persisted before any work.
            if not self.replay.add(REPLAY_KIND, proposal.round, proposal.proposal_id):
                raise ExchangeError(REPLAYED_PROPOSAL, "this proposal was already served (or is older than the replay horizon)")
        except ExchangeError as exc:
            raise self._fail(exc) from None
        self._student_ephemeral = request.ephemeral_key
        self.request = request
        self._machine.fire(TeacherEvent.REQUEST)
        return proposal

    def package_frames(self, payload: bytes, *, dp_epsilon: float = 0.0, redactions: int = 0) -> Iterator[bytes]:
        """Spend the DP budget and sign the header now; return the frames: that header, the stream header, each chunk.

        The chunks come from a generator, so that a 64 MiB payload is sealed one
        chunk at a time as the driver sends.
        """
        self._machine.require(TeacherEvent.PACKAGE)
        proposal = cast(PairingProposal, self.proposal)  # BUILD is entered only with an accepted proposal
        try:
            if self.policy.dp_enabled and dp_epsilon <= 0:
                raise ExchangeError(BUILD_FAILED, "DP is enabled but the package was built without noise")
            if self.budget is not None and dp_epsilon > 0:
                try:
                    self.budget.spend(self.remote, dp_epsilon, self.policy.dp_delta)
                except BudgetExceeded as exc:
                    raise ExchangeError(BUDGET_EXCEEDED, str(exc)) from None
            ephemeral = EphemeralKey()
            key = teacher_package_key(
                ephemeral, student_ephemeral=self._student_ephemeral, proposal_id=proposal.proposal_id,
                round=proposal.round, teacher=proposal.teacher, student=proposal.student, protocol=proposal.protocol,
            )
        except SealingError as exc:
            raise self._fail(ExchangeError(WRONG_RECIPIENT, f"cannot seal for the student: {exc}")) from None
        except ExchangeError as exc:
            raise self._fail(exc) from None
        teacher_ephemeral = ephemeral.public
        del ephemeral  # forward secrecy: the one-time secret lives only inside `key` from here
        n_chunks = chunk_count(len(payload))
        self.header = PackageHeader(
            proposal_id=proposal.proposal_id, round=proposal.round, teacher=proposal.teacher, student=proposal.student,
            protocol=proposal.protocol, payload_hash=hashlib.sha256(payload).digest(), payload_size=sealed_size(len(payload)),
            chunks=n_chunks, ephemeral_key=teacher_ephemeral, dp_epsilon=float(dp_epsilon), redactions=int(redactions),
        )
        envelope = seal_envelope(self.signer, self.header)
        self.header_envelope = envelope.to_bytes()
        sealer = key.sealer(envelope.digest)
        self._machine.fire(TeacherEvent.PACKAGE)
        return self._frames(self.header_envelope, sealer, payload, n_chunks)

    def _frames(self, header_envelope: bytes, sealer: ChunkSealer, payload: bytes, n_chunks: int) -> Iterator[bytes]:
        yield header_envelope
        yield sealer.stream_header
        view = memoryview(payload)
        for index in range(n_chunks):
            last = index == n_chunks - 1
            sealed = sealer.seal(bytes(view[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]), final=last)
            if last:  # before the yield: a consumer may stop at the final chunk
                self._machine.fire(TeacherEvent.FINAL_CHUNK)
            yield sealed

    def receive_receipt(self, frame: bytes) -> Receipt:
        """Check the student's signed receipt names exactly this package."""
        self._machine.require(TeacherEvent.RECEIPT)
        header = cast(PackageHeader, self.header)  # set before SENDING, so in AWAIT_RECEIPT
        try:
            _, message = open_peer_frame(frame, remote=self.remote, expect=Receipt, what="receipt", wrong_signer=BAD_RECEIPT)
            expected = (header.proposal_id, header.round, header.teacher, header.student, header.payload_hash, header.payload_size)
            got = (message.proposal_id, message.round, message.teacher, message.student, message.payload_hash, message.payload_size)
            if got != expected:
                raise ExchangeError(BAD_RECEIPT, "receipt does not name the package that was sent")
        except ExchangeError as exc:
            raise self._fail(exc) from None
        self.receipt_envelope = frame
        self._machine.fire(TeacherEvent.RECEIPT)
        return message

