"""Discovery: nodes that know only the bootstrap find each other (DHT), retry and reconnect."""

import pytest
import trio

from knexa_node.crypto import Signer
from knexa_node.net.discovery import next_discovery_interval
from knexa_node.net.network import Network
from knexa_node.testing import loopback_params, wait_until


def _connected(net):
    return {p["peer_id"] for p in net.connected_peers()}


@pytest.mark.slow
async def test_nodes_knowing_only_the_bootstrap_find_each_other():
    async with trio.open_nursery() as nursery:
        boot = await nursery.start(Network(Signer.generate(), loopback_params()).serve)
        join = loopback_params(bootstrap=(boot.dialable_addrs()[0],))
        nodes = [await nursery.start(Network(Signer.generate(), join).serve) for _ in range(3)]
        everyone = {boot.peer_id} | {n.peer_id for n in nodes}
        await wait_until(lambda: all(_connected(n) == everyone - {n.peer_id} for n in nodes), 20)
        assert all(n.dht.get_routing_table_size() >= 2 for n in nodes)
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_bootstrap_down_at_start_then_restarted_is_reconnected():
    boot_signer = Signer.generate()
    events = []
    async with trio.open_nursery() as outer:
        # Learn a free port by starting the bootstrap once, then stop it.
        async with trio.open_nursery() as first:
            boot = await first.start(Network(boot_signer, loopback_params()).serve)
            addr = boot.dialable_addrs()[0]
            first.cancel_scope.cancel()
        node = Network(Signer.generate(), loopback_params(bootstrap=(addr,)),
                       on_event=lambda event, **f: events.append(event))
        await outer.start(node.serve)
        await wait_until(lambda: "bootstrap-unreachable" in events, 10)
        port_params = loopback_params(listen=(addr.split("/p2p/")[0],))
        async with trio.open_nursery() as second:
            await second.start(Network(boot_signer, port_params).serve)
            await wait_until(lambda: _connected(node) == {boot_signer.peer_id}, 15)
            second.cancel_scope.cancel()
        await wait_until(lambda: not _connected(node), 10)
        async with trio.open_nursery() as third:  # a restart with the same identity and address
            await third.start(Network(boot_signer, port_params).serve)
            await wait_until(lambda: _connected(node) == {boot_signer.peer_id}, 15)
            third.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    assert events.count("bootstrap-connected") >= 2


def test_discovery_slows_down_while_nothing_changes_and_not_before():
    step = dict(fast=0.5, base=10.0, ceiling=120.0)
    assert next_discovery_interval(10.0, knows_peers=False, settled=True, **step) == 0.5
    assert next_discovery_interval(80.0, knows_peers=True, settled=False, **step) == 10.0
    interval, seen = 0.5, []
    for _ in range(6):
        interval = next_discovery_interval(interval, knows_peers=True, settled=True, **step)
        seen.append(interval)
    assert seen == [10.0, 20.0, 40.0, 80.0, 120.0, 120.0]


async def test_a_lost_peer_is_redialed_at_once_though_discovery_has_slowed_down():
    # Rounds 30 s apart and more: only the wake-up on the disconnection can bring the peer back within the bound.
    slow = dict(discovery_interval_s=30.0, discovery_max_interval_s=600.0)
    async with trio.open_nursery() as nursery:
        boot = await nursery.start(Network(Signer.generate(), loopback_params(**slow)).serve)
        join = loopback_params(bootstrap=(boot.dialable_addrs()[0],), **slow)
        a = await nursery.start(Network(Signer.generate(), join).serve)
        b = await nursery.start(Network(Signer.generate(), join).serve)
        await wait_until(lambda: b.peer_id in _connected(a) and a.peer_id in _connected(b), 20)
        await a.host.disconnect(b.host.get_id())
        await wait_until(lambda: b.peer_id not in _connected(a), 10)
        await wait_until(lambda: b.peer_id in _connected(a) and a.peer_id in _connected(b), 10)
        nursery.cancel_scope.cancel()


