"""The audit log's exceptions: one base type, and the cases a caller must tell apart."""

from __future__ import annotations


class AuditError(Exception):
    """The audit log cannot be opened, appended to or read as asked.

    ``reason`` is a short stable tag (for scripts and counters); ``str()`` explains.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


class TornTailError(AuditError):
    """The file ends with an incomplete record, most likely left by a crash during an append.

    Appending refuses such a file unless repair is asked for explicitly; the
    torn bytes are then kept in a side file, never silently dropped.
    """

    def __init__(self, detail: str, *, offset: int, torn_bytes: int) -> None:
        super().__init__("torn-tail", detail)
        self.offset = offset
        self.torn_bytes = torn_bytes


class LogLockedError(AuditError):
    """Another process (usually the running daemon) is the log's writer."""

    def __init__(self, detail: str) -> None:
        super().__init__("locked", detail)


class EventError(AuditError):
    """An event handed to ``append`` is invalid (a bug in the caller, not a damaged file)."""

    def __init__(self, detail: str) -> None:
        super().__init__("bad-event", detail)
