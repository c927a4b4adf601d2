"""Everything that crosses the network, as typed and versioned msgpack messages.

- :mod:`.errors`    — :class:`WireError`, the only exception decoding raises.
- :mod:`.codec`     — msgpack with size, length and depth limits for untrusted bytes.
- :mod:`.messages`  — one frozen dataclass per protocol message, with field checks.
- :mod:`.envelope`  — the signed envelope (sender, type, version, time, nonce, body, signature).
- :mod:`.framing`   — length-prefixed frames for streams, as a sans-I/O decoder.
"""

from knexa_node.wire.envelope import Envelope, open_envelope, seal_envelope
from knexa_node.wire.errors import WireError
from knexa_node.wire.framing import FrameDecoder, encode_frame
from knexa_node.wire.messages import (
    MESSAGE_TYPES,
    Ack,
    Checkpoint,
    ExchangeRefused,
    ExchangeRequest,
    Feedback,
    Message,
    PackageHeader,
    PairingProposal,
    Profile,
    ProposalList,
    ProposalQuery,
    Receipt,
    RoundOpen,
)

__all__ = [
    "Ack",
    "Checkpoint",
    "Envelope",
    "ExchangeRefused",
    "ExchangeRequest",
    "Feedback",
    "FrameDecoder",
    "MESSAGE_TYPES",
    "Message",
    "PackageHeader",
    "PairingProposal",
    "Profile",
    "ProposalList",
    "ProposalQuery",
    "Receipt",
    "RoundOpen",
    "WireError",
    "encode_frame",
    "open_envelope",
    "seal_envelope",
]
