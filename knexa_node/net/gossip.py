"""GossipSub with explicit parameters, where every message is a signed knexa envelope.

Each subscribed topic gets a validator that opens the envelope
(:func:`knexa_node.wire.open_envelope`) and refuses oversized, malformed,
badly signed, stale, future-dated and replayed messages, counting each by
reason in :class:`~knexa_node.net.stats.NetStats`. Refused messages are not
forwarded to other peers. Delivery is best effort: a handler must tolerate
missed and repeated messages (round numbers, catch-up over a stream).

CPU per message (docs/netlab.md, "Gossip CPU per message"): py-libp2p checks
its seen-cache before validating, so a duplicate copy through the mesh costs
no envelope verification; the envelope the validator opened is handed to
delivery instead of being opened (verified, decoded) a second time; and our
publish RPCs leave out the signed peer record that py-libp2p attaches to
every RPC and every receiver verifies (it travels once per stream instead).
And ("A mesh that holds still" there): a seen copy stops in the read loop
before py-libp2p spawns a task for it, and the router keeps GossipSub v1.1's
mesh (fixed D bounds and heartbeat, D_lazy from GossipParams) without
py-libp2p's every-heartbeat score-driven grafts and swaps.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.pubsub import gossipsub as gossipsub_module
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from knexa_node.net.params import GossipParams
from knexa_node.net.protocols import GOSSIPSUB_PROTOCOLS
from knexa_node.net.stats import NetStats
from knexa_node.wire import Envelope, Message, WireError, open_envelope

logger = logging.getLogger(__name__)

# Validated envelopes waiting for delivery; more than a subscription queue holds.
_OPENED_KEPT = 1024

GossipHandler = Callable[[Envelope, Message, str], Awaitable[None]]
"""``async def handler(envelope, message, from_peer_id)``; ``from_peer_id`` is the gossip origin."""


class _SeenDigests:
    """Envelope digests seen recently (bounded, oldest first out)."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def check_and_add(self, digest: bytes, now: float) -> bool:
        """True if new."""
        while self._seen and (len(self._seen) >= self.size or next(iter(self._seen.values())) < now - self.ttl_s):
            self._seen.popitem(last=False)
        if digest in self._seen:
            return False
        self._seen[digest] = now
        return True


