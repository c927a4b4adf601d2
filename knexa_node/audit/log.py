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
from knexa_node.audit.entry import LOG_REPAIRED, Entry, EntryFormatError, Event, sign_entry, sign_header
from knexa_node.audit.errors import AuditError, EventError
from knexa_node.audit.proof import ProofError, check_proof
from knexa_node.audit.framing import Scan
from knexa_node.audit.verify import LOG_MAGIC, verify_scan
from knexa_node.crypto import Signer
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

        Refuses (typed :class:`AuditError`) a log of another identity, a damaged
        log, a log held by another writer, and a torn tail unless ``repair``: a
        repair keeps the torn bytes in ``<log>.torn-<offset>`` and appends a
        signed ``log-repaired`` entry recording it.
        """
        path = Path(path)
        if create and not path.exists():
            AppendFile.create(path, LOG_MAGIC, sign_header(signer, clock()).record)
        file, scan = AppendFile.open(path, LOG_MAGIC, repair=repair)
        try:
            # The torn tail (if any) was just repaired: check the frames that remain.
            view = verify_scan(Scan(scan.frames, scan.end, scan.end, None), signatures=False)
            problem = view.report.problem
            if problem is not None:
                raise AuditError(problem.reason, f"{path}: damaged at {problem}; run `knexa-node audit verify` "
                                 "on it, and move it aside to start a new log")
            assert view.header is not None
            if view.header.owner != signer.peer_id:
                raise AuditError("wrong-owner", f"{path}: log belongs to {view.header.owner}, not to this node "
                                 f"({signer.peer_id})")
            last = view.entries[-1] if view.entries else None
            log = cls(file, signer, last.hash if last else view.header.hash, last.seq if last else -1,
                      last.event.round if last else 0, last.time if last else view.header.created, clock)
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
        home.audit_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
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

