"""Finding and keeping peers: bootstrap dialing with backoff, Kademlia DHT discovery, reconnection.

- One task per bootstrap address dials it, retrying with exponential backoff
  (``backoff_min_s`` doubling to ``backoff_max_s``) while it is down, adds it to
  the DHT routing table once connected, and redials when the connection drops
  (a restarted bootstrap is found again).
- One task looks up our own key in the DHT (which returns the peers closest to
  us; in a consortium of tens of nodes that is everyone) and dials every peer
  of the routing table we are not connected to, up to ``max_peers``: a node
  that knows only the bootstrap finds the others, and peers that restart are
  redialed. It runs every ``discovery_fast_interval_s`` while we know no peer
  beyond the bootstraps, then every ``discovery_interval_s``, and at once when
  a peer connects or disconnects. While rounds find nothing to dial (we are
  connected to every peer we know) the interval doubles up to
  ``discovery_max_interval_s``: each lookup is a stream to up to 20 peers whose
  answers carry signed peer records to verify, and in a settled consortium
  newcomers dial us themselves (measured: docs/netlab.md, "Gossip CPU per message").

The DHT must exist before any dial (py-libp2p refuses ``add_peer`` otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.peer.peerstore import PeerStoreError

from knexa_node.net.errors import PeerUnreachable, describe_failure
from knexa_node.net.params import NetParams
from knexa_node.net.stats import NetStats

logger = logging.getLogger(__name__)

EventFn = Callable[..., None]
# Peerstore TTL of addresses learned from config: long, they are the operator's word.
_BOOTSTRAP_ADDR_TTL = 10**9


def next_discovery_interval(previous: float, *, knows_peers: bool, settled: bool, fast: float, base: float,
                            ceiling: float) -> float:
    """Seconds until the next discovery round: ``fast`` while we know no peer, ``base`` while
    there are peers to dial, doubling from ``base`` up to ``ceiling`` while nothing changes."""
    if not knows_peers:
        return fast
    if not settled:
        return base
    return min(max(previous * 2, base), max(ceiling, base))


def parse_bootstrap(addr: str) -> PeerInfo:
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:  # multiaddr and peer ID parsing raise several types
        raise ValueError(f"bad bootstrap address {addr!r}: {exc}") from None


class Discovery:
    def __init__(
        self,
        host: IHost,
        dht: KadDHT,
        params: NetParams,
        stats: NetStats,
        on_event: EventFn,
        release_stale_slots: Callable[[], int] = lambda: 0,
    ) -> None:
        self.host, self.dht, self.params, self.stats, self.on_event = host, dht, params, stats, on_event
        # Frees connection slots py-libp2p still counts for dead connections (knexa_node.net.orphans).
        self.release_stale_slots = release_stale_slots
        self.bootstraps = [parse_bootstrap(a) for a in params.bootstrap]
        self._wake = trio.Event()
        # Set (and replaced) at every connection or disconnection: what bootstrap keepers wait on.
        self._connections_changed = trio.Event()
        # Set by every connection change: the next round looks up the whole network again.
        self._changed = True
        self.lookups = 0  # full iterative lookups
        self.probes = 0  # single requests of a settled node

    def bootstrap_ids(self) -> set[ID]:
        return {info.peer_id for info in self.bootstraps}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for info in self.bootstraps:
                if info.peer_id != self.host.get_id():
                    nursery.start_soon(self._keep_bootstrap, info)
            nursery.start_soon(self._discover_loop)
            task_status.started()

    def wake(self) -> None:
        """Run a discovery round now, and let bootstrap keepers look (after a connection came or went)."""
        self._wake.set()
        self._changed = True
        self._connections_changed.set()
        self._connections_changed = trio.Event()

    async def dial(self, info: PeerInfo) -> None:
        """Connect to ``info`` within ``dial_timeout_s``; raise :class:`PeerUnreachable`."""
        try:
            with trio.fail_after(self.params.dial_timeout_s):
                try:
                    await self._connect(info)
                except Exception:
                    # Refused by a limit that counted dead connections? Free those slots and try once more.
                    if not self.release_stale_slots():
                        raise
                    await self._connect(info)
        except trio.TooSlowError:
            self.stats.dials_failed += 1
            raise PeerUnreachable(f"dial {info.peer_id} timed out after {self.params.dial_timeout_s:g} s") from None
        except Exception as exc:  # py-libp2p raises many unrelated types on a failed dial
            self.stats.dials_failed += 1
            raise PeerUnreachable(f"dial {info.peer_id} failed: {describe_failure(exc)}") from None
        self.stats.dials_ok += 1

    async def _connect(self, info: PeerInfo) -> None:
        # py-libp2p refuses for 60 s to dial a peer whose addresses all failed once;
        # we run our own backoff, and a restarted peer must be reachable at once.
        negative_cache = getattr(self.host.get_network(), "_negative_peer_cache", None)
        if negative_cache is not None:
            negative_cache.evict(str(info.peer_id))
        await self.host.connect(info)

    def known_addrs(self, peer_id: ID) -> list[multiaddr.Multiaddr]:
        """Addresses of ``peer_id`` in the peerstore ([] if unknown: py-libp2p raises there)."""
        try:
            return list(self.host.get_peerstore().addrs(peer_id))
        except PeerStoreError:
            return []

    def is_connected(self, peer_id: ID) -> bool:
        conns = self.host.get_network().connections.get(peer_id)
        return bool(conns) and any(not c.is_closed for c in conns)  # type: ignore[union-attr]

    async def _keep_bootstrap(self, info: PeerInfo) -> None:
        delay = self.params.backoff_min_s
        attempts = 0
        while True:
            if self.is_connected(info.peer_id):
                # Woken by a disconnection, not polled (at 20 peers polling was ~7% of an idle
                # node's CPU); the timeout bounds what a connection lost unannounced costs.
                with trio.move_on_after(self.params.backoff_max_s):
                    await self._connections_changed.wait()
                continue
            self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, _BOOTSTRAP_ADDR_TTL)
            try:
                await self.dial(info)
            except PeerUnreachable as exc:
                attempts += 1
                # Log the first failure and then only when the backoff saturates, not every retry.
                if attempts == 1 or delay >= self.params.backoff_max_s:
                    self.on_event("bootstrap-unreachable", peer_id=info.peer_id.to_base58(), retry_in_s=delay, error=str(exc))
                await trio.sleep(delay)
                delay = min(delay * 2, self.params.backoff_max_s)
                continue
            delay, attempts = self.params.backoff_min_s, 0
            await self.dht.add_peer(info.peer_id, skip_server_mode_check=True)
            self.on_event("bootstrap-connected", peer_id=info.peer_id.to_base58())
            self.wake()

    async def _discover_loop(self) -> None:
        interval = self.params.discovery_fast_interval_s
        while True:
            await self.discover_once()
            known = set(self.dht.routing_table.get_peer_ids()) - self.bootstrap_ids()
            interval = next_discovery_interval(interval, knows_peers=bool(known), settled=self.settled(),
                                               fast=self.params.discovery_fast_interval_s,
                                               base=self.params.discovery_interval_s,
                                               ceiling=self.params.discovery_max_interval_s)
            with trio.move_on_after(interval):
                await self._wake.wait()
            if self._wake.is_set():  # a peer came or went: look closely again
                interval = self.params.discovery_fast_interval_s
            self._wake = trio.Event()

    def settled(self) -> bool:
        """Connected to every peer of the routing table (or to as many as we may)."""
        me = self.host.get_id()
        if len(self.host.get_connected_peers()) >= self.params.max_peers:
            return True
        return all(self.is_connected(p) for p in self.dht.routing_table.get_peer_ids() if p != me)

    async def _lookup_self(self, me: ID) -> None:
        """One iterative lookup of our own key; the peers it returns join the routing table.

        Not ``KadDHT.refresh_routing_table``: that also looks up a random key per
        non-empty bucket (each lookup a new stream to every peer, each answer
        carrying signed peer records to verify). Measured on 7 in-process hosts
        with a 2 s interval, that kept ~70% of a core busy while idle and pushed
        gossip latency to seconds; a consortium of tens of nodes is found by the
        self-lookup alone (the closest 20 peers to us are everyone).
        """
        closest = await self.dht.peer_routing.find_closest_peers_network(me.to_bytes())
        for peer_id in closest:
            addrs = self.known_addrs(peer_id)
            if peer_id != me and addrs:
                await self.dht.routing_table.add_peer(PeerInfo(peer_id, addrs))

    async def _probe_one_peer(self, me: ID) -> None:
        """One request for our own key to one connected peer, a different one each round.

        What a settled node does between connection changes instead of a full
        lookup: in a consortium of tens of nodes a self-lookup asks every peer,
        and each answer carries ~20 signed peer records to verify (measured at
        20 processes: ~100 ms of CPU per lookup, most of an idle node's CPU).
        A member that joined is known to the peers it connected to, so asking
        one peer per round finds it within a few rounds; and its connection to
        us (a change) brings a full lookup anyway.
        """
        peers = sorted(self.host.get_connected_peers(), key=lambda p: p.to_bytes())
        peer = peers[self.probes % len(peers)]
        self.probes += 1
        # Adds what it learns to the routing table and the peerstore, as a lookup's queries do.
        await self.dht.peer_routing._query_peer_for_closest(peer, me.to_bytes())

    async def discover_once(self) -> int:
        """One DHT lookup (or, settled and unchanged, one probe) and dial round; how many new connections it made."""
        if not self.host.get_connected_peers():
            return 0
        me = self.host.get_id()
        full = self._changed or not self.settled()
        with trio.move_on_after(self.params.lookup_timeout_s):
            try:
                if full:
                    self._changed = False  # a change during this lookup sets it again
                    self.lookups += 1
                    await self._lookup_self(me)
                else:
                    await self._probe_one_peer(me)
            except Exception as exc:  # a lookup over flaky peers fails in many ways; retried next round
                logger.debug("DHT lookup failed: %s", exc)
        candidates = [p for p in self.dht.routing_table.get_peer_ids() if p != me and not self.is_connected(p)]
        room = self.params.max_peers - len(self.host.get_connected_peers())
        made = 0

        async def dial_one(peer_id: ID) -> None:
            nonlocal made
            addrs = self.known_addrs(peer_id)
            if not addrs:
                return
            try:
                await self.dial(PeerInfo(peer_id, addrs))
            except PeerUnreachable as exc:
                logger.debug("discovered peer unreachable: %s", exc)
                return
            made += 1
            self.on_event("peer-discovered", peer_id=peer_id.to_base58(), via="dht")

        async with trio.open_nursery() as nursery:
            for peer_id in candidates[: max(room, 0)]:
                nursery.start_soon(dial_one, peer_id)
        return made