class _KnexaGossipSub(GossipSub):
    """GossipSub that counts the control messages it receives and, with ``flood_publish``, sends our
    *own* publications to every peer on the topic (go-libp2p's ``floodPublish``).

    py-libp2p 0.8.1 sends a publication only to the publisher's mesh. A mesh
    can be empty or half-pruned for a while (PRUNE back-off is 60 s): measured
    on 7 loopback hosts, a node with mesh 0 lost 17% of the CPM's messages.
    Flooding the first hop makes delivery independent of the publisher's mesh
    and costs one copy per peer, which a consortium of tens of nodes affords;
    forwarded messages still follow the mesh.
    """

    def __init__(self, *args: object, flood_publish: bool, lazy_degree: int, stats: NetStats, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.flood_publish, self.lazy_degree, self.stats = flood_publish, lazy_degree, stats

    async def handle_rpc(self, rpc: rpc_pb2.RPC, sender_peer_id: ID) -> None:
        count_control(self.stats.gossip_control, rpc, "in")
        await super().handle_rpc(rpc, sender_peer_id)

    def _get_adaptive_gossip_peers_count(self, topic: str, total_peers: int) -> int:
        return min(self.lazy_degree, max(total_peers, 0))  # D_lazy of GossipParams (py-libp2p: >= 6)

    def _periodic_security_cleanup(self) -> None:
        super()._periodic_security_cleanup()
        # Inputs of the adaptive "health" score, which is off: py-libp2p trims them only
        # there, so they would grow by an entry per message and connection for good.
        self.recent_message_deliveries.clear()
        self.recent_peer_connections.clear()
        self.recent_peer_disconnections.clear()

    # py-libp2p 0.8.1 runs two score-driven mesh changes at *every* heartbeat that GossipSub
    # v1.1 does not: it grafts up to 2 peers above a score threshold without regard to D_hi
    # (the spec's opportunistic grafting runs every 60 heartbeats, only when the mesh's median
    # score is low), which the next heartbeat prunes back to D; and it swaps the worst mesh peer
    # for a better-scored one. Members of a consortium are known and signed; what this bought
    # was churn: 20 processes, 2 msg/s, D = 4, 0.2 GRAFT and 0.17 PRUNE per message per node,
    # and meshes above D_hi: ~6.3 forwards of every message per node, where D = 4 means ~3.
    def _perform_opportunistic_grafting(self, topic: str, peers_to_graft: object) -> int:
        return 0

    async def _maintain_mesh_quality(self, topic: str) -> None:
        return None

    def _get_peers_to_send(self, topic_ids: Iterable[str], msg_forwarder: ID, origin: ID,
                           msg_id: bytes | None = None) -> Iterable[ID]:
        peers = set(super()._get_peers_to_send(topic_ids, msg_forwarder, origin, msg_id))
        pubsub = self.pubsub
        if self.flood_publish and pubsub is not None and origin == pubsub.my_id and msg_forwarder == origin:
            for topic in topic_ids:
                peers.update(p for p in pubsub.peer_topics.get(topic, ()) if p in self.peer_protocol and p in pubsub.peers)
            peers.discard(origin)
        return peers


class _KnexaPubsub(Pubsub):
    """Pubsub that counts the message copies peers send us, drops seen ones before spawning a task for
    them, and sends its signed peer record once per stream.

    py-libp2p 0.8.1 attaches the host's signed peer record to every RPC it
    writes, and every receiver verifies it (an Ed25519 signature and a
    peerstore update) before it looks at the message: one verification per
    copy of every message, duplicates included, and per IHAVE. The record
    already travels in the hello packet that opens each pubsub stream and in
    every subscription announcement, and a changed address means a new
    connection, so message and control RPCs go without it (measured:
    docs/netlab.md, "Gossip CPU per message" and "Peer records built and
    checked for nothing").
    """

    def __init__(self, *args: object, stats: NetStats, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.stats = stats

    async def _handle_new_peer(self, peer_id: ID) -> None:
        # py-libp2p builds the hello packet (our subscriptions) for a new peer, awaits its
        # write, and only then registers the peer: a topic subscribed in between is in
        # neither that hello nor subscribe()'s announcement to registered peers, and the peer
        # never learns it (no re-announcement follows). Announce such topics once registered.
        topics_before = set(self.topic_ids)
        await super()._handle_new_peer(peer_id)
        queue = self.peer_queues.get(peer_id)
        if queue is None or peer_id not in self.peers:
            return
        for topic in set(self.topic_ids) - topics_before:
            packet, subopt = self._build_announce_rpc(topic, subscribe=True)
            self._enqueue_or_retry_announce(peer_id, queue, packet, subopt)

    def _is_subscribed_to_msg(self, msg: rpc_pb2.Message) -> bool:
        # py-libp2p's read loop asks this of every message copy a peer sends us, and for a
        # yes spawns a push_msg task through its service manager, which walks the whole
        # task tree (a task per peer stream and more) to find the parent: ~0.4 ms per copy
        # at 20 peers, and most copies are duplicates that push_msg drops at once. Answer
        # no for a message already seen, before that task exists.
        self.stats.gossip_copies_in += 1
        return super()._is_subscribed_to_msg(msg) and not self._is_msg_seen(msg)

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        # Every RPC passes here, so the router's placeholder record (skip_router_peer_records)
        # never reaches the wire.
        self.stats.gossip_copies_out += len(rpc_msg.publish)
        count_control(self.stats.gossip_control, rpc_msg, "out")
        return await super().write_msg(stream, without_peer_record(rpc_msg))


def _no_peer_record(host: IHost) -> tuple[bytes, bool]:
    return b"", False


def skip_router_peer_records() -> None:
    """Stop py-libp2p's GossipSub router from building a signed peer record for each RPC it sends.

    The router (not the pubsub core) calls ``env_to_send_in_RPC`` for every
    forward, IHAVE/IWANT/GRAFT/PRUNE and IWANT answer; each call rebuilds the
    host's addresses as multiaddrs (~0.5 ms) to find that the cached record is
    still current. Those RPCs never carry subscriptions, so ``write_msg``
    strips the record anyway; this placeholder makes the build free. The pubsub
    core's own calls (hello, subscription announcements) keep the real record.
    Whole process, idempotent.
    """
    gossipsub_module.env_to_send_in_RPC = _no_peer_record  # type: ignore[attr-defined]


_CONTROL_KINDS = ("ihave", "iwant", "graft", "prune", "idontwant")


def count_control(counts: Counter[str], rpc: rpc_pb2.RPC, direction: str) -> None:
    """Count the control messages of ``rpc`` by kind (``"ihave in"``, ``"prune out"``, ...)."""
    if rpc.HasField("control"):
        for kind in _CONTROL_KINDS:
            n = len(getattr(rpc.control, kind))
            if n:
                counts[f"{kind} {direction}"] += n


def without_peer_record(rpc: rpc_pb2.RPC) -> rpc_pb2.RPC:
    """``rpc`` without its signed peer record unless it announces subscriptions (the stream's hello included)."""
    if rpc.subscriptions or not rpc.HasField("senderRecord"):
        return rpc
    stripped = rpc_pb2.RPC()
    stripped.CopyFrom(rpc)  # the caller's RPC may be queued for other peers too
    stripped.ClearField("senderRecord")
    return stripped


class Gossip:
    """The pubsub side of a :class:`~knexa_node.net.network.Network`."""

    def __init__(self, host: IHost, params: GossipParams, stats: NetStats, *, clock: Callable[[], float] = time.time) -> None:
        self.host, self.params, self.stats, self.clock = host, params, stats, clock
        self.my_id = host.get_id()
        skip_router_peer_records()
        self.router = _KnexaGossipSub(
            list(GOSSIPSUB_PROTOCOLS),  # type: ignore[arg-type]
            degree=params.degree,
            degree_low=params.degree_low,
            degree_high=params.degree_high,
            heartbeat_interval=params.heartbeat_s,  # type: ignore[arg-type]
            heartbeat_initial_delay=0.1,
            max_messages_per_topic_per_second=params.max_messages_per_topic_per_second,
            # Needs peer scoring to act and would graft for IP diversity that a loopback
            # consortium, or several organizations behind one NAT, cannot have.
            eclipse_protection_enabled=False,
            # Would widen D_lo/D_hi by a "health" score and move the heartbeat to 30-60 s
            # when it drops: fixed bounds and a fixed heartbeat are what GossipParams promise.
            adaptive_gossip_enabled=False,
            flood_publish=params.flood_publish,
            lazy_degree=params.lazy_degree,
            stats=stats,
        )
        self.pubsub = _KnexaPubsub(host, self.router, strict_signing=True,
                                      max_inbound_rpc_size=params.max_message_size + 4096, stats=stats)
        self._handlers: dict[str, list[GossipHandler]] = {}
        self._seen = _SeenDigests(params.seen_cache_size, params.max_age_s)
        # Envelopes the validator opened, by py-libp2p message id, until delivery takes them
        # (bounded: a subscription queue that overflows never takes some).
        self._opened: OrderedDict[bytes, tuple[Envelope, Message]] = OrderedDict()
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(background_trio_service(self.pubsub))
            await stack.enter_async_context(background_trio_service(self.router))
            await self.pubsub.wait_until_ready()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for topic in list(self._handlers):
                    await self._start_topic(topic)
                task_status.started()
                await trio.sleep_forever()

    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        """Deliver valid envelopes of ``topic`` to ``handler`` (also before the network runs)."""
        first = topic not in self._handlers
        self._handlers.setdefault(topic, []).append(handler)
        if first and self._nursery is not None:
            self._nursery.start_soon(self._start_topic, topic)

    async def publish(self, topic: str, envelope_bytes: bytes) -> None:
        """Publish a sealed envelope (``Envelope.to_bytes()``) on ``topic``."""
        if len(envelope_bytes) > self.params.max_message_size:
            raise WireError("too-large", f"gossip message of {len(envelope_bytes)} bytes > {self.params.max_message_size}")
        await self.pubsub.publish(topic, envelope_bytes)
        self.stats.messages_out[topic] += 1

    def topics(self) -> dict[str, dict[str, int]]:
        """Subscribed topics with their mesh size and the number of peers known on them."""
        out = {}
        for topic in sorted(self._handlers):
            peers = self.pubsub.peer_topics.get(topic, set())
            out[topic] = {"mesh": len(self.router.mesh.get(topic, ())), "peers": len(peers)}
        return out

    # --- internals ----------------------------------------------------------------------------

    async def _start_topic(self, topic: str) -> None:
        self.pubsub.set_topic_validator(topic, self._validate, False)
        subscription = await self.pubsub.subscribe(topic)
        if self._nursery is None:  # started only from serve()'s nursery, or once it exists
            raise RuntimeError("gossip topics start only while GossipService.serve runs")
        self._nursery.start_soon(self._deliver, topic, subscription)

    def _validate(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        if ID(msg.from_id) == self.my_id:
            return True  # our own publication, already checked by construction
        self.stats.gossip_validations += 1
        checked = self._check(msg.data)
        if isinstance(checked, str):
            self.stats.drop(checked)
            logger.debug("dropped gossip message from %s: %s", forwarder, checked)
            return False
        self._opened[self.pubsub.get_message_id(msg)] = checked
        while len(self._opened) > _OPENED_KEPT:
            self._opened.popitem(last=False)
        return True

    def _check(self, data: bytes) -> str | tuple[Envelope, Message]:
        """The opened envelope, or the reason to refuse it."""
        if len(data) > self.params.max_message_size:
            return "too-large"
        try:
            envelope, message = open_envelope(data, max_size=self.params.max_message_size)
        except WireError as exc:
            return exc.reason
        now = self.clock()
        if envelope.timestamp < now - self.params.max_age_s:
            return "stale"
        if envelope.timestamp > now + self.params.max_future_s:
            return "future"
        if not self._seen.check_and_add(envelope.digest, now):
            return "duplicate"
        return envelope, message

    async def _deliver(self, topic: str, subscription: object) -> None:
        while True:
            msg: rpc_pb2.Message = await subscription.get()  # type: ignore[attr-defined]
            origin = ID(msg.from_id)
            if origin == self.my_id:
                continue  # py-libp2p echoes our own publications to our subscription
            opened = self._opened.pop(self.pubsub.get_message_id(msg), None)
            if opened is None:  # evicted before delivery: open it again
                try:
                    opened = open_envelope(msg.data, max_size=self.params.max_message_size)
                except WireError as exc:  # the validator passed it; only a bug gets here
                    self.stats.drop(exc.reason)
                    continue
            envelope, message = opened
            self.stats.messages_in[topic] += 1
            for handler in list(self._handlers.get(topic, ())):
                try:
                    await handler(envelope, message, origin.to_base58())
                except Exception:  # a faulty handler must not stop delivery of the topic
                    self.stats.drop("handler-error")
                    logger.exception("gossip handler for %s failed", topic)
