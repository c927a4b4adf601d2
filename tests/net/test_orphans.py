"""Connections the swarm dropped without closing them are closed, and their inbound slot comes back."""

import pytest
import trio

from knexa_node.net.errors import PeerUnreachable
from knexa_node.testing import loopback_params, swarm, wait_until

SWEEP_S = 0.2


def _quiet(sweep_s: float):
    """Discovery off: it would redial a forgotten peer at once, and trimming on either side might close the orphan first."""
    return loopback_params(orphan_sweep_s=sweep_s, discovery_interval_s=3600, discovery_fast_interval_s=3600)


def _forget(net, peer_id):
    """What py-libp2p 0.8.1 sometimes does under load: unlist a connection and leave it open."""
    (conn,) = net.host.get_network().connections.pop(peer_id)
    return conn.muxed_conn


async def test_an_unlisted_open_connection_is_closed_on_the_second_sweep_and_frees_its_slot():
    async with swarm(2, params=_quiet(3600)) as (server, client):
        limiter = server.host.get_network()._inbound_limiter
        assert limiter.borrowed_tokens == 1  # the client dialled in
        (client_side,) = client.host.get_network().connections[server.host.get_id()]
        orphan = _forget(server, client.host.get_id())
        assert await server.orphans.reap() == 0 and not orphan.is_closed  # unlisted for a moment: maybe registering
        assert await server.orphans.reap() == 1 and orphan.is_closed
        assert await server.orphans.reap() == 0
        # The peer's side ends too, and the inbound slot is free again.
        await wait_until(lambda: client_side.muxed_conn.is_closed, 10)
        await wait_until(lambda: limiter.borrowed_tokens == 0, 10)
        assert server.status()["counters"]["orphan_connections_closed"] == 1


async def test_the_reaper_runs_by_itself_and_leaves_listed_connections_alone():
    async with swarm(3, params=_quiet(SWEEP_S)) as (a, b, c):
        await trio.sleep(5 * SWEEP_S)
        assert a.orphans.reaped == 0 and a.discovery.is_connected(b.host.get_id())
        orphan = _forget(a, c.host.get_id())
        await wait_until(lambda: orphan.is_closed and a.orphans.reaped == 1, 10)
        assert a.orphans.reaped == 1 and a.discovery.is_connected(b.host.get_id())


def _leak_slots(net, peer_id, count: int) -> None:
    """What a dial cancelled mid-registration leaves in py-libp2p's limit tracker: established slots, no connection."""
    tracker = net.host.get_network()._resource_manager.connection_lifecycle.tracker
    for i in range(count):
        tracker.add_pending_outbound(f"dead-{i}", peer_id)
        tracker.move_to_established_outbound(f"dead-{i}", peer_id)


def _slots(net, peer_id) -> int:
    return net.host.get_network()._resource_manager.connection_lifecycle.tracker.get_peer_connection_count(peer_id)


async def test_a_dial_refused_for_slots_of_dead_connections_frees_them_and_succeeds():
    async with swarm(2, params=_quiet(3600), connect="none") as (server, client):
        sid = server.host.get_id()
        client.host.get_peerstore().add_addrs(sid, server.host.get_addrs(), 10**9)
        _leak_slots(client, sid, 8)  # the library's per-peer cap
        release = client.discovery.release_stale_slots
        client.discovery.release_stale_slots = lambda: 0  # the library alone: refused for 30 s
        with pytest.raises(PeerUnreachable, match="per peer limit"):
            await client.connect(server.peer_id)
        client.discovery.release_stale_slots = release
        await client.connect(server.peer_id)
        assert client.discovery.is_connected(sid)
        assert _slots(client, sid) == 1  # the live connection's slot only
        assert client.status()["counters"]["stale_slots_released"] == 8


async def test_a_sweep_releases_dead_slots_and_keeps_live_and_orphaned_ones_until_closed():
    async with swarm(2, params=_quiet(3600)) as (server, client):
        cid = client.host.get_id()
        assert _slots(server, cid) == 1
        _leak_slots(server, cid, 3)
        assert server.orphans.release_stale_slots() == 3 and _slots(server, cid) == 1
        orphan = _forget(server, cid)
        assert await server.orphans.reap() == 0 and _slots(server, cid) == 1  # unlisted but open: maybe registering
        assert await server.orphans.reap() == 1 and orphan.is_closed
        assert _slots(server, cid) == 0
