"""The network layer: a py-libp2p 0.8.1 host with knexa's protocols (trio only).

Map (each module has one job; read :mod:`.network` first):

- :mod:`.network`    :class:`Network`, the API other rooms use: ``serve``, ``set_handler``,
                     ``open_request``, ``request``, ``subscribe``, ``publish``, ``connected_peers``, ``status``
- :mod:`.protocols`  every stream protocol ID and gossip topic, with versions
- :mod:`.params`     :class:`NetParams` / :class:`GossipParams`, the tunables and why
- :mod:`.host`       building the host from the identity: Noise only, Yamux, one connection per peer
- :mod:`.inbound`    the fix for py-libp2p's inbound-connection leak
- :mod:`.yamux_credit` Yamux receive credit returned at half a window (go-yamux), not after every read
- :mod:`.orphans`    closes connections the swarm dropped from its table but left open; frees limit slots of dead ones
- :mod:`.streams`    :class:`FramedStream`: length-prefixed frames with deadlines and size caps
- :mod:`.gossip`     GossipSub with explicit parameters; signed envelopes validated, drops counted,
                     seen copies dropped before a task is spawned, subscriptions never lost to a new peer
- :mod:`.discovery`  bootstrap dialing with backoff, Kademlia DHT discovery, reconnection
- :mod:`.dht_streams` inbound DHT streams reset when idle, so abandoned ones cannot fill the DHT's 12 handler slots
- :mod:`.routing`    the DHT's per-subnet cap, kept for strangers and lifted for consortium members (NAT)
- :mod:`.stats`      counters (drops by reason, messages, bytes, dials)
- :mod:`.errors`     :class:`NetError` and its subclasses; ``describe_failure`` names a libp2p error's causes
- :mod:`.quiet_logs` py-libp2p's log of a cancelled connection upgrade without its crash-like traceback

This ``__init__`` imports nothing, so that reaching a protocol constant does not load libp2p.
"""
