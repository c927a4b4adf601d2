"""Connections the swarm dropped without closing them are closed, and their inbound slot comes back."""

import trio

from knexa_node.testing import loopback_params, swarm, wait_until

SWEEP_S = 0.2


def _forget(net, peer_id):
    """What py-libp2p 0.8.1 sometimes does under load: unlist a connection and leave it open."""
    (conn,) = net.host.get_network().connections.pop(peer_id)
    return conn.muxed_conn


async def test_an_unlisted_open_connection_is_closed_on_the_second_sweep_and_frees_its_slot():
    async with swarm(2, params=loopback_params(orphan_sweep_s=3600)) as (server, client):
        limiter = server.host.get_network()._inbound_limiter
        assert limiter.borrowed_tokens == 1  # the client dialled in
        orphan = _forget(server, client.host.get_id())
        assert await server.orphans.reap() == 0 and not orphan.is_closed  # unlisted for a moment: maybe registering
        assert await server.orphans.reap() == 1 and orphan.is_closed
        assert await server.orphans.reap() == 0
        # The peer's side ends too, and the inbound slot is free again.
        await wait_until(lambda: not client.discovery.is_connected(server.host.get_id()) or
                         all(c.muxed_conn is not orphan for cs in client.host.get_network().connections.values() for c in cs), 10)
        await wait_until(lambda: limiter.borrowed_tokens == 0 or server.discovery.is_connected(client.host.get_id()), 10)
        assert server.status()["counters"]["orphan_connections_closed"] == 1


async def test_the_reaper_runs_by_itself_and_leaves_listed_connections_alone():
    # Discovery off: it would redial c at once and the peers' own trimming might close the orphan first.
    quiet = loopback_params(orphan_sweep_s=SWEEP_S, discovery_interval_s=3600, discovery_fast_interval_s=3600)
    async with swarm(3, params=quiet) as (a, b, c):
        await trio.sleep(5 * SWEEP_S)
        assert a.orphans.reaped == 0 and a.discovery.is_connected(b.host.get_id())
        orphan = _forget(a, c.host.get_id())
        await wait_until(lambda: orphan.is_closed and a.orphans.reaped == 1, 10)
        assert a.orphans.reaped == 1 and a.discovery.is_connected(b.host.get_id())
