"""Consortium membership: an allow-list of peer IDs from ``config.consortium.members``.

Chosen over membership certificates because the list is what an operator
reviews anyway, it needs no consortium key ceremony, and a change is one
config edit plus a daemon restart. An empty list means "open" and exists for
the single-machine demo only (the config help says so); :attr:`Membership.open`
lets the daemon warn about it. The CPM is not a member by virtue of being the
CPM: it never opens exchange streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from knexa_node.crypto import is_valid_peer_id
from knexa_node.exchange.errors import NON_MEMBER, ExchangeError


@dataclass(frozen=True)
class Membership:
    members: frozenset[str]

    @classmethod
    def from_peer_ids(cls, peer_ids: Iterable[str]) -> "Membership":
        ids = frozenset(peer_ids)
        bad = sorted(p for p in ids if not is_valid_peer_id(p))
        if bad:
            raise ValueError(f"not an Ed25519 peer ID in the member list: {bad[0][:80]!r}")
        return cls(ids)

    @property
    def open(self) -> bool:
        return not self.members

    def is_member(self, peer_id: str) -> bool:
        return self.open or peer_id in self.members

    def check(self, peer_id: str) -> None:
        """Raise ``ExchangeError(non-member)`` unless ``peer_id`` may exchange with us."""
        if not self.is_member(peer_id):
            raise ExchangeError(NON_MEMBER, f"{peer_id} is not a member of the consortium")
