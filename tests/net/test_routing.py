"""The DHT's subnet cap: several members behind one public /24 all enter the routing table; strangers stay capped.

py-libp2p exempts loopback and private addresses from the cap (first test), so
real hosts on 127.0.0.x cannot show it: the tables below are real py-libp2p
routing tables (of a real, not listening, host) fed peers with public-looking
addresses, which is what the DHT does with the addresses it learns.
"""

from __future__ import annotations

import multiaddr
import pytest
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.routing_table import _subnet_key
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from knexa_node.crypto import Signer
from knexa_node.net.host import build_host
from knexa_node.net.network import Network
from knexa_node.net.routing import STRANGER_SUBNET_CAP, subnet_admits
from knexa_node.testing import loopback_params

DOC_RANGE = "198.51.100"  # documentation range: not global for Python, so exempt like private ones
PUBLIC = "81.2.69"  # one public /24 shared by several organizations (one NAT, one provider)


def peer(ip: str) -> PeerInfo:
    return PeerInfo(ID.from_base58(Signer.generate().peer_id), [multiaddr.Multiaddr(f"/ip4/{ip}/tcp/4001")])


def test_the_library_groups_only_public_addresses():
    assert _subnet_key(peer("127.0.0.5")) is None
    assert _subnet_key(peer("10.1.2.3")) is None and _subnet_key(peer("192.168.1.9")) is None
    assert _subnet_key(peer("100.64.0.7")) is None and _subnet_key(peer(f"{DOC_RANGE}.7")) is None
    assert _subnet_key(peer(f"{PUBLIC}.7")) == f"{PUBLIC}.0/24"


@pytest.mark.parametrize("subnet, member, resident, cap, admitted", [
    ("a", True, ["a", "a", "a"], 2, True),      # a member always enters
    ("a", False, ["a", "a"], 2, False),         # the third stranger of a subnet does not
    ("a", False, ["a", "b", None], 2, True),    # other subnets and exempt peers do not count
    (None, False, ["a", "a"], 2, True),         # no public address: never grouped
    ("a", False, ["a", "a", "a"], 0, True),     # cap 0: no cap
])
def test_subnet_admits(subnet, member, resident, cap, admitted):
    assert subnet_admits(subnet, member=member, strangers_in_bucket=resident, cap=cap) is admitted


async def test_members_behind_one_public_24_all_enter_and_strangers_keep_the_cap():
    members = [peer(f"{PUBLIC}.{i}") for i in range(1, 7)]
    strangers = [peer(f"{PUBLIC}.{i}") for i in range(101, 106)]
    net = Network(Signer.generate(), loopback_params(members=tuple(m.peer_id.to_base58() for m in members)))
    table = net.dht.routing_table
    for info in strangers[:2] + members + strangers[2:]:  # strangers before and after the members
        await table.add_peer(info, skip_server_mode_check=True)
    inside = set(table.get_peer_ids())
    assert {m.peer_id for m in members} <= inside
    assert len(inside & {s.peer_id for s in strangers}) == STRANGER_SUBNET_CAP
    assert net.status()["dht_subnet_refused"] == len(strangers) - STRANGER_SUBNET_CAP
    # A member already inside is updated, not refused; a bare peer ID is looked up in the peerstore.
    assert await table.add_peer(members[0], skip_server_mode_check=True)
    late = peer(f"{PUBLIC}.200")
    net.host.get_peerstore().add_addrs(late.peer_id, late.addrs, 600)
    assert not await table.add_peer(late.peer_id, skip_server_mode_check=True)


async def test_without_the_gate_py_libp2p_keeps_two_members_of_the_24():
    """What the gate fixes: the library alone drops members sharing a public /24."""
    host = build_host(Signer.generate(), loopback_params())
    table = KadDHT(host, DHTMode.SERVER).routing_table
    members = [peer(f"{PUBLIC}.{i}") for i in range(1, 7)]
    for info in members:
        await table.add_peer(info, skip_server_mode_check=True)
    assert table.size() == 2


async def test_bootstrap_peers_count_as_members():
    boot = peer(f"{PUBLIC}.50")
    addr = f"/ip4/{PUBLIC}.50/tcp/4001/p2p/{boot.peer_id.to_base58()}"
    net = Network(Signer.generate(), loopback_params(bootstrap=(addr,)))
    table = net.dht.routing_table
    for info in [peer(f"{PUBLIC}.{i}") for i in range(1, 3)] + [boot]:
        await table.add_peer(info, skip_server_mode_check=True)
    assert boot.peer_id in table.get_peer_ids() and table.size() == 3
