"""Fix for py-libp2p 0.8.1's inbound-connection leak.

``Swarm._do_handle_inbound_connection`` keeps every inbound connection's
handler task (and its slot of the inbound ``CapacityLimiter``) alive until
the whole swarm stops (``await self.manager.wait_finished()``). After
``max_connections - min_connections`` inbound connections in a host's
lifetime (250 by default), every new one is refused. A daemon that runs for
days hits that, so :func:`fix_inbound_leak` replaces the handler on one swarm
instance with one that returns when *that* connection closes.
"""

from __future__ import annotations

import logging
import types
from typing import Any

from libp2p.abc import IMuxedConn
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from multiaddr import Multiaddr

logger = logging.getLogger(__name__)


async def _handle_inbound_until_closed(self: Swarm, read_write_closer: Any, maddr: Multiaddr, failure_event: Any) -> None:
    # Pre-multiplexed transports (QUIC) are not used by knexa: keep the library's path.
    if isinstance(read_write_closer, IMuxedConn):
        await Swarm._do_handle_inbound_connection(self, read_write_closer, maddr, failure_event)
        return
    remote_maddr = self._build_remote_multiaddr(read_write_closer)
    if remote_maddr is not None and not await self.connection_gate.is_allowed(remote_maddr):
        await _close_quietly(read_write_closer)
        return
    raw_conn = RawConnection(read_write_closer, False)
    try:
        muxed_conn = await self.upgrade_inbound_raw_conn(raw_conn, maddr)
    except Exception as exc:  # the upgrade raises many types for a bad peer; the dialer sees a closed socket
        logger.debug("inbound upgrade from %s failed: %s", remote_maddr, exc)
        await _close_quietly(raw_conn)
        return
    # The fix: hold the inbound slot for the life of this connection only.
    closed = getattr(muxed_conn, "event_closed", None)
    if closed is None:
        await self.manager.wait_finished()
    else:
        await closed.wait()


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except Exception:  # closing a half-open socket may fail in several ways; nothing to do about it
        pass


def fix_inbound_leak(swarm: Swarm) -> None:
    """Install the per-connection inbound handler on ``swarm`` (before it listens)."""
    swarm._do_handle_inbound_connection = types.MethodType(_handle_inbound_until_closed, swarm)  # type: ignore[method-assign]
