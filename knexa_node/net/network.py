"""The :class:`Network`: the one object other rooms use to talk to peers.

Usage (a service of the daemon, or a test through :mod:`knexa_node.testing`)::

    net = Network(signer, NetParams.from_config(config))
    net.set_handler(EXCHANGE_PROTOCOL, serve_exchange)      # before or after start
    net.subscribe(topic(consortium, ROUNDS), on_round)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.serve)                      # listening, DHT, gossip, discovery
        stream = await net.open_request(peer_id, CPM_PROTOCOL)
        await net.publish(topic(consortium, ROUNDS), envelope.to_bytes())

Stream handlers get a :class:`~knexa_node.net.streams.FramedStream` and the
authenticated remote peer ID; the stream is closed (or reset on error) when
the handler returns, and a handler's exception is logged and counted, never
propagated. ``serve`` closes the host (sockets included) when cancelled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.tools.anyio_service import background_trio_service

from knexa_node.crypto import Signer, is_valid_peer_id
from knexa_node.net import quiet_logs
from knexa_node.net.dht_streams import bound_inbound_dht_streams
from knexa_node.net.discovery import Discovery
from knexa_node.net.errors import NetError, PeerUnreachable, StreamTimeout, describe_failure
from knexa_node.net.gossip import Gossip, GossipHandler
from knexa_node.net.host import bound_addrs, build_host, dialable_addrs, parse_addrs
from knexa_node.net.orphans import OrphanReaper
from knexa_node.net.params import NetParams
from knexa_node.net.routing import MemberSubnetGate
from knexa_node.net.stats import NetStats
from knexa_node.net.streams import FramedStream
from knexa_node.wire import WireError

logger = logging.getLogger(__name__)
LISTENER_CLOSE_S = 2.0  # bound on closing the listeners when the node stops

StreamHandler = Callable[[FramedStream, str], Awaitable[None]]
"""``async def handler(stream, remote_peer_id)``."""
EventFn = Callable[..., None]


def _no_event(event: str, **fields: Any) -> None:
    logger.debug("%s %s", event, fields)


class _ConnectionEvents(INotifee):
    """Turns swarm notifications into structured events (connected/disconnected)."""

    def __init__(self, net: "Network") -> None:
        self.net = net

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id.to_base58()
        self.net.on_event("peer-connected", peer_id=peer, addrs=[str(a) for a in _conn_addrs(conn)])
        self.net.discovery.wake()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self.net.on_event("peer-disconnected", peer_id=conn.muxed_conn.peer_id.to_base58())
        self.net.discovery.wake()  # redial (or find again) a lost peer without waiting out a long interval

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


def _conn_addrs(conn: INetConn) -> list[multiaddr.Multiaddr]:
    try:
        return list(conn.get_transport_addresses())  # type: ignore[attr-defined]
    except Exception:  # not every connection type can tell; the peerstore is the fallback
        return []


class Network:
    """A libp2p host with our protocols: framed streams, signed gossip, DHT discovery."""

    def __init__(self, signer: Signer, params: NetParams, *, on_event: EventFn | None = None) -> None:
        self.signer = signer
        self.params = params
        self.peer_id = signer.peer_id
        self.stats = NetStats()
        self.on_event: EventFn = on_event or _no_event
        quiet_logs.install()
        self.host = build_host(signer, params)
        self.orphans = OrphanReaper(self.host.get_network(), params.orphan_sweep_s, self.stats)
        self.orphans.install()
        # Created before any dial: py-libp2p refuses add_peer on a DHT created later.
        # Its subnet cap is off here and applied to strangers only by the gate (knexa_node.net.routing).
        self.dht = KadDHT(self.host, DHTMode.SERVER, max_peers_per_subnet=0)
        bound_inbound_dht_streams(self.dht, params.dht_stream_idle_s, self.stats)
        self.gossip = Gossip(self.host, params.gossip, self.stats)
        self.discovery = Discovery(
            self.host, self.dht, params, self.stats, self._event, release_stale_slots=self.orphans.release_stale_slots
        )
        members = frozenset(params.members) | {p.to_base58() for p in self.discovery.bootstrap_ids()}
        self.subnet_gate = MemberSubnetGate(self.dht.routing_table, lambda: members)
        self.host.get_network().register_notifee(_ConnectionEvents(self))
        self.started_at: float | None = None
        self._running = trio.Event()

    def _event(self, event: str, **fields: Any) -> None:
        self.on_event(event, **fields)

    # --- lifecycle ----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus["Network"] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, start DHT, gossip and discovery; report ``started`` once listeners are up."""
        listen = parse_addrs(self.params.listen, "listen")
        try:
            async with self.host.run(listen):
                if not self.host.get_transport_addrs():
                    raise NetError(f"could not listen on any of {', '.join(self.params.listen)} (address in use or not local?)")
                async with background_trio_service(self.dht):
                    async with trio.open_nursery() as nursery:
                        await nursery.start(self.gossip.serve)
                        await nursery.start(self.discovery.serve)
                        await nursery.start(self.orphans.serve)
                        self.started_at = time.monotonic()
                        self._running.set()
                        task_status.started(self)
                        try:
                            await trio.sleep_forever()
                        finally:
                            # Before the host's services stop: peers redial a node they saw leave at once.
                            await _stop_listening(self.host)
        finally:
            # Leaving host.run() does not close sockets in py-libp2p 0.8.1.
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await self.host.close()
                except Exception:  # closing half-dead connections may fail; the process is leaving anyway
                    logger.debug("host.close failed", exc_info=True)

    async def wait_running(self) -> None:
        await self._running.wait()

    # --- streams ------------------------------------------------------------------------------

    def set_handler(self, protocol: str, handler: StreamHandler, *, max_frame: int | None = None) -> None:
        """Serve ``protocol``: each inbound stream runs ``handler(stream, remote_peer_id)``."""
        frame_cap = max_frame or self.params.max_frame

        async def on_stream(raw: INetStream) -> None:
            stream = FramedStream(raw, max_frame=frame_cap)
            self.stats.streams_in[protocol] += 1
            failed = True
            try:
                await handler(stream, stream.remote_peer_id)
                failed = False
            except (NetError, WireError) as exc:
                reason = getattr(exc, "reason", type(exc).__name__)
                self.stats.stream_errors[f"{protocol} {reason}"] += 1
                self.on_event("stream-error", protocol=protocol, peer_id=stream.remote_peer_id, error=str(exc)[:300])
            except Exception as exc:  # a handler bug must not take the daemon down
                self.stats.stream_errors[f"{protocol} handler-error"] += 1
                logger.exception("handler for %s failed", protocol)
                self.on_event("stream-error", protocol=protocol, peer_id=stream.remote_peer_id, error=f"{type(exc).__name__}: {exc}"[:300])
            finally:
                self.stats.bytes_in += stream.bytes_received
                self.stats.bytes_out += stream.bytes_sent
                await (stream.reset() if failed else stream.close())

        self.host.set_stream_handler(TProtocol(protocol), on_stream)

    async def open_request(self, peer_id: str, protocol: str, *, timeout: float | None = None, max_frame: int | None = None) -> FramedStream:
        """Open a framed stream of ``protocol`` to ``peer_id``: peerstore or DHT for its address, dial, negotiate."""
        if not is_valid_peer_id(peer_id):
            raise PeerUnreachable(f"not a peer ID: {peer_id[:80]!r}")
        deadline = timeout if timeout is not None else self.params.stream_open_timeout_s
        pid = ID.from_base58(peer_id)
        try:
            with trio.fail_after(deadline):
                await self.connect(peer_id)
                raw = await self.host.new_stream(pid, [TProtocol(protocol)])
        except trio.TooSlowError:
            raise StreamTimeout(f"opening {protocol} to {peer_id} took more than {deadline:g} s") from None
        except NetError:
            raise
        except Exception as exc:  # negotiation failures come as many py-libp2p types
            raise PeerUnreachable(f"cannot open {protocol} to {peer_id}: {describe_failure(exc)}") from None
        self.stats.streams_out[protocol] += 1
        return FramedStream(raw, max_frame=max_frame or self.params.max_frame)

    async def request(self, peer_id: str, protocol: str, payload: bytes, *, timeout: float = 30.0, max_size: int | None = None) -> bytes:
        """Send one frame and return the one-frame answer (open, send, receive, close)."""
        stream = await self.open_request(peer_id, protocol, timeout=timeout)
        try:
            await stream.send(payload)
            return await stream.receive(max_size, timeout)
        finally:
            self.stats.bytes_in += stream.bytes_received
            self.stats.bytes_out += stream.bytes_sent
            await stream.close()

    async def connect(self, peer_id: str) -> None:
        """Make sure we are connected to ``peer_id`` (peerstore addresses, else a DHT lookup)."""
        pid = ID.from_base58(peer_id)
        if pid == self.host.get_id():
            raise PeerUnreachable("cannot connect to ourselves")
        if self.discovery.is_connected(pid):
            return
        addrs = self.discovery.known_addrs(pid)
        if not addrs:
            with trio.move_on_after(self.params.dial_timeout_s):
                info = await self.dht.find_peer(pid)
                addrs = list(info.addrs) if info else []
        if not addrs:
            raise PeerUnreachable(f"no address known for {peer_id} (not in the peerstore nor the DHT)")
        await self.discovery.dial(PeerInfo(pid, addrs))

    # --- gossip -------------------------------------------------------------------------------

    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        """Deliver valid signed envelopes of ``topic`` to ``handler(envelope, message, from_peer_id)``."""
        self.gossip.subscribe(topic, handler)

    async def publish(self, topic: str, envelope_bytes: bytes) -> None:
        await self.gossip.publish(topic, envelope_bytes)

    # --- introspection ------------------------------------------------------------------------

    def connected_peers(self) -> list[dict[str, Any]]:
        """``[{"peer_id", "addrs"}]`` of every peer we hold an open connection to."""
        out = []
        network = self.host.get_network()
        for pid in sorted(self.host.get_connected_peers(), key=lambda p: p.to_base58()):
            # The peer's own listen addresses (identify, DHT, config), else the connection's.
            addrs = [str(a) for a in self.discovery.known_addrs(pid)]
            if not addrs:
                for conn in network.connections.get(pid, []):  # type: ignore[union-attr]
                    addrs += [str(a) for a in _conn_addrs(conn)]
            out.append({"peer_id": pid.to_base58(), "addrs": sorted(set(addrs))})
        return out

    def listen_addrs(self) -> list[str]:
        return bound_addrs(self.host)

    def dialable_addrs(self) -> list[str]:
        return dialable_addrs(self.host)

    def status(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "listen_addrs": self.listen_addrs(),
            "announce_addrs": self.dialable_addrs(),
            "uptime_s": round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
            "connected_peers": self.connected_peers(),
            "dht_routing_table_size": self.dht.get_routing_table_size(),
            "dht_subnet_refused": self.subnet_gate.refused,
            "topics": self.gossip.topics(),
            "counters": self.stats.snapshot(),
        }


