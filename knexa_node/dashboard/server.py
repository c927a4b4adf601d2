"""The dashboard's HTTP service: the page, its JSON, and who may read them.

Off by default (``[dashboard] enabled``). On loopback it needs no token;
any other address is refused unless ``allow_remote = true`` and a ``token``
is set, and then every request must carry it (``?token=`` or
``Authorization: Bearer``), compared in constant time. The page polls
``/api/dashboard`` every few seconds while it is open; nothing is computed
when nobody looks.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable
from importlib import resources
from typing import Any

import trio

from knexa_node.httpd import (
    Request, Response, is_loopback_host, open_listeners, parse_host_port, serve_routes, text,
)
from knexa_node.net.errors import NetError

EventFn = Callable[..., None]


class DashboardError(NetError):
    """The dashboard cannot be served as configured (a NetError: `start` reports it and exits)."""


def parse_address(address: str) -> tuple[str, int]:
    try:
        return parse_host_port(address)
    except ValueError as exc:
        raise DashboardError(f"dashboard.address {exc}") from None


def check_exposure(host: str, allow_remote: bool, token: str) -> None:
    """Refuse to serve off loopback unless explicitly allowed, and then only with a token."""
    if is_loopback_host(host):
        return
    if not allow_remote:
        raise DashboardError(f"dashboard.address {host} is not loopback: set dashboard.allow_remote = true "
                             "and a dashboard.token to serve it there")
    if len(token) < 16:
        raise DashboardError("dashboard.allow_remote needs a dashboard.token of at least 16 characters")


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: the browser's JSON.parse refuses them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def page_html() -> bytes:
    return resources.files("knexa_node.dashboard").joinpath("page.html").read_bytes()


class DashboardServer:
    def __init__(self, address: str, snapshot: Callable[[], dict[str, Any]], *, allow_remote: bool = False,
                 token: str = "", on_event: EventFn | None = None) -> None:
        self.host, self.port = parse_address(address)
        check_exposure(self.host, allow_remote, token)
        self.snapshot, self.token = snapshot, token
        self.on_event: EventFn = on_event or (lambda event, **fields: None)
        self.bound: tuple[str, int] | None = None
        self.requests = 0
        self._page = page_html()

    @property
    def url(self) -> str | None:
        if self.bound is None:
            return None
        host = f"[{self.bound[0]}]" if ":" in self.bound[0] else self.bound[0]
        return f"http://{host}:{self.bound[1]}/"

    def _authorized(self, request: Request) -> bool:
        if not self.token:
            return True
        offered = request.query.get("token", "")
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            offered = bearer[7:].strip()
        return hmac.compare_digest(offered.encode(), self.token.encode())

    def route(self, request: Request) -> Response:
        if not self._authorized(request):
            return text(401, "a token is required (?token=...)")
        self.requests += 1
        if request.path in ("/", "/index.html"):
            return Response(200, "text/html; charset=utf-8", self._page,
                            {"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline' 'self'; "
                                                        "style-src 'unsafe-inline' 'self'; connect-src 'self'"})
        if request.path == "/api/dashboard":
            body = json.dumps(finite(self.snapshot()), default=str, allow_nan=False).encode()
            return Response(200, "application/json", body)
        return text(404, "not found; try / or /api/dashboard")

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            listeners, self.bound = await open_listeners(self.host, self.port)
        except OSError as exc:
            raise DashboardError(f"cannot listen for the dashboard on {self.host}:{self.port}: {exc}") from None
        self.on_event("dashboard-listening", url=self.url)
        await serve_routes(listeners, self.route, task_status=task_status)
