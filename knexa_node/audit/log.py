"""The node's append-only, signed, hash-chained exchange log (the writer side).

Files live in the node's home (:attr:`NodeHome.audit_dir`)::

    audit/exchange.log          the log (magic, signed header, signed entries)
    audit/exchange.log.lock     held by the one writer (the daemon)
    audit/exchange.log.torn-N   bytes of a torn tail kept aside by an explicit repair
    audit/checkpoints.log       signed checkpoints, the node's own and those seen on gossip

:meth:`AuditLog.append` returns only after the entry is on disk (fdatasync),
so the exchange code may acknowledge or report an exchange once it returns.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from knexa_node.audit.appendfile import AppendFile
from knexa_node.audit.entry import (
    LOG_REPAIRED,
    Entry,
    EntryFormatError,
    Event,
    decode_entry,
    decode_header,
    sign_entry,
    sign_header,
    split_record,
)
from knexa_node.audit.errors import AuditError, EventError
from knexa_node.audit.proof import ProofError, check_proof
from knexa_node.audit.framing import Scan
from knexa_node.audit.verify import LOG_MAGIC
from knexa_node.crypto import CryptoError, Signer, verify
from knexa_node.fsutil import private_dir
from knexa_node.identity import NodeHome

LOG_FILE = "exchange.log"
CHECKPOINT_FILE = "checkpoints.log"


def log_path(home: NodeHome) -> Path:
    return home.audit_dir / LOG_FILE


def checkpoint_path(home: NodeHome) -> Path:
    return home.audit_dir / CHECKPOINT_FILE


class AuditLog:
    """The writer of one node's exchange log. Use :meth:`open`; close it (or use ``with``)."""

    def __init__(self, file: AppendFile, signer: Signer, head_hash: bytes, head_seq: int, head_round: int,
                 head_time: float, clock: Callable[[], float]) -> None:
        self._file = file
        self._signer = signer
        self._clock = clock
        self.head_hash = head_hash  # hash of the last entry (of the header while empty)
        self.head_seq = head_seq  # -1 while empty
        self.head_round = head_round
        self._head_time = head_time

    @classmethod
    def open(cls, path: Path, signer: Signer, *, create: bool = True, repair: bool = False,
             clock: Callable[[], float] = time.time) -> "AuditLog":
        """Open ``path`` for appending as ``signer``, creating it if needed and ``create``.

        Refuses (typed :class:`AuditError`) a log of another identity, damaged
        frames, a log held by another writer, and a torn tail unless ``repair``:
        a repair keeps the torn bytes in ``<log>.torn-<offset>`` and appends a
        signed ``log-repaired`` entry recording it. Opening checks every frame's
        checksum, the header and the head entry (its seq and signature), not
        every signature: that is :func:`~knexa_node.audit.verify_file`'s job,
        and it would cost the daemon seconds at start on a long log.
        """
        path = Path(path)
        if create and not path.exists():
            AppendFile.create(path, LOG_MAGIC, sign_header(signer, clock()).record)
        file, scan = AppendFile.open(path, LOG_MAGIC, repair=repair)
        try:
            head = _check_head(path, scan, signer)
            header = decode_header(scan.frames[0].payload)
            log = cls(file, signer, head.hash if head else header.hash, head.seq if head else -1,
                      head.event.round if head else 0, head.time if head else header.created, clock)
        except BaseException:
            file.close()
            raise
        if scan.problem is not None:  # a torn tail was repaired: put that on the record
            torn = scan.problem
            log.append(Event(kind=LOG_REPAIRED, round=log.head_round, outcome="ok", metrics={
                "torn_offset": torn.offset, "torn_bytes": scan.size - scan.end, "reason": torn.detail[:200]}))
        return log

    @classmethod
    def open_home(cls, home: NodeHome, signer: Signer, **kwargs: object) -> "AuditLog":
        private_dir(home.audit_dir)
        return cls.open(log_path(home), signer, **kwargs)  # type: ignore[arg-type]

    @property
    def owner(self) -> str:
        return self._signer.peer_id

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def count(self) -> int:
        return self.head_seq + 1

    def append(self, event: Event) -> Entry:
        """Sign, chain and durably append ``event``; return the entry.

        An invalid event or an inconsistent counterpart receipt raises
        :class:`EventError` and writes nothing.
        """
        # A clock stepped backwards must not break the log's monotone time.
        now = max(self._clock(), self._head_time)
        try:
            entry = sign_entry(self._signer, self.head_seq + 1, now, self.head_hash, event)
            check_proof(self.owner, event)
        except (EntryFormatError, ProofError) as exc:
            raise EventError(f"refused to log a {event.kind!r} event: {exc}") from None
        self._file.append(entry.record)
        self.head_hash, self.head_seq, self.head_round, self._head_time = entry.hash, entry.seq, event.round, entry.time
        return entry

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def _check_head(path: Path, scan: Scan, signer: Signer) -> Entry | None:
    """The head entry after checking the header and the head; raise :class:`AuditError` if they are wrong."""

    def damaged(what: str) -> AuditError:
        return AuditError("damaged", f"{path}: {what}; run `knexa-node audit verify` on it, and move it aside "
                          "to start a new log")

    if not scan.frames:
        raise damaged("no header")
    try:
        header = decode_header(scan.frames[0].payload)
        head = decode_entry(scan.frames[-1].payload) if len(scan.frames) > 1 else None
    except EntryFormatError as exc:
        raise damaged(str(exc)) from None
    if header.owner != signer.peer_id:
        raise AuditError("wrong-owner", f"{path}: log belongs to {header.owner}, not to this node ({signer.peer_id})")
    if head is None:
        return None
    if head.seq != len(scan.frames) - 2:
        raise damaged(f"head entry has seq {head.seq} but the file holds {len(scan.frames) - 1} entries")
    try:
        verify(signer.peer_id, *split_record(head.record))
    except CryptoError:
        raise damaged(f"head entry {head.seq} is not signed by this node") from None
    return head
