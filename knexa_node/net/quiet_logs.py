"""py-libp2p log records reshaped where they read like crashes but report an expected, handled event.

py-libp2p 0.8.1's swarm logs a connection upgrade that failed as a warning
with the whole traceback in its message (``[ADDCONN_FAIL] ...``), then
re-raises. When the cause is ``trio.Cancelled`` the upgrade was cancelled by
the deadline of the dial around it (ours: ``dial_timeout_s``; under 40 ms
links and load that happens), the dial reports the failure in our own events
(``dials_failed``), and the 15-line traceback is noise that operators and the
network lab's crash check (a ``Traceback`` line in a daemon's log) read as a
crash. The filter keeps the line (peer and cause) and drops the traceback;
any other failure keeps it. Installed once per process by
:class:`~knexa_node.net.network.Network`.
"""

from __future__ import annotations

import logging

import trio

SWARM_LOGGER = "libp2p.network.swarm"
ADD_CONN_FAILED = "[ADDCONN_FAIL]"


class CancelledUpgradeFilter(logging.Filter):
    """Drops the traceback from py-libp2p's ``[ADDCONN_FAIL]`` record when the cause is a cancellation."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (isinstance(record.msg, str) and record.msg.startswith(ADD_CONN_FAILED) and isinstance(args, tuple)
                and len(args) == 3 and isinstance(args[1], trio.Cancelled)):
            record.msg = ADD_CONN_FAILED + " add_conn for peer %s cancelled by the dial's deadline: %r"
            record.args = args[:2]
        return True


def install() -> None:
    """Add the filter to py-libp2p's swarm logger (idempotent)."""
    swarm_logger = logging.getLogger(SWARM_LOGGER)
    if not any(isinstance(f, CancelledUpgradeFilter) for f in swarm_logger.filters):
        swarm_logger.addFilter(CancelledUpgradeFilter())
