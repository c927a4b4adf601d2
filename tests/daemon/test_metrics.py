"""Prometheus metrics over 127.0.0.1: values read live from the daemon, bad requests answered, never fatal."""

import io
import time

import pytest
import trio

from knexa_node.config import Config
from knexa_node.crypto import Signer
from knexa_node.daemon.daemon import Daemon
from knexa_node.daemon.logs import EventLog
from knexa_node.daemon.metrics import (
    MetricsError,
    MetricsServer,
    is_loopback_host,
    parse_address,
)
from knexa_node.identity import NodeHome
from knexa_node.net.protocols import ROUNDS, topic
from knexa_node.net.stats import NetStats
from knexa_node.testing import loopback_params, swarm, wait_until
from knexa_node.wire import RoundOpen, seal_envelope

T = topic("test", ROUNDS)


async def http(port: int, request: bytes) -> tuple[int, str]:
    with trio.fail_after(60):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        await stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def sample(text: str, name: str) -> float | None:
    """The value of the metric line that starts with ``name`` (labels included), else None."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def scrape(port: int) -> str:
    status, body = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    return body


async def test_scrape_shows_peers_gossip_drops_bytes_and_round():
    current = {"round": None}
    async with swarm(2) as (net, other):
        got = []

        async def on(envelope, message, origin):
            got.append(message.round)

        net.subscribe(T, on)
        other.subscribe(T, on)
        await wait_until(lambda: net.gossip.topics()[T]["mesh"] > 0 and other.gossip.topics()[T]["mesh"] > 0, 60)
        server = MetricsServer("127.0.0.1:0", net.stats, peers=lambda: len(net.connected_peers()), round_=lambda: current["round"])
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            port = server.bound[1]
            body = await scrape(port)
            assert sample(body, "knexa_connected_peers") == 1
            assert sample(body, "knexa_round") is None  # no round yet: no sample rather than a made-up 0

            await net.publish(T, seal_envelope(net.signer, RoundOpen(round=4, deadline=0.0, policy="p")).to_bytes())
            await other.publish(T, seal_envelope(other.signer, RoundOpen(round=5, deadline=0.0, policy="p")).to_bytes())
            stale = seal_envelope(other.signer, RoundOpen(round=6, deadline=0.0, policy="p"), now=time.time() - 10_000)
            await other.publish(T, stale.to_bytes())
            # Two publishers: their messages may arrive in either order.
            await wait_until(lambda: sorted(got) == [4, 5] and net.stats.dropped["stale"] == 1, 60)
            current["round"] = 7
            body = await scrape(port)
            assert sample(body, f'knexa_gossip_messages_out_total{{topic="{T}"}}') == 1
            assert sample(body, f'knexa_gossip_messages_in_total{{topic="{T}"}}') == 1
            assert sample(body, 'knexa_gossip_dropped_total{reason="stale"}') == 1
            assert sample(body, "knexa_round") == 7
            assert sample(body, "knexa_stream_bytes_in_total") == net.stats.bytes_in
            assert sample(body, "knexa_gossip_copies_out_total") == net.stats.gossip_copies_out >= 1
            assert sample(body, "knexa_gossip_copies_in_total") == net.stats.gossip_copies_in >= 2  # the stale one too
            assert sample(body, 'knexa_gossip_control_total{direction="in",kind="graft"}') == net.stats.gossip_control["graft in"] >= 1
            assert server.scrapes == 2
            nursery.cancel_scope.cancel()


async def test_bad_requests_get_answers_and_the_server_keeps_serving():
    server = MetricsServer("127.0.0.1:0", NetStats(), peers=lambda: 0, round_=lambda: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        port = server.bound[1]
        assert (await http(port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await http(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await http(port, b"garbage\r\n\r\n"))[0] == 400
        # Oversized headers: the connection is closed without an answer.
        with trio.fail_after(60):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                await stream.send_all(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 20000)
                assert await stream.receive_some(100) == b""
            except trio.BrokenResourceError:
                pass  # reset while we were still sending: also a refusal
            await stream.aclose()
        assert sample(await scrape(port), "knexa_connected_peers") == 0
        nursery.cancel_scope.cancel()


def test_addresses_are_parsed_or_refused():
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:9") == ("::1", 9)
    for bad in ("9464", "127.0.0.1:", "127.0.0.1:http", ":80", "h:70000"):
        with pytest.raises(MetricsError):
            parse_address(bad)
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("10.0.0.1")


async def test_daemon_serves_metrics_when_enabled(tmp_path):
    config = Config()
    config.metrics.enabled = True
    config.metrics.address = "127.0.0.1:0"
    daemon = Daemon(NodeHome(tmp_path), config, Signer.generate(), log=EventLog("json", out=io.StringIO(), err=io.StringIO()),
                    params=loopback_params())
    daemon.rounds.enter(2)  # the gauge reads the daemon's one owner of the current round
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await wait_until(lambda: daemon.metrics is not None and daemon.metrics.bound is not None, 20)
        body = await scrape(daemon.metrics.bound[1])
        assert sample(body, "knexa_round") == 2
        assert sample(body, "knexa_connected_peers") == 0
        daemon.stop()
