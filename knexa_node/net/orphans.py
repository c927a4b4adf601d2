"""Close connections that py-libp2p 0.8.1's swarm no longer lists but never closed.

Under load (two dials to one peer racing, say) the swarm sometimes drops a
connection from ``swarm.connections`` without closing it. Nobody uses such an
orphan again, but its socket stays open, and so does the peer's side, which
the peer may still list as live. Inbound, it also keeps its slot of the
inbound pool (:mod:`knexa_node.net.inbound`): measured on a loaded 2-core
machine, 300 connect/disconnect cycles from 10 peers left 1-12 connections
open for good (still open after 3 minutes), 1-7 of them unlisted. A daemon
running for weeks would fill the pool with them.

:class:`OrphanReaper` remembers every connection the swarm registers
(``add_conn``, both directions) and, every ``interval_s``, closes those that
are still open and have been unlisted at two sweeps in a row (a connection
being registered or closed is unlisted for a moment, never for a whole
interval). Closing it ends the peer's side too, and frees the slot.

py-libp2p's limit tracker (``rcmgr``) has the same kind of leak: a connection
admitted in ``add_conn`` and then cancelled mid-registration (a dial timeout
under load), or an orphan closed here, keeps its "established" slot, and the
library prunes such slots only after 30 s. Eight of them to one peer and every
dial to it is refused ("Established per peer limit exceeded: 8 >= 8"; seen
once in CI with 10 peers cycling connections). :meth:`OrphanReaper.release_stale_slots`
releases every slot whose connection is not one the swarm registered and is
still open: exact, because ``add_conn`` is the only place that admits one and
the reaper sees every connection that enters it.
"""

from __future__ import annotations

import logging
import types
import weakref
from typing import Any

import trio

from knexa_node.net.stats import NetStats

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0


class OrphanReaper:
    def __init__(self, swarm: Any, interval_s: float = 10.0, stats: NetStats | None = None) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.swarm = swarm
        self.interval_s = interval_s
        self.stats = stats if stats is not None else NetStats()  # counts what it closed
        self._known: weakref.WeakSet[Any] = weakref.WeakSet()
        self._suspects: set[int] = set()  # id() of connections unlisted at the last sweep

    def install(self) -> None:
        """Record every connection the swarm registers from now on (before it listens or dials)."""
        original = self.swarm.add_conn
        known = self._known

        async def add_conn(swarm: Any, muxed_conn: Any, *args: Any, **kwargs: Any) -> Any:
            known.add(muxed_conn)
            return await original(muxed_conn, *args, **kwargs)

        self.swarm.add_conn = types.MethodType(add_conn, self.swarm)

    def sweep(self) -> list[Any]:
        """The open connections unlisted now and at the previous sweep (to close); no I/O."""
        listed = {id(conn.muxed_conn) for conns in self.swarm.connections.values() for conn in conns}
        unlisted = [conn for conn in list(self._known) if not _closed(conn) and id(conn) not in listed]
        orphans = [conn for conn in unlisted if id(conn) in self._suspects]
        self._suspects = {id(conn) for conn in unlisted} - {id(conn) for conn in orphans}
        return orphans

    def release_stale_slots(self) -> int:
        """Release the limit tracker's slots held for connections that are closed or gone; how many."""
        manager = getattr(self.swarm, "_resource_manager", None)
        lifecycle = getattr(manager, "connection_lifecycle", None)
        if lifecycle is None:
            return 0
        live = {str(id(conn)) for conn in list(self._known) if not _closed(conn)}
        # No await between reading the live set and pruning, so no registration can slip in between;
        # min_age 0 is safe because a connection being registered is already in self._known and open.
        released = int(lifecycle.reconcile_live_connections(live, min_age_seconds=0.0))
        if released:
            self.stats.stale_slots_released += released
            logger.info("released %d connection slots held for closed connections", released)
        return released

    async def reap(self) -> int:
        """Close this sweep's orphans and release stale slots; the number of orphans closed."""
        orphans = self.sweep()
        for conn in orphans:
            self.stats.orphan_connections_closed += 1  # counted before the close, which may take a while
            logger.info("closing a connection to %s that the swarm no longer lists", getattr(conn, "peer_id", "?"))
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                try:
                    await conn.close()
                except Exception as exc:  # a half-dead socket may fail to close in many ways; it is gone anyway
                    logger.debug("closing an orphan connection: %s", exc)
        self.release_stale_slots()  # after the closes, so the orphans' own slots go too
        return len(orphans)

    @property
    def reaped(self) -> int:
        return self.stats.orphan_connections_closed

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            await self.reap()


def _closed(conn: Any) -> bool:
    closed = getattr(conn, "is_closed", False)
    return bool(closed() if callable(closed) else closed)
