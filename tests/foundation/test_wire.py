"""Wire format: round trips, signature binding, and hostile bytes raise only WireError."""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knexa_node.crypto import Signer
from knexa_node.profile import PROFILE_DIM
from knexa_node.wire import (
    MESSAGE_TYPES,
    Ack,
    Checkpoint,
    ExchangeRefused,
    ExchangeRequest,
    Feedback,
    FrameDecoder,
    PackageHeader,
    PairingProposal,
    Profile,
    ProposalList,
    ProposalQuery,
    Receipt,
    RoundOpen,
    WireError,
    encode_frame,
    open_envelope,
    seal_envelope,
)
from knexa_node.wire.codec import MAX_DEPTH, pack, unpack

SIGNER = Signer(bytes(range(32)))
OTHER = Signer(bytes(range(1, 33)))
ID16 = bytes(16)
H32 = bytes(range(32))
EXAMPLES_PER_TEST = int(os.environ.get("KNEXA_HYPOTHESIS_EXAMPLES", "300"))

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


def sample_messages() -> list:
    return [
        RoundOpen(round=3, deadline=1.7e9, policy="knexa"),
        Profile(round=3, vector=tuple(float(i) for i in range(PROFILE_DIM)), model_type="llama", tokenizer_id="abc", addrs=("/ip4/127.0.0.1/tcp/1",)),
        PairingProposal(ID16, 3, SIGNER.peer_id, OTHER.peer_id, "text", (0.5, 1.0), 0.7, 1.7e9),
        ExchangeRequest(proposal=b"envelope", ephemeral_key=H32),
        ExchangeRefused(ID16, "expired", "proposal expired"),
        PackageHeader(ID16, 3, SIGNER.peer_id, OTHER.peer_id, "logits", H32, 1234, 2, H32, 0.0, 0),
        Receipt(ID16, 3, SIGNER.peer_id, OTHER.peer_id, H32, 1234, 7, H32),
        Feedback(ID16, 3, 0.25, 2.0, 1.75, 1234, H32),
        Checkpoint(seq=10, head_hash=H32, round=3),
        Ack(ref=H32, ok=False, code="replay", reason="seen"),
        ProposalQuery(round=3),
        ProposalList(round=3, phase="paired", proposals=(b"env-1", b"env-2")),
    ]


def test_every_message_type_round_trips() -> None:
    messages = sample_messages()
    assert {m.TYPE for m in messages} == set(MESSAGE_TYPES)
    for message in messages:
        envelope = seal_envelope(SIGNER, message)
        opened, decoded = open_envelope(envelope.to_bytes())
        assert decoded == message
        assert opened.sender == SIGNER.peer_id
        assert opened.digest == envelope.digest


def test_expect_restricts_types() -> None:
    data = seal_envelope(SIGNER, sample_messages()[0]).to_bytes()
    with pytest.raises(WireError) as info:
        open_envelope(data, expect=(Feedback,))
    assert info.value.reason == "unexpected-type"


def test_sender_cannot_be_swapped() -> None:
    envelope = seal_envelope(SIGNER, sample_messages()[2])
    forged = envelope.__class__(**{**envelope.__dict__, "sender": OTHER.peer_id})
    with pytest.raises(WireError) as info:
        open_envelope(forged.to_bytes())
    assert info.value.reason == "bad-signature"


def test_semantic_checks() -> None:
    bad = PairingProposal(ID16, 1, SIGNER.peer_id, SIGNER.peer_id, "text", (), 0.0, 1.0)
    with pytest.raises(WireError):
        open_envelope(seal_envelope(SIGNER, bad).to_bytes())
    wrong_dim = Profile(1, (0.0,) * 5, "llama", "t", ())
    with pytest.raises(WireError):
        open_envelope(seal_envelope(SIGNER, wrong_dim).to_bytes())
    nan_reward = Feedback(ID16, 1, float("nan"), 1.0, 1.0, 1, H32)
    with pytest.raises(WireError):
        open_envelope(seal_envelope(SIGNER, nan_reward).to_bytes())


def test_size_and_depth_limits() -> None:
    with pytest.raises(WireError) as info:
        unpack(b"\x00" * 100, max_size=10)
    assert info.value.reason == "too-large"
    deep: object = 1
    for _ in range(MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(WireError) as info:
        unpack(pack(deep))
    assert info.value.reason == "too-deep"
    with pytest.raises(WireError):
        unpack(b"\x91" * 200_000)  # nesting bomb rejected by msgpack's own stack


@settings(max_examples=EXAMPLES_PER_TEST, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(12)), st.data())
def test_any_byte_flip_fails_verification(index: int, data: st.DataObject) -> None:
    raw = bytearray(seal_envelope(SIGNER, sample_messages()[index]).to_bytes())
    position = data.draw(st.integers(0, len(raw) - 1))
    flip = data.draw(st.integers(1, 255))
    raw[position] ^= flip
    with pytest.raises(WireError):
        open_envelope(bytes(raw))


@settings(max_examples=EXAMPLES_PER_TEST, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        open_envelope(data)
    except WireError:
        pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | finite | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=max(EXAMPLES_PER_TEST // 3, 10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.dictionaries(st.text(max_size=12), msgpack_values, max_size=12),
    st.booleans(),
)
def test_structured_garbage_raises_only_wire_error(type_: str, body: dict, correct_signature: bool) -> None:
    """Well-formed envelopes around hostile bodies: signed by a real key, still rejected cleanly."""
    packed_body = msgpack.packb(body, use_bin_type=True)
    envelope = seal_envelope(SIGNER, sample_messages()[0])
    forged = envelope.__class__(**{**envelope.__dict__, "type": type_, "body": packed_body, "version": MESSAGE_TYPES[type_].VERSION})
    if correct_signature:
        forged = forged.__class__(**{**forged.__dict__, "signature": SIGNER.sign(forged.signed_bytes())})
    try:
        open_envelope(forged.to_bytes())
    except WireError:
        pass


def test_frame_decoder_reassembles_and_caps() -> None:
    frames = [b"a" * 10, b"", b"b" * 1000]
    stream = b"".join(encode_frame(f, max_size=2000) for f in frames)
    decoder = FrameDecoder(max_size=2000)
    out = []
    for i in range(0, len(stream), 7):
        decoder.receive_data(stream[i : i + 7])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == frames
    decoder = FrameDecoder(max_size=100)
    decoder.receive_data(encode_frame(b"x" * 101, max_size=1000))
    with pytest.raises(WireError):
        decoder.next_frame()
