"""Connections the swarm dropped without closing them are closed, and their inbound slot comes back."""

import trio

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
