"""Framed request/response streams: round trip, size caps, deadlines, bulk, handler isolation."""

import os

import pytest
import trio

from knexa_node.net.errors import PeerUnreachable, StreamClosed, StreamTimeout
from knexa_node.net.protocols import CPM_PROTOCOL, EXCHANGE_PROTOCOL
from knexa_node.testing import swarm, wait_until
from knexa_node.wire import Ack, WireError, seal_envelope


async def test_request_response_round_trip_and_authenticated_peer():
    async with swarm(2) as (server, client):
        seen = []

        async def reverse(stream, remote):
            seen.append(remote)
            await stream.send((await stream.receive(timeout=30))[::-1])

        server.set_handler(CPM_PROTOCOL, reverse)
        assert await client.request(server.peer_id, CPM_PROTOCOL, b"knexa") == b"axenk"
        assert seen == [client.peer_id]


async def test_signed_envelopes_over_a_stream():
    async with swarm(2) as (server, client):
        async def ack(stream, remote):
            envelope, message = await stream.receive_envelope(expect=(Ack,), timeout=30)
            assert envelope.sender == remote
            await stream.send_envelope(seal_envelope(server.signer, Ack(ref=envelope.digest, ok=True, code="ok", reason="")))

        server.set_handler(CPM_PROTOCOL, ack)
        stream = await client.open_request(server.peer_id, CPM_PROTOCOL)
        sent = seal_envelope(client.signer, Ack(ref=bytes(32), ok=True, code="hi", reason=""))
        await stream.send_envelope(sent)
        envelope, reply = await stream.receive_envelope(expect=(Ack,), timeout=30)
        await stream.close()
        assert envelope.sender == server.peer_id and reply.ref == sent.digest


async def test_oversized_frame_is_refused_from_its_length_prefix():
    async with swarm(2) as (server, client):
        errors = []

        async def capped(stream, remote):
            try:
                await stream.receive(max_size=1024, timeout=30)
            except WireError as exc:
                errors.append(exc.reason)
                raise

        server.set_handler(CPM_PROTOCOL, capped)
        stream = await client.open_request(server.peer_id, CPM_PROTOCOL)
        await stream.send(b"x" * 4096)
        await wait_until(lambda: errors == ["too-large"], 30)
        await wait_until(lambda: server.stats.stream_errors[f"{CPM_PROTOCOL} too-large"] == 1, 30)
        await stream.close()


async def test_silent_peer_times_out_and_the_server_keeps_serving():
    async with swarm(2) as (server, client):
        outcomes = []

        async def patient(stream, remote):
            try:
                outcomes.append(await stream.receive(timeout=0.3))
            except StreamTimeout:
                outcomes.append("timeout")
                raise
            await stream.send(b"ok")

        server.set_handler(EXCHANGE_PROTOCOL, patient)
        silent = await client.open_request(server.peer_id, EXCHANGE_PROTOCOL)  # never sends
        assert await client.request(server.peer_id, EXCHANGE_PROTOCOL, b"hi", timeout=5) == b"ok"
        await wait_until(lambda: "timeout" in outcomes, 30)
        with pytest.raises(StreamClosed):
            await silent.receive(timeout=5)  # the server reset it


async def test_bulk_transfer_arrives_intact():
    payload = os.urandom(5 * 1024 * 1024 + 123)
    async with swarm(2) as (server, client):
        got = []

        async def sink(stream, remote):
            size = int((await stream.receive(timeout=30)).decode())
            got.append(await stream.receive_bulk(size, timeout_per_chunk=10))
            await stream.send(b"done")

        server.set_handler(EXCHANGE_PROTOCOL, sink)
        stream = await client.open_request(server.peer_id, EXCHANGE_PROTOCOL)
        await stream.send(str(len(payload)).encode())
        await stream.send_bulk(payload, chunk_size=256 * 1024)
        assert await stream.receive(timeout=10) == b"done"
        await stream.close()
        assert got == [payload]


async def test_handler_crash_is_contained():
    async with swarm(2) as (server, client):
        async def broken(stream, remote):
            raise RuntimeError("bug")

        server.set_handler(CPM_PROTOCOL, broken)
        # Timeouts are hang bounds for a loaded CI box; the reset itself comes at once.
        # The reset can land before or after protocol negotiation finished on the client's side.
        with pytest.raises((StreamClosed, PeerUnreachable)):
            await client.request(server.peer_id, CPM_PROTOCOL, b"x", timeout=60)
        await wait_until(lambda: server.stats.stream_errors[f"{CPM_PROTOCOL} handler-error"] == 1, 60)
        server.set_handler(CPM_PROTOCOL, lambda s, r: s.send(b"fine"))
        # The daemon keeps serving. Right after a reset, py-libp2p occasionally fails the next
        # stream's protocol negotiation on the same connection; our clients retry (as the node's
        # CPM requests do), so the property is "served within a few attempts".
        answers = []
        for _ in range(3):
            try:
                answers.append(await client.request(server.peer_id, CPM_PROTOCOL, b"x", timeout=60))
                break
            except PeerUnreachable:
                await trio.sleep(0.5)
        assert answers == [b"fine"]


async def test_unknown_peer_is_unreachable():
    async with swarm(1) as (net,):
        with trio.fail_after(20):
            with pytest.raises(PeerUnreachable):
                await net.open_request("12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo", CPM_PROTOCOL, timeout=3)
