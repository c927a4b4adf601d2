"""The dashboard's HTTP service on a real loopback socket: routes, token, exposure rules, hostile requests."""

from __future__ import annotations

import json

import pytest
import trio

from knexa_node.httpd import parse_request
from knexa_node.dashboard.server import DashboardError, DashboardServer, check_exposure, finite
from knexa_node.dashboard.views import exchange_rows, read_curve

TOKEN = "s3cret-token-0123456789"


async def _get(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def _serving(nursery: trio.Nursery, **kwargs) -> DashboardServer:
    server = DashboardServer("127.0.0.1:0", lambda: {"role": "node", "status": {"peer_id": "P", "x": float("nan")}},
                             **kwargs)
    await nursery.start(server.serve)
    return server


async def test_page_and_json_on_loopback():
    async with trio.open_nursery() as nursery:
        server = await _serving(nursery)
        port = server.bound[1]
        status, headers, body = await _get(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and headers["Content-Type"].startswith("text/html") and b"api/dashboard" in body
        assert "Content-Security-Policy" in headers and b"https://" not in body  # no external assets
        status, headers, body = await _get(port, b"GET /api/dashboard HTTP/1.1\r\n\r\n")
        data = json.loads(body)
        assert status == 200 and data["status"]["peer_id"] == "P" and data["status"]["x"] is None  # NaN -> null
        assert (await _get(port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await _get(port, b"POST / HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await _get(port, b"garbage\r\n\r\n"))[0] == 400
        # An oversized request is dropped without an answer, and the server keeps serving.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            with trio.fail_after(10):
                try:
                    await stream.send_all(b"GET /" + b"a" * 20000)
                    answer = await stream.receive_some(100)
                except trio.BrokenResourceError:  # closed with our bytes unread: a reset
                    answer = b""
            assert answer == b""
        assert (await _get(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_token_is_required_when_set():
    async with trio.open_nursery() as nursery:
        server = await _serving(nursery, token=TOKEN)
        port = server.bound[1]
        assert (await _get(port, b"GET /api/dashboard HTTP/1.1\r\n\r\n"))[0] == 401
        assert (await _get(port, b"GET /api/dashboard?token=wrong HTTP/1.1\r\n\r\n"))[0] == 401
        assert (await _get(port, f"GET /api/dashboard?token={TOKEN} HTTP/1.1\r\n\r\n".encode()))[0] == 200
        bearer = f"GET /api/dashboard HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        assert (await _get(port, bearer))[0] == 200
        nursery.cancel_scope.cancel()


def test_exposure_rules():
    check_exposure("127.0.0.1", False, "")
    check_exposure("::1", False, "")
    with pytest.raises(DashboardError, match="allow_remote"):
        check_exposure("0.0.0.0", False, "")
    with pytest.raises(DashboardError, match="token"):
        check_exposure("192.0.2.1", True, "short")
    check_exposure("192.0.2.1", True, TOKEN)
    with pytest.raises(DashboardError, match="host:port"):
        DashboardServer("nonsense", dict)


def test_request_parsing_and_finite():
    request = parse_request(b"GET /api/dashboard?token=a%20b&x=1 HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n")
    assert request is not None and request.path == "/api/dashboard" and request.query == {"token": "a b", "x": "1"}
    assert request.headers["authorization"] == "Bearer t"
    assert parse_request(b"\r\n\r\n") is None
    assert finite({"a": [1.0, float("inf")], "b": (float("-inf"),)}) == {"a": [1.0, None], "b": [None]}


def test_curve_file_tolerates_damage(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 0, "pass1": 0.1}\nnot json\n[1]\n{"round": 1, "pass1": 0.2}\n')
    assert [p["round"] for p in read_curve(path)] == [0, 1]
    assert read_curve(tmp_path / "missing.jsonl") == []


def test_exchange_rows_group_by_proposal():
    class Ev:
        def __init__(self, kind, pid, **kw):
            self.kind, self.proposal_id, self.round = kind, pid, kw.get("round", 1)
            self.peer, self.protocol, self.outcome = kw.get("peer", "T"), "text", kw.get("outcome", "ok")
            self.package_size, self.metrics = kw.get("size", 0), kw.get("metrics", {})

    class Entry:
        def __init__(self, seq, event):
            self.seq, self.event, self.time = seq, event, 1.0

    a, b = b"\1" * 32, b"\2" * 32
    entries = [Entry(0, Ev("proposal-accepted", a, metrics={"role": "student"})),
               Entry(1, Ev("package-received", a, size=900)),
               Entry(2, Ev("distillation", a, metrics={"items_used": 12, "steps": 3})),
               Entry(3, Ev("reward-reported", a, metrics={"reward": 0.25, "loss_before": 2.0, "loss_after": 1.5})),
               Entry(4, Ev("package-sent", b, peer="S", size=700, round=2)),
               Entry(5, Ev("refused-outsider", b"\0" * 32))]
    rows = exchange_rows(entries)
    assert [(r["role"], r["peer"], r["bytes"], r["items_used"], r["reward"], r["seqs"]) for r in rows] == [
        ("student", "T", 900, 12, 0.25, [0, 1, 2, 3]), ("teacher", "S", 700, None, None, [4])]
