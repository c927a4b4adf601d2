"""Sealing a knowledge package for one student: per-exchange keys and an authenticated chunk stream.

Key agreement (both sides compute the same key; nothing depends on "my" or
"their" direction, which is what broke the authors' HKDF labels)::

    dh_ee = X25519(teacher ephemeral, student ephemeral)      forward secrecy
    dh_es = X25519(teacher ephemeral, student identity key)   only the named student can open
    key   = BLAKE2b-256(key = dh_ee || dh_es, person = "knexa-pkg-key-v1",
                        data = msgpack([proposal_id, round, teacher, student, protocol,
                                        teacher ephemeral public, student ephemeral public]))

The student's identity X25519 key is the birational image of its libp2p
Ed25519 key (:func:`knexa_node.crypto.curve25519_public_from_peer_id`); its
ephemeral public key travels in the student-signed ``ExchangeRequest`` and the
teacher's in the teacher-signed ``PackageHeader``. The CPM holds none of
these secrets, so it can never open a package. Once both ephemeral secrets
are dropped, a later theft of either identity key does not open recorded
traffic (Python cannot zero memory; dropping the reference is the best effort).

The payload travels as libsodium's secretstream (XChaCha20-Poly1305): a
24-byte stream header, then chunks whose order is authenticated, the last one
tagged FINAL, so reordering, dropping, duplicating or truncating is detected.
Each chunk carries the digest of the signed header envelope as associated
data, so a chunk stream cannot be moved under another header.

This module and :mod:`knexa_node.crypto` are the only places that touch raw key bytes.
"""

from __future__ import annotations

import hashlib

import nacl.bindings as sodium
import nacl.exceptions
import nacl.public

from knexa_node.crypto import CryptoError, Signer, curve25519_public_from_peer_id
from knexa_node.wire.codec import pack

KEY_SIZE = 32
STREAM_HEADER_SIZE = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
CHUNK_OVERHEAD = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
CHUNK_SIZE = 1 << 20  # plaintext bytes per chunk: bounds memory per step and frame size
_TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
_KDF_PERSON = b"knexa-pkg-key-v1"


class SealingError(Exception):
    """A key is unusable, or a sealed chunk does not authenticate."""


