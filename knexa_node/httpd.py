"""A tiny read-only HTTP/1.1 responder on trio sockets: one GET, one answer, close.

Shared by the daemon's local endpoints (Prometheus metrics, the dashboard).
Enough for a page and its JSON on loopback; no keep-alive, no request body.
Requests are bounded in size and time, so a slow or oversized client costs
one short-lived task and nothing else.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import trio

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Error')}", f"Content-Type: {self.content_type}",
                 f"Content-Length: {len(self.body)}", "Connection: close", "Cache-Control: no-store",
                 *(f"{k}: {v}" for k, v in self.headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def parse_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` (``[v6]:port`` for IPv6) -> ``(host, port)``; ``ValueError`` if malformed."""
    host, sep, port_text = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= 65535:
        raise ValueError(f"must be host:port, got {address!r}")
    return host, port


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def text(status: int, message: str) -> Response:
    return Response(status, "text/plain; charset=utf-8", (message + "\n").encode())


def parse_request(data: bytes) -> Request | None:
    """The request line and headers of ``data`` (None when malformed)."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
    lines = head.replace("\r\n", "\n").split("\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    url = urlsplit(parts[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    return Request(parts[0], url.path or "/", query, headers)


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive_some(MAX_REQUEST_BYTES)
        if not chunk:
            return None
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            return None
    return data


def make_handler(route: Callable[[Request], Response]) -> Callable[[trio.SocketStream], object]:
    """A ``trio.serve_listeners`` handler answering each request with ``route(request)``."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                data = await _read_head(stream)
                if data is None:
                    return
                request = parse_request(data)
                if request is None:
                    response = text(400, "bad request")
                elif request.method != "GET":
                    response = text(405, "only GET")
                else:
                    try:
                        response = route(request)
                    except Exception:  # a bug in one view must not take the daemon down
                        logger.exception("dashboard view failed")
                        response = text(500, "internal error (see the daemon's log)")
                await stream.send_all(response.to_bytes())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        finally:
            with trio.move_on_after(1):
                await stream.aclose()

    return handle


async def open_listeners(host: str, port: int) -> tuple[list[trio.SocketListener], tuple[str, int]]:
    """Listen on ``host:port`` (port 0: a free one); the listeners and the address they bound. OSError if not."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    return listeners, (str(sockname[0]), int(sockname[1]))


async def serve_routes(listeners: list[trio.SocketListener], route: Callable[[Request], Response], *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer every request on ``listeners`` with ``route(request)`` until cancelled."""
    async with trio.open_nursery() as nursery:
        task_status.started()
        await trio.serve_listeners(make_handler(route), listeners, handler_nursery=nursery)
