"""The student's side of an exchange as a sans-I/O state machine.

States (``state``, a :class:`~.states.StudentState`), in order::

    request --request_frame--> await-header --receive_header--> await-stream-header
        --receive_stream_header--> receiving --receive_chunk (FINAL)--> verified --finish--> sending-receipt
        --receipt_sent--> done

The transitions are the literal table :data:`~.states.STUDENT_TRANSITIONS`; a
call out of order raises :class:`~.errors.ExchangeStateError`. Any method
raising :class:`ExchangeError` moves to ``failed``. The student
checks the proposal before contacting the teacher, checks the signed header
against the proposal and the size cap before accepting a single chunk, and
bounds every frame it reads by :meth:`StudentSession.next_max_frame`.
"""

from __future__ import annotations

import hashlib
from typing import cast

from knexa_node.crypto import Signer
from knexa_node.exchange.errors import BAD_HEADER, TAMPERED, TOO_LARGE, WRONG_RECIPIENT, ExchangeError
from knexa_node.exchange.frames import MAX_CHUNK_FRAME, MAX_CONTROL_FRAME, open_peer_frame
from knexa_node.exchange.policy import ExchangePolicy
from knexa_node.exchange.proposals import check_proposal
from knexa_node.exchange.sealing import (
    CHUNK_OVERHEAD,
    STREAM_HEADER_SIZE,
    ChunkOpener,
    EphemeralKey,
    SealingError,
    chunk_count,
    student_package_key,
)
from knexa_node.exchange.states import StudentEvent, StudentState, student_machine
from knexa_node.wire import ExchangeRequest, PackageHeader, PairingProposal, Receipt, seal_envelope


