"""How often a refusal of an outsider reaches the audit log (pure: no I/O, the clock is passed in).

Every audit entry is signed and fdatasynced (a few ms); a peer outside the
consortium that opens exchange streams in a loop must not grow the log, or
the disk time, without bound. :class:`RefusalGate` admits the first refusal
of each peer per ``interval_s`` and counts the rest; the admitted entry
carries how many were suppressed before it. Memory is bounded too: at most
``max_peers`` peers are remembered (least recently refused forgotten first,
and their pending count with them: metrics count every refusal anyway).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_INTERVAL_S = 60.0
DEFAULT_MAX_PEERS = 1024


@dataclass
class _Peer:
    last_logged: float
    suppressed: int = 0


class RefusalGate:
    def __init__(self, *, interval_s: float = DEFAULT_INTERVAL_S, max_peers: int = DEFAULT_MAX_PEERS) -> None:
        if interval_s <= 0 or max_peers < 1:
            raise ValueError("interval_s and max_peers must be positive")
        self.interval_s = interval_s
        self.max_peers = max_peers
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self.suppressed_total = 0

    def admit(self, peer: str, now: float) -> int | None:
        """None: do not log this refusal. Otherwise log it, noting the returned number suppressed before it."""
        state = self._peers.get(peer)
        if state is not None and now - state.last_logged < self.interval_s:
            state.suppressed += 1
            self.suppressed_total += 1
            self._peers.move_to_end(peer)
            return None
        suppressed = state.suppressed if state is not None else 0
        self._peers[peer] = _Peer(last_logged=now)
        self._peers.move_to_end(peer)
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        return suppressed
