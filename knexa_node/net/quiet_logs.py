"""py-libp2p log records reshaped where they read like crashes but report an expected, handled event.

py-libp2p 0.8.1's swarm logs a connection upgrade that failed as a warning
with the whole traceback in its message (``[ADDCONN_FAIL] ...``), then
re-raises. When the cause is ``trio.Cancelled`` the upgrade was cancelled by
the deadline of the dial around it (ours: ``dial_timeout_s``; under 40 ms
links and load that happens), the dial reports the failure in our own events
(``dials_failed``), and the 15-line traceback is noise that operators and the
network lab's crash check (a ``Traceback`` line in a daemon's log) read as a
crash. The filter keeps the line (peer and cause) and drops the traceback;
any other failure keeps it.

Its identify handler does the same (an error with the traceback in the
message) when the answer cannot be written because the connection closed
under it: a peer that stops, or the losing connection of two that two peers
dialed at once (seen in the 20-daemon lab). The peer is gone from that
connection; the line stays, the traceback goes. Both filters are installed
once per process by :class:`~knexa_node.net.network.Network`.
"""

from __future__ import annotations

import logging

import trio
from libp2p.io.exceptions import ConnectionClosedError

from knexa_node.net.errors import causes

SWARM_LOGGER = "libp2p.network.swarm"
ADD_CONN_FAILED = "[ADDCONN_FAIL]"
IDENTIFY_LOGGER = "libp2p.identity.identify.identify"
IDENTIFY_REPLY_FAILED = "Error sending identify response"


class CancelledUpgradeFilter(logging.Filter):
    """Drops the traceback from py-libp2p's ``[ADDCONN_FAIL]`` record when the cause is a cancellation."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (isinstance(record.msg, str) and record.msg.startswith(ADD_CONN_FAILED) and isinstance(args, tuple)
                and len(args) == 3 and isinstance(args[1], trio.Cancelled)):
            record.msg = ADD_CONN_FAILED + " add_conn for peer %s cancelled by the dial's deadline: %r"
            record.args = args[:2]
        return True


def _closed_under_it(exc: BaseException) -> bool:
    """Whether ``exc`` or one of its causes is py-libp2p's "connection closed" error."""
    return any(isinstance(err, ConnectionClosedError) for err in causes(exc))


class ClosedIdentifyReplyFilter(logging.Filter):
    """Drops the traceback from identify's failed-answer record when the connection had closed."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (isinstance(record.msg, str) and record.msg.startswith(IDENTIFY_REPLY_FAILED) and isinstance(args, tuple)
                and len(args) == 4 and isinstance(args[1], BaseException) and _closed_under_it(args[1])):
            record.msg = IDENTIFY_REPLY_FAILED + " to %s: the connection closed under it (%s)"
            record.args = args[:2]
        return True


def _add_once(logger_name: str, kind: type[logging.Filter]) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


def install() -> None:
    """Add the filters to py-libp2p's swarm and identify loggers (idempotent)."""
    _add_once(SWARM_LOGGER, CancelledUpgradeFilter)
    _add_once(IDENTIFY_LOGGER, ClosedIdentifyReplyFilter)
