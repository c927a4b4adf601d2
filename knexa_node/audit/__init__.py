"""The signed, hash-chained exchange log of a node, and its verifier.

Map (layers point down; nothing here imports libp2p or torch):

- :mod:`.entry`       :class:`Event` / :class:`Entry`, event kinds and outcomes, canonical signed encoding
- :mod:`.events`      one constructor per exchange step, from the wire messages at hand
- :mod:`.proof`       checks a counterpart's signed Receipt / PackageHeader against an entry; log heads in receipts
- :mod:`.framing`     sans-I/O record framing with checksums, torn-tail detection
- :mod:`.appendfile`  crash-safe single-writer append-only file (fsync, locks, explicit repair)
- :mod:`.log`         :class:`AuditLog`, the writer the daemon holds; file locations in a node home
- :mod:`.verify`      :func:`verify_file` / :func:`verify_bytes`: first bad entry and why
- :mod:`.checkpoint`  signed checkpoints of the head, :class:`Checkpointer`, :class:`CheckpointStore`
- :mod:`.crosscheck`  :func:`cross_check` of two organizations' logs
- :mod:`.errors`      :class:`AuditError` and its cases
"""

from knexa_node.audit.checkpoint import CheckpointStore, Checkpointer, make_checkpoint, parse_checkpoint
from knexa_node.audit.crosscheck import CrossCheck, Mismatch, cross_check
from knexa_node.audit.entry import KINDS, OUTCOMES, Entry, Event
from knexa_node.audit.errors import AuditError, EventError, LogLockedError, TornTailError
from knexa_node.audit.log import AuditLog, checkpoint_path, log_path
from knexa_node.audit.proof import receipt_heads
from knexa_node.audit.verify import LogView, Problem, VerifyReport, verify_bytes, verify_file

__all__ = [
    "KINDS", "OUTCOMES", "AuditError", "AuditLog", "CheckpointStore", "Checkpointer", "CrossCheck", "Entry",
    "Event", "EventError", "LogLockedError", "LogView", "Mismatch", "Problem", "TornTailError", "VerifyReport",
    "checkpoint_path", "cross_check", "log_path", "make_checkpoint", "parse_checkpoint", "receipt_heads", "verify_bytes",
    "verify_file",
]
