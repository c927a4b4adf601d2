"""Optional Prometheus metrics: a tiny HTTP responder on a trio socket (no threads).

Off by default; with ``[metrics] enabled = true`` the daemon runs
:meth:`MetricsServer.serve` as one of its services on ``metrics.address``
(``host:port``, loopback by default; another address is served but warned
about, since the figures say who the node talks to).

Every value is read at scrape time from what the daemon already keeps (the
network's :class:`~knexa_node.net.stats.NetStats`, its connections, and its
current round from ``daemon.rounds``), so nothing has to be kept in step:

- ``knexa_connected_peers``                    gauge
- ``knexa_gossip_messages_in_total{topic}``     counter (delivered to handlers)
- ``knexa_gossip_messages_out_total{topic}``    counter (published)
- ``knexa_gossip_dropped_total{reason}``        counter (refused: bad signature, stale, duplicate, ...)
- ``knexa_gossip_copies_in_total`` / ``_out_total`` counters (message copies received, duplicates included / sent)
- ``knexa_gossip_control_total{kind,direction}`` counter (IHAVE, IWANT, GRAFT, PRUNE in and out: mesh churn shows here)
- ``knexa_stream_bytes_in_total`` / ``_out_total`` counters (framed stream bytes)
- ``knexa_stream_errors_total{protocol,reason}`` counter (``reason="non-member"`` on the exchange protocol:
  streams from peers outside the consortium, every one of them)
- ``knexa_refusals_unlogged_total``             counter (those refusals kept out of the audit log by its rate limit)
- ``knexa_round``                               gauge (the node's round, or the CPM's last opened; absent before the first)

``prometheus-client`` is the ``metrics`` extra; enabling metrics without it
is a :class:`MetricsError` at start, not an import error of the daemon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import trio

from knexa_node.httpd import (
    Request, Response, is_loopback_host, open_listeners, parse_host_port, serve_routes, text,
)
from knexa_node.net.errors import NetError
from knexa_node.net.stats import NetStats

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
    )
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError:  # the optional extra is not installed: MetricsServer refuses to start
    CollectorRegistry = None  # type: ignore[assignment,misc]

logger = logging.getLogger(__name__)

EventFn = Callable[..., None]


class MetricsError(NetError):
    """The metrics endpoint cannot be served (bad address, missing prometheus-client, port in use).

    A :class:`NetError`, so that ``knexa-node start`` reports it as a network problem and exits.
    """


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (``[v6]:port`` for IPv6) -> ``(host, port)``; :class:`MetricsError` if malformed."""
    try:
        return parse_host_port(address)
    except ValueError as exc:
        raise MetricsError(f"metrics.address {exc}") from None


class _Collector:
    """Builds the metric families from the daemon's live state at each scrape."""

    def __init__(self, stats: NetStats, peers: Callable[[], int], round_: Callable[[], int | None]) -> None:
        self.stats, self.peers, self.round = stats, peers, round_

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        yield GaugeMetricFamily("knexa_connected_peers", "Peers with an open connection.", value=self.peers())
        for name, doc, counts in (
            ("knexa_gossip_messages_in", "Valid gossip messages delivered to handlers.", stats.messages_in),
            ("knexa_gossip_messages_out", "Gossip messages published.", stats.messages_out),
        ):
            family = CounterMetricFamily(name, doc, labels=["topic"])
            for topic, count in sorted(counts.items()):
                family.add_metric([topic], count)
            yield family
        dropped = CounterMetricFamily("knexa_gossip_dropped", "Gossip messages refused, by reason.", labels=["reason"])
        for reason, count in sorted(stats.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily("knexa_gossip_copies_in", "Gossip message copies peers sent us, duplicates "
                                  "included.", value=stats.gossip_copies_in)
        yield CounterMetricFamily("knexa_gossip_copies_out", "Gossip message copies we sent (publications and "
                                  "forwards).", value=stats.gossip_copies_out)
        control = CounterMetricFamily("knexa_gossip_control", "GossipSub control messages (IHAVE, IWANT, GRAFT, "
                                      "PRUNE), by kind and direction.", labels=["kind", "direction"])
        for key, count in sorted(stats.gossip_control.items()):
            kind, _, direction = key.partition(" ")
            control.add_metric([kind, direction], count)
        yield control
        yield CounterMetricFamily("knexa_stream_bytes_in", "Bytes received on framed streams.", value=stats.bytes_in)
        yield CounterMetricFamily("knexa_stream_bytes_out", "Bytes sent on framed streams.", value=stats.bytes_out)
        errors = CounterMetricFamily("knexa_stream_errors", "Stream requests refused or failed.", labels=["protocol", "reason"])
        for key, count in sorted(stats.stream_errors.items()):
            protocol, _, reason = key.partition(" ")
            errors.add_metric([protocol, reason], count)
        yield errors
        yield CounterMetricFamily("knexa_refusals_unlogged", "Refusals of outsiders not written to the audit log "
                                  "(at most one entry per peer per minute).", value=stats.refusals_unlogged)
        current = self.round()
        if current is not None:
            yield GaugeMetricFamily("knexa_round", "Current round (node: the learner's; CPM: the last opened).", value=current)


class MetricsServer:
    """Serves ``GET /metrics`` in the Prometheus text format on ``address``."""

    def __init__(self, address: str, stats: NetStats, *, peers: Callable[[], int], round_: Callable[[], int | None],
                 on_event: EventFn | None = None) -> None:
        if CollectorRegistry is None:
            raise MetricsError("metrics are enabled but prometheus-client is not installed (pip install 'knexa[metrics]')")
        self.host, self.port = parse_address(address)
        self.on_event: EventFn = on_event or (lambda event, **fields: logger.info("%s %s", event, fields))
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(stats, peers, round_))  # type: ignore[arg-type]
        self.bound: tuple[str, int] | None = None
        self.scrapes = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not is_loopback_host(self.host):
            self.on_event("warning", problem=f"metrics are served on {self.host}, not loopback: anyone who reaches that "
                                             "address sees this node's peers and traffic. Prefer 127.0.0.1 and a scraper on this host.")
        try:
            listeners, self.bound = await open_listeners(self.host, self.port)
        except OSError as exc:
            raise MetricsError(f"cannot listen for metrics on {self.host}:{self.port}: {exc}") from None
        self.on_event("metrics-listening", address=f"{self.bound[0]}:{self.bound[1]}")
        await serve_routes(listeners, self.route, task_status=task_status)

    def route(self, request: Request) -> Response:
        if request.path not in ("/metrics", "/"):
            return text(404, "not found; try /metrics")
        self.scrapes += 1
        return Response(200, CONTENT_TYPE_LATEST, generate_latest(self.registry))
