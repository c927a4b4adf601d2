"""Budgeted decoding and field bounds (issue 15, findings 5 and 9).

Hostile bytes are refused at the header that announces too much, before the
objects exist; duplicate keys, negative or huge integers and absurd losses
never decode; the budgeted reader agrees with msgpack on every honest value.
"""

from __future__ import annotations

import os
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knexa_node.crypto import Signer
from knexa_node.learn.package import (
    KnowledgePackage,
    LogitItem,
    PackageError,
    PackageLimits,
    decode_package,
    encode_package,
)
from knexa_node.wire import Checkpoint, Feedback, PackageHeader, ProposalQuery, WireError, open_envelope, seal_envelope
from knexa_node.wire.codec import MAX_INT, pack, unpack

SIGNER = Signer(bytes(range(32)))
OTHER = Signer(bytes(range(1, 33)))
H32 = bytes(range(32))
ID16 = bytes(16)
EXAMPLES = int(os.environ.get("KNEXA_HYPOTHESIS_EXAMPLES", "300"))
HEAD = {"v": 1, "kind": "text", "tokenizer": "t", "round": 0}


def _hostile_package(size: int) -> bytes:
    """A text package of one-byte empty maps (~72 bytes of Python objects per byte when built), in four
    arrays that each stay under msgpack's own array limit (1 << 20), as the issue's attack did."""
    prefix = b"\x85" + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in HEAD.items()) + msgpack.packb("items")
    per = (size - len(prefix) - 5) // 4 - 5
    inner = b"\xdd" + per.to_bytes(4, "big") + b"\x80" * per
    return prefix + b"\x94" + inner * 4


def _peak(fn) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        fn()
    except (PackageError, WireError):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_a_hostile_4_mib_package_is_refused_within_twice_its_size() -> None:
    data = _hostile_package(4 << 20)
    with pytest.raises(PackageError):
        decode_package(data, max_size=256 << 20)
    # Beyond the input itself, which the caller already holds.
    assert _peak(lambda: decode_package(data, max_size=256 << 20)) < 2 * len(data)


def test_a_hostile_message_is_refused_at_its_header() -> None:
    data = b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\x80" * (1 << 20)
    with pytest.raises(WireError) as info:
        unpack(data)
    assert info.value.reason == "too-many-objects"
    assert _peak(lambda: unpack(data)) < len(data)


def test_package_limits_sized_to_the_transfer_set() -> None:
    limits = PackageLimits.for_transfer(3, 16)
    texts = {f"t{i}": "x" for i in range(4)}
    data = encode_package(KnowledgePackage("text", "tok", 1, texts=texts))
    assert len(decode_package(data, max_size=1 << 20)) == 4
    with pytest.raises(PackageError, match="items"):
        decode_package(data, max_size=1 << 20, limits=limits)
    long_text = encode_package(KnowledgePackage("text", "tok", 1, texts={"t": "y" * (limits.max_text + 1)}))
    with pytest.raises(PackageError, match="limit"):
        decode_package(long_text, max_size=1 << 20, limits=limits)
    long_logits = KnowledgePackage("logits", "tok", 1, k=2, logits={"t": LogitItem(
        np.zeros(limits.max_tokens + 1, np.int32), np.zeros((limits.max_tokens + 1, 2), np.int32),
        np.zeros((limits.max_tokens + 1, 2), np.float16))})
    with pytest.raises(PackageError, match="limit"):
        decode_package(encode_package(long_logits), max_size=1 << 20, limits=limits)
    with pytest.raises(PackageError, match="too-large"):
        decode_package(data + b"\x00" * limits.max_bytes, max_size=1 << 30, limits=limits)


def test_honest_packages_of_both_kinds_round_trip_under_sized_limits() -> None:
    rng = np.random.default_rng(0)
    logits = {f"t{i}": LogitItem(rng.integers(0, 100, 9, dtype=np.int32), rng.integers(0, 100, (9, 4), dtype=np.int32),
                                 -rng.random((9, 4)).astype(np.float16)) for i in range(5)}
    package = KnowledgePackage("logits", "tok", 7, logits=logits, k=4)
    decoded = decode_package(encode_package(package), max_size=1 << 20, limits=PackageLimits.for_transfer(5, 8))
    assert decoded.round == 7 and decoded.k == 4 and set(decoded.logits) == set(logits)
    for key, item in logits.items():
        np.testing.assert_array_equal(decoded.logits[key].topk_ids, item.topk_ids)
        np.testing.assert_array_equal(decoded.logits[key].topk_logp, item.topk_logp)
    text = KnowledgePackage("text", "tok", 2, texts={"a": "é" * 100, "b": ""})
    assert decode_package(encode_package(text), max_size=1 << 20, limits=PackageLimits.for_transfer(2, 64)) == text