async def test_a_bootstrap_keeper_waits_for_a_disconnection_instead_of_polling():
    quiet = dict(discovery_interval_s=30.0, discovery_fast_interval_s=30.0, discovery_max_interval_s=600.0,
                 backoff_max_s=600.0)  # nothing else looks: only the wake-up on the disconnection can redial
    events = []
    async with trio.open_nursery() as nursery:
        boot = await nursery.start(Network(Signer.generate(), loopback_params(**quiet)).serve)
        node = Network(Signer.generate(), loopback_params(bootstrap=(boot.dialable_addrs()[0],), **quiet),
                       on_event=lambda event, **f: events.append(event))
        await nursery.start(node.serve)
        await wait_until(lambda: events.count("bootstrap-connected") == 1, 10)
        await trio.sleep(1.0)  # the discovery round the connection woke
        looks = []
        is_connected = node.discovery.is_connected
        node.discovery.is_connected = lambda peer_id: looks.append(peer_id) or is_connected(peer_id)
        await trio.sleep(1.0)
        assert len(looks) <= 1  # polling every backoff_min_s (0.1 s here) looked ~10 times
        await node.host.disconnect(boot.host.get_id())
        await wait_until(lambda: events.count("bootstrap-connected") == 2, 10)
        nursery.cancel_scope.cancel()


def _dht_requests_served(nets) -> int:
    """FIND_NODE answers given so far by ``nets`` (each answer is one call of this DHT method)."""
    return sum(n.dht_answers for n in nets)


def _count_dht_answers(net) -> None:
    net.dht_answers = 0
    answer = net.dht._add_closer_peers_to_response

    def counting(*args, **kwargs):
        net.dht_answers += 1
        return answer(*args, **kwargs)

    net.dht._add_closer_peers_to_response = counting


async def _quiet_mesh(n: int, nursery) -> list[Network]:  # type: ignore[no-untyped-def]
    """``n`` nodes that know only the first; rounds 10 min apart, so the test drives discovery itself."""
    quiet = dict(discovery_interval_s=600.0, discovery_fast_interval_s=600.0, discovery_max_interval_s=600.0)
    boot = await nursery.start(Network(Signer.generate(), loopback_params(**quiet)).serve)
    join = loopback_params(bootstrap=(boot.dialable_addrs()[0],), **quiet)
    return [boot] + [await nursery.start(Network(Signer.generate(), join).serve) for _ in range(n - 1)]


@pytest.mark.slow
async def test_a_settled_node_asks_one_peer_per_round_and_a_change_brings_a_full_lookup_back():
    async with trio.open_nursery() as nursery:
        nets = await _quiet_mesh(5, nursery)
        for net in nets:
            await net.discovery.discover_once()
        everyone = {n.peer_id for n in nets}
        await wait_until(lambda: all(_connected(n) == everyone - {n.peer_id} for n in nets), 20)
        node, others = nets[1], [n for n in nets if n is not nets[1]]
        await node.discovery.discover_once()  # the full lookup owed to the last connection change
        assert node.discovery.settled() and not node.discovery._changed
        for net in others:
            _count_dht_answers(net)
        lookups, probes = node.discovery.lookups, node.discovery.probes
        for _ in range(3):
            await node.discovery.discover_once()
        assert node.discovery.lookups == lookups and node.discovery.probes == probes + 3
        assert _dht_requests_served(others) == 3  # a full lookup asks all 4 peers
        node.discovery.wake()  # a connection came or went
        await node.discovery.discover_once()
        assert node.discovery.lookups == lookups + 1
        assert _dht_requests_served(others) >= 3 + len(others)
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_probes_find_a_member_that_only_another_peer_knows():
    async with trio.open_nursery() as nursery:
        a, b, c = await _quiet_mesh(3, nursery)  # b and c know only a
        for net in (b, c):
            await net.discovery.discover_once()
        await wait_until(lambda: c.peer_id in _connected(b), 20)
        await b.discovery.discover_once()
        assert b.discovery.settled()
        # A newcomer that connects to a (and tells a about itself) but not to b.
        d = await nursery.start(Network(Signer.generate(), loopback_params(
            bootstrap=(a.dialable_addrs()[0],), discovery_interval_s=600.0, discovery_fast_interval_s=600.0)).serve)
        await wait_until(lambda: a.peer_id in _connected(d), 10)
        await d.dht.peer_routing._query_peer_for_closest(a.host.get_id(), d.host.get_id().to_bytes())
        b.discovery._changed = False  # b saw no connection change of its own
        for _ in range(len(_connected(b))):  # one probe per connected peer reaches a
            if d.peer_id in _connected(b):
                break
            await b.discovery.discover_once()
        assert d.peer_id in _connected(b) and b.discovery.probes >= 1
        nursery.cancel_scope.cancel()
