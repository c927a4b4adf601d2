"""knexa node: everything an organization's node runs, and what a node and the CPM share.

Rooms, each with one job (layers point down; nothing here imports ``knexa_cpm``):

- ``profile``   the 32-dim abstract node profile (shared with the CPM)
- ``crypto``    Ed25519 signing and peer IDs (the only module touching raw keys)
- ``identity``  the node's home directory and persistent key
- ``config``    ``config.toml`` schema, validation and template
- ``wire``      typed, versioned, signed msgpack messages and stream framing
- ``net``       the py-libp2p host: listeners, bootstrap, DHT, GossipSub, streams
- ``exchange``  the knowledge-exchange protocol as pure state machines
- ``privacy``   guardrail filter and differential-privacy noise with its accountant
- ``audit``     the signed hash-chained exchange log and its verifier
- ``learn``     models, LoRA, local training, distillation, evaluation, data
- ``daemon``    the trio main loop tying the rooms together, control endpoint
- ``models``    model names and paths (``embedded:``, ``pretrained:``, a directory), without torch
- ``fsutil``    crash-safe file writes (temporary file, fsync, rename, fsync the directory)
- ``testing``   helpers for tests: real libp2p hosts on 127.0.0.1, already connected
- ``httpd``     a tiny GET-only HTTP responder for the local endpoints (metrics, dashboard)
- ``dashboard`` the daemon's opt-in read-only web page and its JSON
- ``doctor``    ``knexa-node doctor``: checks of a home, its peers and its CPM

Keep this file light: importing ``knexa_node`` must not import libp2p or torch.
"""

__version__ = "0.1.0"
