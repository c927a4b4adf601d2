"""py-libp2p 0.8.1 refuses every inbound connection after 250 in a host's lifetime; ours must not."""

import warnings

import pytest
import trio

from knexa_node.net.errors import PeerUnreachable
from knexa_node.testing import swarm, wait_until

CLIENTS = 10
CYCLES = 30  # 10 x 30 = 300 inbound connections, above the library's cap of 250
MAX_STRAY_REFUSALS = 3


@pytest.mark.slow
async def test_three_hundred_inbound_connections_are_accepted():
    async with swarm(CLIENTS + 1, connect="none") as nets:
        server, clients = nets[0], nets[1:]
        limiter = server.host.get_network()._inbound_limiter
        assert limiter.total_tokens == 250  # the library's default cap this test must exceed
        accepted = 0
        refused: list[str] = []

        async def cycle(client):
            nonlocal accepted
            sid = server.host.get_id()
            for _ in range(CYCLES):
                client.host.get_peerstore().add_addrs(sid, server.host.get_addrs(), 10**9)
                try:
                    await client.connect(server.peer_id)
                except PeerUnreachable as exc:
                    refused.append(str(exc))
                    await trio.sleep(1)
                    continue
                accepted += 1
                await client.host.disconnect(sid)
                await wait_until(lambda: not client.discovery.is_connected(sid), 30)

        # A bound against hanging, not a speed target: 300 Noise handshakes on a loaded 2-core CI box.
        with trio.fail_after(300):
            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(cycle, client)
        # The library's leak refuses every dial after the 250th: at least 50 refusals. On a loaded CI box
        # one dial failed, and once its retry a second later too, so a few stray refusals are tolerated
        # and named (with their causes: knexa_node.net.errors.describe_failure).
        if refused:  # shown in the run's warning summary, so a stray refusal's cause is on record
            warnings.warn(f"{len(refused)} stray dial refusals; first: {refused[0]}", stacklevel=1)
        assert len(refused) <= MAX_STRAY_REFUSALS, f"{len(refused)} dials refused: {refused[:3]}"
        assert accepted >= CLIENTS * CYCLES - MAX_STRAY_REFUSALS
        # Slots come back as connections end. Under load py-libp2p leaves a few connections open that no
        # table lists (knexa_node.net.orphans closes them within two sweeps, 20 s); clients that discovery
        # reconnects hold a slot each, legitimately. So the check is that the pool is far from exhausted;
        # exhaustion (the library's bug) would have refused the last 50.
        with trio.move_on_after(60):
            await wait_until(lambda: limiter.borrowed_tokens <= CLIENTS, 61)
        assert limiter.borrowed_tokens <= CLIENTS, f"{limiter.borrowed_tokens} inbound slots still held"