@asynccontextmanager
async def open_network(signer: Signer, params: NetParams, *, on_event: EventFn | None = None) -> AsyncIterator[Network]:
    """A running :class:`Network` for the body of the ``async with``; closed on exit."""
    net = Network(signer, params, on_event=on_event)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.serve)
        try:
            yield net
        finally:
            nursery.cancel_scope.cancel()  # serve() closes the listeners first


async def _stop_listening(host: Any) -> None:
    """Close the listeners before the host's services stop.

    Otherwise peers that re-dial while the node shuts down (a restart at a new
    address, say; discovery redials a peer as soon as its connection drops)
    reach a swarm whose service has stopped, and py-libp2p logs a traceback per
    connection (``[ADDCONN_FAIL] ... LifecycleError``) from a clean stop. Called
    by :meth:`Network.serve` on its way out, for daemons and tests alike.
    """
    listeners = getattr(host.get_network(), "listeners", {})
    with trio.move_on_after(LISTENER_CLOSE_S) as scope:
        scope.shield = True  # runs while the body's cancellation may be pending
        for listener in list(listeners.values()):
            try:
                await listener.close()
            except Exception as exc:  # noqa: BLE001 - stopping anyway; the swarm's own close retries
                logger.debug("closing a listener on stop: %s", exc)