def chunk_count(payload_size: int) -> int:
    """Chunks used for a payload (an empty payload still sends one FINAL chunk)."""
    return max(1, -(-payload_size // CHUNK_SIZE))


def sealed_size(payload_size: int) -> int:
    """Bytes on the wire for a payload: stream header plus every chunk with its tag."""
    return STREAM_HEADER_SIZE + payload_size + CHUNK_OVERHEAD * chunk_count(payload_size)


class EphemeralKey:
    """A one-time X25519 key pair for one exchange; only :attr:`public` leaves this module."""

    def __init__(self) -> None:
        self._private = nacl.public.PrivateKey.generate()
        self.public: bytes = bytes(self._private.public_key)

    def _dh(self, public: bytes) -> bytes:
        return _scalarmult(bytes(self._private), public)


def check_public_key(public: bytes) -> None:
    """Raise :class:`SealingError` for an X25519 key no exchange can use (wrong size, low order).

    A throwaway Diffie-Hellman does the check, so a teacher refuses a bad
    student key before it spends privacy budget and model work on the package.
    """
    _scalarmult(bytes(nacl.public.PrivateKey.generate()), public)


def _scalarmult(private: bytes, public: bytes) -> bytes:
    if len(public) != KEY_SIZE:
        raise SealingError("X25519 public key must be 32 bytes")
    try:
        shared = sodium.crypto_scalarmult(private, public)
    except nacl.exceptions.RuntimeError as exc:  # libsodium refuses low-order points
        raise SealingError("X25519 public key is a low-order point") from exc
    if shared == bytes(KEY_SIZE):
        raise SealingError("X25519 shared secret is zero (low-order public key)")
    return shared


def _derive(dh_ee: bytes, dh_es: bytes, binding: list) -> bytes:
    return hashlib.blake2b(pack(binding), digest_size=KEY_SIZE, key=dh_ee + dh_es, person=_KDF_PERSON).digest()


def _binding(proposal_id: bytes, round_: int, teacher: str, student: str, protocol: str, teacher_eph: bytes, student_eph: bytes) -> list:
    return [proposal_id, round_, teacher, student, protocol, teacher_eph, student_eph]


class PackageKey:
    """The symmetric key of one package (opaque: it only makes sealers and openers)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def sealer(self, associated_data: bytes) -> "ChunkSealer":
        return ChunkSealer(self._key, associated_data)

    def opener(self, stream_header: bytes, associated_data: bytes) -> "ChunkOpener":
        return ChunkOpener(self._key, stream_header, associated_data)

    def fingerprint(self) -> bytes:
        """A one-way tag of the key (tests compare the two sides without seeing the key)."""
        return hashlib.blake2b(self._key, digest_size=16, person=b"knexa-pkg-fp-v1").digest()


def teacher_package_key(
    ephemeral: EphemeralKey, *, student_ephemeral: bytes, proposal_id: bytes, round: int,
    teacher: str, student: str, protocol: str,
) -> PackageKey:
    """The teacher's side: its ephemeral secret with the student's ephemeral and identity keys."""
    try:
        student_identity = curve25519_public_from_peer_id(student)
    except CryptoError as exc:
        raise SealingError(str(exc)) from exc
    dh_ee = ephemeral._dh(student_ephemeral)
    dh_es = ephemeral._dh(student_identity)
    return PackageKey(_derive(dh_ee, dh_es, _binding(proposal_id, round, teacher, student, protocol, ephemeral.public, student_ephemeral)))


def student_package_key(
    ephemeral: EphemeralKey, identity: Signer, *, teacher_ephemeral: bytes, proposal_id: bytes, round: int,
    teacher: str, student: str, protocol: str,
) -> PackageKey:
    """The student's side: its ephemeral and identity secrets with the teacher's ephemeral key."""
    dh_ee = ephemeral._dh(teacher_ephemeral)
    dh_es = _scalarmult(identity.to_curve25519_private(), teacher_ephemeral)
    return PackageKey(_derive(dh_ee, dh_es, _binding(proposal_id, round, teacher, student, protocol, teacher_ephemeral, ephemeral.public)))


class ChunkSealer:
    """Encrypts a payload chunk by chunk; :attr:`stream_header` must be sent first."""

    def __init__(self, key: bytes, associated_data: bytes) -> None:
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        self.stream_header: bytes = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        self._ad = associated_data
        self._finished = False

    def seal(self, chunk: bytes, *, final: bool) -> bytes:
        if self._finished:
            raise SealingError("stream already finished")
        self._finished = final
        tag = _TAG_FINAL if final else _TAG_MESSAGE
        return sodium.crypto_secretstream_xchacha20poly1305_push(self._state, chunk, self._ad, tag)


class ChunkOpener:
    """Decrypts chunks in order; raises :class:`SealingError` on any forgery, reorder or data after the end."""

    def __init__(self, key: bytes, stream_header: bytes, associated_data: bytes) -> None:
        if len(stream_header) != STREAM_HEADER_SIZE:
            raise SealingError(f"stream header must be {STREAM_HEADER_SIZE} bytes")
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(self._state, stream_header, key)
        self._ad = associated_data
        self.finished = False

    def open(self, sealed: bytes) -> tuple[bytes, bool]:
        """The plaintext of the next chunk and whether it was the last one."""
        if self.finished:
            raise SealingError("data after the final chunk")
        if len(sealed) < CHUNK_OVERHEAD:
            raise SealingError("sealed chunk shorter than its tag")
        try:
            plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(self._state, sealed, self._ad)
        except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError, nacl.exceptions.ValueError) as exc:
            raise SealingError("chunk does not authenticate (tampered, reordered or wrong key)") from exc
        if tag not in (_TAG_MESSAGE, _TAG_FINAL):
            raise SealingError(f"unexpected chunk tag {tag}")
        self.finished = tag == _TAG_FINAL
        return plain, self.finished
