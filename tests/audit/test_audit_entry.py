"""Entry encoding: one canonical signed form, strict decoding, field bounds."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knexa_node.audit.entry import (
    KINDS,
    OUTCOMES,
    PACKAGE_KINDS,
    EntryFormatError,
    Event,
    check_event,
    decode_entry,
    decode_header,
    sign_entry,
    sign_header,
    split_record,
)
from knexa_node.crypto import Signer, verify

SIGNER = Signer(bytes(range(32)))
PEER = Signer(bytes(range(1, 33))).peer_id

metric_values = st.one_of(st.booleans(), st.integers(-(2**62), 2**62), st.floats(allow_nan=False, allow_infinity=False),
                          st.text(max_size=40))
events = st.builds(
    Event,
    kind=st.sampled_from([k for k in KINDS if k not in PACKAGE_KINDS]),
    round=st.integers(0, 2**40),
    outcome=st.sampled_from(OUTCOMES),
    proposal_id=st.one_of(st.just(b""), st.binary(min_size=16, max_size=16)),
    peer=st.sampled_from(["", PEER]),
    protocol=st.sampled_from(["", "text", "logits"]),
    package_hash=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
    package_size=st.integers(0, 2**40),
    metrics=st.dictionaries(st.text(min_size=1, max_size=20), metric_values, max_size=6),
)


@settings(max_examples=150, deadline=None)
@given(ev=events, seq=st.integers(0, 2**40), time=st.floats(0, 4e9), prev=st.binary(min_size=32, max_size=32))
def test_signed_entry_round_trips_and_verifies(ev: Event, seq: int, time: float, prev: bytes) -> None:
    entry = sign_entry(SIGNER, seq, time, prev, ev)
    decoded = decode_entry(entry.record)
    assert decoded == entry
    assert dict(decoded.event.metrics) == dict(ev.metrics)
    body, signature = split_record(entry.record)
    verify(SIGNER.peer_id, body, signature)


def test_metrics_order_does_not_change_the_encoding() -> None:
    a = sign_entry(SIGNER, 0, 1.0, bytes(32), Event(kind="distillation", round=1, metrics={"b": 1, "a": 2.5}))
    b = sign_entry(SIGNER, 0, 1.0, bytes(32), Event(kind="distillation", round=1, metrics={"a": 2.5, "b": 1}))
    assert a.record == b.record


def _resign(body_fields: list) -> bytes:
    body = msgpack.packb(body_fields, use_bin_type=True)
    return body + SIGNER.sign(body)


def test_non_canonical_encodings_are_rejected_even_when_signed() -> None:
    entry = sign_entry(SIGNER, 3, 5.0, bytes(32), Event(kind="distillation", round=1, metrics={"a": 1, "b": 2}))
    fields = msgpack.unpackb(split_record(entry.record)[0], raw=False)
    unsorted = fields[:13] + [{"b": 2, "a": 1}]
    with pytest.raises(EntryFormatError) as info:
        decode_entry(_resign(unsorted))
    assert info.value.reason == "not-canonical"
    int_time = fields[:2] + [5] + fields[3:]
    with pytest.raises(EntryFormatError) as info:
        decode_entry(_resign(int_time))
    assert info.value.reason == "bad-field"


@pytest.mark.parametrize("change", [
    {"kind": "teleported"}, {"round": -1}, {"round": True}, {"outcome": "fine"}, {"proposal_id": b"x" * 15},
    {"peer": "not-a-peer"}, {"protocol": "morse"}, {"package_hash": b"x" * 31}, {"package_size": -1},
    {"receipt": b"x" * 9000}, {"metrics": {"": 1}}, {"metrics": {"x": float("nan")}}, {"metrics": {"x": [1]}},
    {"metrics": {f"k{i}": i for i in range(33)}}, {"metrics": {"x": "y" * 300}},
    {"kind": "package-sent"},  # a package entry without its package fields
    {"receipt": b"abc"},  # a receipt on a kind that carries none
])
def test_out_of_bounds_fields_are_refused(change: dict) -> None:
    fields = {"kind": "distillation", "round": 1, **change}
    with pytest.raises(EntryFormatError):
        check_event(Event(**fields))


def test_garbage_records_raise_only_entry_format_errors() -> None:
    for record in (b"", b"x" * 64, b"\xc1" * 100, msgpack.packb([1, 2, 3]) + bytes(64),
                   msgpack.packb(["knexa-audit-entry-v1"] + [None] * 13) + bytes(64)):
        with pytest.raises(EntryFormatError):
            decode_entry(record)


def test_header_round_trips_and_names_its_owner() -> None:
    header = sign_header(SIGNER, 123.0)
    assert decode_header(header.record) == header
    assert header.owner == SIGNER.peer_id
    with pytest.raises(EntryFormatError):
        decode_header(sign_entry(SIGNER, 0, 1.0, bytes(32), Event(kind="distillation", round=0)).record)
