"""The signed envelope around every message.

Wire form (msgpack array)::

    ["knexa", version, type, sender, timestamp, nonce, body, signature]

The signature is Ed25519 by ``sender``'s key over the msgpack of
``["knexa-envelope-v1", version, type, sender, timestamp, nonce, body]``;
the domain tag keeps these signatures from being valid anywhere else.
``digest`` (sha256 of those signed bytes) names an envelope in acks, receipts
and replay caches.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from knexa_node.crypto import CryptoError, Signer, is_valid_peer_id, sha256, verify
from knexa_node.wire.codec import DEFAULT_MAX_MESSAGE, pack, unpack
from knexa_node.wire.errors import WireError
from knexa_node.wire.messages import MESSAGE_TYPES, Message, decode_body

MAGIC = "knexa"
SIGNING_DOMAIN = "knexa-envelope-v1"
NONCE_SIZE = 16


@dataclass(frozen=True)
class Envelope:
    version: int
    type: str
    sender: str
    timestamp: float
    nonce: bytes
    body: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        return pack([SIGNING_DOMAIN, self.version, self.type, self.sender, self.timestamp, self.nonce, self.body])

    @property
    def digest(self) -> bytes:
        return sha256(self.signed_bytes())

    def to_bytes(self) -> bytes:
        return pack([MAGIC, self.version, self.type, self.sender, self.timestamp, self.nonce, self.body, self.signature])


def seal_envelope(signer: Signer, message: Message, *, now: float | None = None, nonce: bytes | None = None) -> Envelope:
    """Wrap and sign ``message`` as ``signer``, at the oldest version that carries it (:meth:`Message.wire_version`)."""
    version = message.wire_version()
    unsigned = Envelope(
        version=version,
        type=message.TYPE,
        sender=signer.peer_id,
        timestamp=time.time() if now is None else float(now),
        nonce=os.urandom(NONCE_SIZE) if nonce is None else nonce,
        body=message.to_body(version),
        signature=b"",
    )
    return Envelope(**{**unsigned.__dict__, "signature": signer.sign(unsigned.signed_bytes())})


def open_envelope(data: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE, expect: tuple[type[Message], ...] = ()) -> tuple[Envelope, Message]:
    """Decode and verify an envelope from untrusted bytes.

    Raises only :class:`WireError`. ``expect`` restricts the accepted message types.
    """
    raw = unpack(data, max_size=max_size)
    if not isinstance(raw, list) or len(raw) != 8 or raw[0] != MAGIC:
        raise WireError("bad-envelope", "not a knexa envelope")
    _, version, type_, sender, timestamp, nonce, body, signature = raw
    if not isinstance(type_, str) or type_ not in MESSAGE_TYPES:
        raise WireError("unknown-type", repr(type_)[:64])
    cls = MESSAGE_TYPES[type_]
    if expect and cls not in expect:
        raise WireError("unexpected-type", type_)
    if isinstance(version, bool) or not isinstance(version, int) or (version != cls.VERSION and version not in cls.OLDER):
        raise WireError("bad-version", f"{type_} version {version!r}, supported {cls.VERSION}")
    if not isinstance(sender, str) or not is_valid_peer_id(sender):
        raise WireError("bad-sender", "sender is not an Ed25519 peer ID")
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or not 0 <= timestamp < 1e11:
        raise WireError("bad-timestamp", repr(timestamp)[:64])
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise WireError("bad-nonce", f"nonce must be {NONCE_SIZE} bytes")
    if not isinstance(body, bytes) or not isinstance(signature, bytes):
        raise WireError("bad-envelope", "body and signature must be bytes")
    envelope = Envelope(version, type_, sender, float(timestamp), nonce, body, signature)
    try:
        verify(sender, envelope.signed_bytes(), signature)
    except CryptoError:
        raise WireError("bad-signature", f"{type_} from {sender}") from None
    message = decode_body(cls, unpack(body, max_size=max_size), version)
    return envelope, message
