"""Signed checkpoints of a log's head, and the store of checkpoints a node has seen.

The daemon publishes its own checkpoints on the consortium's gossip topic
(every N entries and at the end of each round, see :class:`Checkpointer`)
and keeps every checkpoint it receives from others in a
:class:`CheckpointStore`; an auditor verifies a node's log against the
checkpoints that *other* nodes kept, so a rewritten or truncated history
shows. Two different heads signed by one node for the same seq are proof of
equivocation (:meth:`CheckpointStore.conflicts`).

The store file is an append-only framed file (see :mod:`.appendfile`) whose
frames are checkpoint envelopes, verbatim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, cast

from knexa_node.audit.appendfile import AppendFile, read_locked
from knexa_node.audit.errors import AuditError
from knexa_node.audit.framing import scan_frames
from knexa_node.audit.log import AuditLog
from knexa_node.crypto import Signer
from knexa_node.wire import Checkpoint, Envelope, WireError, open_envelope, seal_envelope

STORE_MAGIC = b"KXCKPTS\x01"
# A checkpoint envelope is ~250 bytes; anything much larger is not one.
MAX_CHECKPOINT_ENVELOPE = 2048


def make_checkpoint(log: AuditLog, signer: Signer, *, now: float | None = None) -> Envelope:
    """The signed :class:`Checkpoint` of ``log``'s current head (the log must not be empty)."""
    if log.head_seq < 0:
        raise AuditError("empty", f"{log.path}: no entry to checkpoint yet")
    if signer.peer_id != log.owner:
        raise AuditError("wrong-owner", "a checkpoint must be signed by the log's owner")
    return seal_envelope(signer, Checkpoint(seq=log.head_seq, head_hash=log.head_hash, round=log.head_round), now=now)


def parse_checkpoint(data: bytes) -> tuple[Envelope, Checkpoint]:
    """Open a checkpoint envelope from untrusted bytes (gossip, a file); raise ``WireError``."""
    envelope, message = open_envelope(data, max_size=MAX_CHECKPOINT_ENVELOPE, expect=(Checkpoint,))
    return envelope, cast(Checkpoint, message)  # open_envelope's `expect` guarantees the type


class Checkpointer:
    """Decides when the daemon publishes a checkpoint: every ``every`` entries, and when a round closes.

    ``maybe(round_closed=...)`` returns a new signed envelope to publish (and
    to add to the node's own store), or None when nothing new needs one.
    """

    def __init__(self, log: AuditLog, signer: Signer, *, every: int = 64) -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self._log, self._signer, self.every = log, signer, every
        self.last_seq = -1  # seq of the last checkpoint made

    def maybe(self, *, round_closed: bool = False, now: float | None = None) -> Envelope | None:
        new = self._log.head_seq - self.last_seq
        if new <= 0 or (new < self.every and not round_closed):
            return None
        envelope = make_checkpoint(self._log, self._signer, now=now)
        self.last_seq = self._log.head_seq
        return envelope


class CheckpointStore:
    """Checkpoint envelopes kept durably, deduplicated, indexed by signer.

    Open it as the writer (the daemon) with :meth:`open`, or read a file with
    :meth:`load`. Only envelopes that verify are ever stored.
    """

    def __init__(self, path: Path, file: AppendFile | None, items: list[tuple[Envelope, Checkpoint]]) -> None:
        self.path = path
        self._file = file
        self._items = items
        self._digests = {envelope.digest for envelope, _ in items}

    @classmethod
    def open(cls, path: Path, *, repair: bool = False) -> "CheckpointStore":
        """Open (creating if needed) ``path`` for adding checkpoints."""
        path = Path(path)
        if not path.exists():
            AppendFile.create(path, STORE_MAGIC, None)
        file, scan = AppendFile.open(path, STORE_MAGIC, repair=repair)
        try:
            items = [_parse_stored(path, frame.payload, frame.offset) for frame in scan.frames]
        except BaseException:
            file.close()
            raise
        return cls(path, file, items)

    @classmethod
    def load(cls, path: Path) -> "CheckpointStore":
        """Read a store file without becoming its writer (for the CLI and auditors)."""
        path = Path(path)
        scan = scan_frames(read_locked(path), STORE_MAGIC)
        if scan.problem is not None:
            raise AuditError(scan.problem.reason, f"{path}: byte {scan.problem.offset}: {scan.problem.detail}")
        return cls(path, None, [_parse_stored(path, frame.payload, frame.offset) for frame in scan.frames])

    def add(self, data: bytes) -> tuple[Envelope, Checkpoint]:
        """Verify and durably store a checkpoint envelope; a duplicate is accepted and not stored twice.

        Raises :class:`~knexa_node.wire.WireError` for bytes that are not a valid checkpoint.
        """
        if self._file is None:
            raise AuditError("read-only", f"{self.path}: opened read-only")
        envelope, checkpoint = parse_checkpoint(data)
        if envelope.digest not in self._digests:
            self._file.append(envelope.to_bytes())
            self._items.append((envelope, checkpoint))
            self._digests.add(envelope.digest)
        return envelope, checkpoint

    def __iter__(self) -> Iterator[tuple[Envelope, Checkpoint]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def for_peer(self, peer_id: str) -> list[tuple[Envelope, Checkpoint]]:
        return [(e, c) for e, c in self._items if e.sender == peer_id]

    def conflicts(self, peer_id: str) -> list[tuple[Checkpoint, Checkpoint]]:
        """Pairs of checkpoints by ``peer_id`` naming different heads for the same seq (equivocation)."""
        by_seq: dict[int, Checkpoint] = {}
        found = []
        for _, checkpoint in self.for_peer(peer_id):
            seen = by_seq.setdefault(checkpoint.seq, checkpoint)
            if seen.head_hash != checkpoint.head_hash:
                found.append((seen, checkpoint))
        return found

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> "CheckpointStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_stored(path: Path, payload: bytes, offset: int) -> tuple[Envelope, Checkpoint]:
    try:
        return parse_checkpoint(payload)
    except WireError as exc:
        raise AuditError("bad-checkpoint", f"{path}: byte {offset}: not a valid checkpoint: {exc}") from None