@pytest.mark.parametrize("round_", [-1, 2**64 - 1, MAX_INT + 1])
def test_package_round_out_of_range_is_refused(round_: int) -> None:
    data = msgpack.packb({**HEAD, "round": round_, "items": []})
    with pytest.raises(PackageError, match="round"):
        decode_package(data, max_size=1 << 20)


def test_package_duplicate_and_misplaced_fields_are_refused() -> None:
    good = msgpack.packb({**HEAD, "items": [{"id": "a", "text": "x"}]})
    assert len(decode_package(good, max_size=1 << 20)) == 1
    dup_item = good.replace(b"\x82\xa2id\xa1a\xa4text\xa1x", b"\x82\xa2id\xa1a\xa2id\xa1b")
    with pytest.raises(PackageError, match="repeated"):
        decode_package(dup_item, max_size=1 << 20)
    items_first = msgpack.packb({"items": [], **HEAD})
    with pytest.raises(PackageError, match="after 'kind'"):
        decode_package(items_first, max_size=1 << 20)
    with pytest.raises(PackageError, match="unknown package field"):
        decode_package(msgpack.packb({**HEAD, "extra": 1, "items": []}), max_size=1 << 20)


def test_duplicate_map_keys_are_refused() -> None:
    with pytest.raises(WireError) as info:
        unpack(b"\x82\xa1a\x01\xa1a\x02")
    assert info.value.reason == "duplicate-key"
    body = b"\x81\xa5round\x03"
    dup = b"\x82\xa5round\x03\xa5round\x05"
    assert unpack(body) == {"round": 3}
    with pytest.raises(WireError):
        unpack(dup)


def _sealed_with_body(message: object, **override: object) -> bytes:
    """A correctly signed envelope whose body carries fields the constructor would not check."""
    envelope = seal_envelope(SIGNER, message)  # type: ignore[arg-type]
    body = {**unpack(envelope.body), **override}
    forged = envelope.__class__(**{**envelope.__dict__, "body": pack(body), "signature": b""})
    return forged.__class__(**{**forged.__dict__, "signature": SIGNER.sign(forged.signed_bytes())}).to_bytes()


@pytest.mark.parametrize("message,field,value", [
    (ProposalQuery(round=1), "round", -1),
    (ProposalQuery(round=1), "round", 2**53),
    (Checkpoint(seq=1, head_hash=H32, round=1), "seq", -5),
    (PackageHeader(ID16, 1, SIGNER.peer_id, OTHER.peer_id, "text", H32, 100, 1, H32, 0.0, 0), "payload_size", -100),
    (PackageHeader(ID16, 1, SIGNER.peer_id, OTHER.peer_id, "text", H32, 100, 1, H32, 0.0, 0), "dp_epsilon", -1.0),
    (Feedback(ID16, 1, 0.1, 2.0, 1.9, 10, H32), "loss_before", 1e300),
    (Feedback(ID16, 1, 0.1, 2.0, 1.9, 10, H32), "loss_after", -1e300),
    (Feedback(ID16, 1, 0.1, 2.0, 1.9, 10, H32), "reward", 1e300),
    (Feedback(ID16, 1, 0.1, 2.0, 1.9, 10, H32), "package_bytes", -1),
])
def test_field_bounds_on_the_wire(message: object, field: str, value: object) -> None:
    open_envelope(_sealed_with_body(message))  # the honest message decodes
    with pytest.raises(WireError) as info:
        open_envelope(_sealed_with_body(message, **{field: value}))
    assert info.value.reason == "bad-field"


honest_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=40)
    | st.binary(max_size=300),
    lambda children: st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4),
                                                                       children, max_size=6),
    max_leaves=40,
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(honest_values)
def test_reader_agrees_with_msgpack(value: object) -> None:
    data = pack(value)
    expected = msgpack.unpackb(data, raw=False, strict_map_key=False)
    try:
        decoded = unpack(data)
    except WireError as exc:
        assert exc.reason == "too-deep"  # the only honest value the reader refuses
        return
    assert decoded == expected


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        unpack(data)
    except WireError:
        pass
    try:
        decode_package(data, max_size=1 << 20)
    except PackageError:
        pass
