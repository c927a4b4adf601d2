"""Ed25519 signing and libp2p peer IDs: the one place that touches raw key bytes.

A libp2p Ed25519 peer ID embeds the public key (an identity multihash of the
protobuf ``PublicKey``), so a signature can be checked from the sender's peer
ID alone, with no key directory. Sealing for a recipient lives in
:mod:`knexa_node.sealing`.
"""

from __future__ import annotations

import functools
import hashlib

import base58
import nacl.exceptions
import nacl.signing

# protobuf PublicKey/PrivateKey { Type: Ed25519 (1), Data: bytes }
_PB_ED25519_PUBLIC_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
_PB_ED25519_PRIVATE_PREFIX = bytes([0x08, 0x01, 0x12, 0x40])
# multihash "identity" (0x00) of the 36-byte protobuf public key
_MULTIHASH_IDENTITY_PREFIX = bytes([0x00, 0x24])

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


class CryptoError(Exception):
    """A key, peer ID or signature is malformed or does not verify."""


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID (``12D3KooW...``) of an Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise CryptoError(f"Ed25519 public key must be {PUBLIC_KEY_SIZE} bytes")
    multihash = _MULTIHASH_IDENTITY_PREFIX + _PB_ED25519_PUBLIC_PREFIX + public_key
    return base58.b58encode(multihash).decode("ascii")


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Extract the Ed25519 public key from a peer ID; raise :class:`CryptoError` otherwise."""
    if not isinstance(peer_id, str) or not 40 <= len(peer_id) <= 60:
        raise CryptoError(f"not an Ed25519 peer ID: {str(peer_id)[:80]!r}")
    return _decode_peer_id(peer_id)


# Cached: verifying a log or a stream of envelopes decodes the same few peer IDs again and
# again, and base58 decoding cost more than the Ed25519 check itself (audit verify profile).
# Only strings reach it (lru_cache would raise TypeError on an unhashable value).
@functools.lru_cache(maxsize=4096)
def _decode_peer_id(peer_id: str) -> bytes:
    try:
        raw = base58.b58decode(peer_id)
    except ValueError as exc:
        raise CryptoError(f"peer ID is not base58: {peer_id[:80]!r}") from exc
    prefix = _MULTIHASH_IDENTITY_PREFIX + _PB_ED25519_PUBLIC_PREFIX
    if len(raw) != len(prefix) + PUBLIC_KEY_SIZE or not raw.startswith(prefix):
        raise CryptoError(f"not an Ed25519 peer ID (only Ed25519 identities are accepted): {peer_id[:80]!r}")
    return raw[len(prefix):]


def is_valid_peer_id(peer_id: str) -> bool:
    try:
        public_key_from_peer_id(peer_id)
    except CryptoError:
        return False
    return True


def verify(peer_id: str, message: bytes, signature: bytes) -> None:
    """Check ``signature`` over ``message`` by the key of ``peer_id``; raise :class:`CryptoError`."""
    if len(signature) != SIGNATURE_SIZE:
        raise CryptoError("signature must be 64 bytes")
    try:
        nacl.signing.VerifyKey(public_key_from_peer_id(peer_id)).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError) as exc:
        raise CryptoError(f"bad signature from {peer_id}") from exc


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Signer:
    """An Ed25519 private key: signs, and exposes its public key and peer ID."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise CryptoError("Ed25519 seed must be 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        self.public_key: bytes = bytes(self._key.verify_key)
        self.peer_id: str = peer_id_from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> "Signer":
        return cls(bytes(nacl.signing.SigningKey.generate()))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature

    # The libp2p host needs the key in its own type; these keep raw bytes in this module.
    def libp2p_private_key_bytes(self) -> bytes:
        """The 64-byte ``seed || public`` form that libp2p's Ed25519 key accepts."""
        return bytes(self._key) + self.public_key

    def to_protobuf(self) -> bytes:
        """libp2p's standard serialized private key (as go-libp2p and kubo store it)."""
        return _PB_ED25519_PRIVATE_PREFIX + bytes(self._key) + self.public_key

    @classmethod
    def from_protobuf(cls, data: bytes) -> "Signer":
        if len(data) != len(_PB_ED25519_PRIVATE_PREFIX) + 64 or not data.startswith(_PB_ED25519_PRIVATE_PREFIX):
            raise CryptoError("not a libp2p Ed25519 private key (expected 68 bytes, type Ed25519)")
        body = data[len(_PB_ED25519_PRIVATE_PREFIX):]
        signer = cls(body[:32])
        if signer.public_key != body[32:]:
            raise CryptoError("private key file is inconsistent (public half does not match the seed)")
        return signer

    def to_curve25519_private(self) -> bytes:
        """X25519 private key derived from this Ed25519 key (for sealing to this identity)."""
        return bytes(self._key.to_curve25519_private_key())


def curve25519_public_from_peer_id(peer_id: str) -> bytes:
    """X25519 public key bound to a peer's Ed25519 identity (birational map)."""
    try:
        return bytes(nacl.signing.VerifyKey(public_key_from_peer_id(peer_id)).to_curve25519_public_key())
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError) as exc:
        raise CryptoError(f"peer ID key has no X25519 form: {peer_id}") from exc