class StudentSession:
    def __init__(
        self,
        signer: Signer,
        policy: ExchangePolicy,
        *,
        proposal_envelope: bytes,
        remote: str,
        current_round: int | None,
        now: float,
        log_head: tuple[int, bytes] = (0, bytes(32)),
        categories: tuple[str, ...] = (),
        budget: int = 0,
        held: tuple[str, ...] = (),
    ) -> None:
        self.signer = signer
        # The targeted request: weak categories, item budget, transfer prompts already held.
        self.wanted = (tuple(categories), int(budget), tuple(held))
        self.log_head = log_head  # (entries, head hash) of this node's audit log, signed into the receipt
        self.policy = policy
        self.remote = remote
        self._machine = student_machine()
        self.header: PackageHeader | None = None
        self.header_envelope: bytes = b""
        self.receipt_envelope: bytes = b""
        self._proposal_envelope = proposal_envelope
        self._ephemeral: EphemeralKey | None = EphemeralKey()
        self._opener: ChunkOpener | None = None
        self._header_digest = b""
        self._hash = hashlib.sha256()
        self._plain = bytearray()
        self._sealed_received = 0
        self._chunks_received = 0
        try:
            self.proposal: PairingProposal = check_proposal(
                proposal_envelope, cpm=policy.cpm, me=signer.peer_id, remote=remote, my_role="student",
                current_round=current_round, now=now, clock_skew_s=policy.clock_skew_s,
            )
        except ExchangeError:
            self._machine.fire(StudentEvent.FAIL)
            raise

    @property
    def state(self) -> StudentState:
        return self._machine.state

    @property
    def proposal_id(self) -> bytes:
        return self.proposal.proposal_id

    def abort(self) -> None:
        """Mark the exchange failed (the driver's stream broke, timed out, or a step raised); drop the keys."""
        self._machine.fire(StudentEvent.FAIL)
        self._ephemeral = None
        self._opener = None

    def _fail(self, error: ExchangeError) -> ExchangeError:
        self.abort()
        return error

    def next_max_frame(self) -> int:
        """The largest frame acceptable in the current state (bounds what the driver reads)."""
        return MAX_CHUNK_FRAME if self.state is StudentState.RECEIVING else MAX_CONTROL_FRAME

    def request_frame(self) -> bytes:
        self._machine.require(StudentEvent.REQUEST)
        ephemeral = cast(EphemeralKey, self._ephemeral)  # None only after HEADER or FAIL
        categories, budget, held = self.wanted
        request = ExchangeRequest(proposal=self._proposal_envelope, ephemeral_key=ephemeral.public,
                                  categories=categories, budget=budget, held=held)
        self._machine.fire(StudentEvent.REQUEST)
        return seal_envelope(self.signer, request).to_bytes()

    def receive_header(self, frame: bytes) -> PackageHeader:
        """Check the teacher-signed header against the proposal and the size cap; derive the key."""
        self._machine.require(StudentEvent.HEADER)
        ephemeral = cast(EphemeralKey, self._ephemeral)  # None only after HEADER or FAIL
        proposal = self.proposal
        try:
            envelope, header = open_peer_frame(frame, remote=self.remote, expect=PackageHeader, what="package header",
                                               wrong_signer=WRONG_RECIPIENT)
            if header.student != self.signer.peer_id:
                raise ExchangeError(WRONG_RECIPIENT, f"package sealed for {header.student}, not this node")
            if (header.proposal_id, header.round, header.teacher, header.protocol) != (
                proposal.proposal_id, proposal.round, proposal.teacher, proposal.protocol,
            ):
                raise ExchangeError(BAD_HEADER, "header does not match the proposal (id, round, teacher or protocol)")
            if header.payload_size > self.policy.max_package_bytes:
                raise ExchangeError(TOO_LARGE, f"package of {header.payload_size} bytes > cap {self.policy.max_package_bytes}")
            plain = header.payload_size - STREAM_HEADER_SIZE - CHUNK_OVERHEAD * header.chunks
            if header.chunks < 1 or plain < 0 or chunk_count(plain) != header.chunks:
                raise ExchangeError(BAD_HEADER, f"{header.chunks} chunks cannot make {header.payload_size} sealed bytes")
            if header.dp_epsilon < 0 or header.redactions < 0:
                raise ExchangeError(BAD_HEADER, "negative epsilon or redaction count")
            try:
                self._key = student_package_key(
                    ephemeral, self.signer, teacher_ephemeral=header.ephemeral_key, proposal_id=header.proposal_id,
                    round=header.round, teacher=header.teacher, student=header.student, protocol=header.protocol,
                )
            except SealingError as exc:
                raise ExchangeError(BAD_HEADER, f"unusable teacher key: {exc}") from None
        except ExchangeError as exc:
            raise self._fail(exc) from None
        self._ephemeral = None  # forward secrecy: only the derived key remains
        self.header = header
        self.header_envelope = frame
        self._header_digest = envelope.digest
        self._machine.fire(StudentEvent.HEADER)
        return header

    def receive_stream_header(self, frame: bytes) -> None:
        self._machine.require(StudentEvent.STREAM_HEADER)
        try:
            self._opener = self._key.opener(frame, self._header_digest)
        except SealingError as exc:
            raise self._fail(ExchangeError(TAMPERED, str(exc))) from None
        self._sealed_received = len(frame)
        self._machine.fire(StudentEvent.STREAM_HEADER)

    def receive_chunk(self, frame: bytes) -> bool:
        """Open one sealed chunk; True once the FINAL chunk has been opened and the hash verified."""
        self._machine.require(StudentEvent.CHUNK)  # CHUNK and FINAL_CHUNK leave the same state
        opener, header = cast(ChunkOpener, self._opener), cast(PackageHeader, self.header)  # both set in RECEIVING
        try:
            self._sealed_received += len(frame)
            self._chunks_received += 1
            if self._sealed_received > header.payload_size or self._chunks_received > header.chunks:
                raise ExchangeError(TOO_LARGE, "more data than the header announced")
            try:
                plain, final = opener.open(frame)
            except SealingError as exc:
                raise ExchangeError(TAMPERED, str(exc)) from None
            self._hash.update(plain)
            self._plain += plain
            if final != (self._chunks_received == header.chunks):
                raise ExchangeError(TAMPERED, "stream ended early or did not end where the header said")
            if final:
                if self._sealed_received != header.payload_size:
                    raise ExchangeError(TAMPERED, "sealed size differs from the header")
                if self._hash.digest() != header.payload_hash:
                    raise ExchangeError(TAMPERED, "payload hash differs from the teacher-signed header")
        except ExchangeError as exc:
            raise self._fail(exc) from None
        self._machine.fire(StudentEvent.FINAL_CHUNK if final else StudentEvent.CHUNK)
        return final

    def finish(self) -> tuple[bytes, bytes]:
        """The verified payload and the signed receipt frame to send back (then :meth:`receipt_sent`)."""
        self._machine.require(StudentEvent.FINISH)
        header = cast(PackageHeader, self.header)  # set before RECEIVING, so in VERIFIED
        receipt = Receipt(
            proposal_id=header.proposal_id, round=header.round, teacher=header.teacher, student=header.student,
            payload_hash=header.payload_hash, payload_size=header.payload_size,
            log_entries=self.log_head[0], log_head=self.log_head[1],
        )
        self.receipt_envelope = seal_envelope(self.signer, receipt).to_bytes()
        payload = bytes(self._plain)
        self._plain = bytearray()
        self._opener = None
        self._machine.fire(StudentEvent.FINISH)
        return payload, self.receipt_envelope

    def receipt_sent(self) -> None:
        """The driver delivered the receipt: the exchange is done."""
        self._machine.fire(StudentEvent.RECEIPT_SENT)
