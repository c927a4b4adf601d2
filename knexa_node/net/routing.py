"""The DHT routing table's subnet cap: kept for strangers, lifted for consortium members.

py-libp2p 0.8.1's Kademlia admits at most ``MAX_PEERS_PER_SUBNET`` (2) peers of
one globally routable /24 (IPv6: /48) per k-bucket, a defence against one
operator filling a table with many identities. Several organizations behind
one NAT, or in one hosting provider's /24, look exactly like that. Members are
known by peer ID (``consortium.members``, the CPM, the bootstrap peers), so the
cap protects nothing against them; for every other peer it stays.

How: the library's own per-bucket check is turned off
(``KadDHT(max_peers_per_subnet=0)``, a documented parameter) and the same cap is
applied here around the table's ``add_peer``, counting only strangers: a member
always enters, and members never use up a stranger's place. The subnet of a
peer is the library's own ``_subnet_key`` (pinned version), so loopback,
private (RFC 1918), CGNAT and link-local addresses stay exempt for everyone,
as in the library: on 127.0.0.x or 10.x nothing here changes anything.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from libp2p.kad_dht.common import MAX_PEERS_PER_SUBNET
from libp2p.kad_dht.routing_table import RoutingTable, _subnet_key
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

STRANGER_SUBNET_CAP = MAX_PEERS_PER_SUBNET
"""Strangers of one public /24 (/48) per k-bucket: py-libp2p's default, kept."""


def subnet_admits(subnet: str | None, *, member: bool, strangers_in_bucket: Iterable[str | None], cap: int) -> bool:
    """Whether a new peer of ``subnet`` may enter a bucket whose strangers sit in ``strangers_in_bucket``.

    Pure: members always; peers with no public address (``subnet`` None) always;
    a stranger while fewer than ``cap`` strangers of its subnet are there (``cap`` <= 0: no cap).
    """
    if member or subnet is None or cap <= 0:
        return True
    return sum(1 for s in strangers_in_bucket if s == subnet) < cap


class MemberSubnetGate:
    """Wraps ``table.add_peer`` so that the subnet cap counts and binds strangers only."""

    def __init__(self, table: RoutingTable, members: Callable[[], Collection[str]], cap: int = STRANGER_SUBNET_CAP) -> None:
        self.table, self.members, self.cap = table, members, cap
        self.refused = 0  # strangers kept out by the cap
        self._add_peer = table.add_peer
        table.add_peer = self.add_peer  # type: ignore[method-assign]

    def is_member(self, peer_id: ID) -> bool:
        return peer_id.to_base58() in self.members()

    def _strangers_near(self, peer_id: ID) -> list[str | None]:
        bucket = self.table.find_bucket(peer_id)
        return [_subnet_key(info) for info in bucket.peer_infos()
                if info.peer_id != peer_id and not self.is_member(info.peer_id)]

    def _info(self, peer: PeerInfo | ID) -> PeerInfo | None:
        if isinstance(peer, PeerInfo):
            return peer
        try:  # what the library itself does with a bare peer ID
            addrs = self.table.host.get_peerstore().addrs(peer)
        except Exception:  # not in the peerstore: the library refuses it too
            return None
        return PeerInfo(peer, addrs) if addrs else None

    async def add_peer(self, peer: PeerInfo | ID, *, skip_server_mode_check: bool = False) -> bool:
        info = self._info(peer)
        if info is None or self.is_member(info.peer_id) or self.table.peer_in_table(info.peer_id):
            return await self._add_peer(peer, skip_server_mode_check=skip_server_mode_check)
        subnet = _subnet_key(info)
        if not subnet_admits(subnet, member=False, strangers_in_bucket=self._strangers_near(info.peer_id), cap=self.cap):
            self.refused += 1
            return False
        added = await self._add_peer(peer, skip_server_mode_check=skip_server_mode_check)
        # add_peer may wait (a ping of the bucket's oldest peer): two strangers checked at once can both
        # have passed. Checked again with no wait in between; in such a race both may leave, never both stay.
        if added and not subnet_admits(subnet, member=False, strangers_in_bucket=self._strangers_near(info.peer_id),
                                       cap=self.cap):
            self.table.remove_peer(info.peer_id)
            self.refused += 1
            return False
        return added
