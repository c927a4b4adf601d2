"""Mutation tests on a real log (real keys, real CPM proposals, real signed receipts).

Every single-field change of every record, every deleted entry, every
reordered adjacent pair, every duplicated entry and every truncation must
make ``verify`` fail. A mutation that leaves a valid *prefix* (cutting whole
entries off the end) can only be caught by a checkpoint that others saw, so
the log is verified against the owner's checkpoint of its final head, as an
auditor would.
"""

from __future__ import annotations

import random
from typing import Iterator

import msgpack
import pytest
from audit_fixtures import build_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knexa_node.audit import Event, verify_bytes, verify_file
from knexa_node.audit.checkpoint import parse_checkpoint
from knexa_node.audit.entry import KINDS, OUTCOMES, decode_entry, sign_entry, split_record
from knexa_node.audit.framing import encode_frame, scan_frames
from knexa_node.audit.verify import LOG_MAGIC
from knexa_node.crypto import Signer
from knexa_node.wire import Checkpoint, seal_envelope


@pytest.fixture(scope="module")
def real_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list]:
    a, _, path_a, _ = build_pair(tmp_path_factory.mktemp("mut"), rounds=2)
    view = verify_file(path_a)
    assert view.report.ok and view.report.entries == 9  # 4 as teacher, 4 as student, 1 refusal
    head = view.entries[-1]
    checkpoint = parse_checkpoint(seal_envelope(a, Checkpoint(seq=head.seq, head_hash=head.hash, round=0)).to_bytes())
    return path_a.read_bytes(), [checkpoint]


def _records(data: bytes) -> list[bytes]:
    return [f.payload for f in scan_frames(data, LOG_MAGIC).frames]


def _assemble(records: list[bytes]) -> bytes:
    return LOG_MAGIC + b"".join(encode_frame(r) for r in records)


def _changed(value: object, rng: random.Random) -> Iterator[object]:
    """Different values of the same shape (and, for variety, of another shape)."""
    if isinstance(value, bool):
        yield not value
    elif isinstance(value, int):
        yield value + 1
        yield value - 1
    elif isinstance(value, float):
        yield value + 1.0
        yield value * (1 + 2**-40)  # the smallest kind of change
    elif isinstance(value, bytes):
        if value:
            flipped = bytearray(value)
            flipped[rng.randrange(len(value))] ^= 1 << rng.randrange(8)
            yield bytes(flipped)
            yield value[:-1]
        else:
            yield bytes(16)
            yield bytes(32)
    elif isinstance(value, str):
        if value in KINDS:
            yield next(k for k in KINDS if k != value)
        elif value in OUTCOMES:
            yield next(o for o in OUTCOMES if o != value)
        elif value in ("text", "logits"):
            yield "logits" if value == "text" else "text"
        elif value.startswith("12D3KooW"):
            yield Signer(bytes(32)).peer_id
        yield value + "x"
    elif isinstance(value, dict):
        for key in value:
            for other in _changed(value[key], rng):
                yield {**value, key: other}
        yield {**value, "zz": 1}
        if value:
            yield dict(list(value.items())[1:])
    elif value is None:
        yield 0


def _field_mutations(records: list[bytes], rng: random.Random) -> Iterator[tuple[str, int, bytes]]:
    """(label, index of the changed record, mutated file) for every field of every record."""
    for index, record in enumerate(records):
        body, signature = split_record(record)
        fields = msgpack.unpackb(body, raw=False)
        for position, value in enumerate(fields):
            for new in _changed(value, rng):
                mutated = list(fields)
                mutated[position] = new
                new_record = msgpack.packb(mutated, use_bin_type=True) + signature
                yield f"record {index} field {position}", index, _assemble(records[:index] + [new_record] + records[index + 1:])
        flipped = bytearray(signature)
        flipped[rng.randrange(64)] ^= 1 << rng.randrange(8)
        yield f"record {index} signature", index, _assemble(records[:index] + [body + bytes(flipped)] + records[index + 1:])


def _structural_mutations(records: list[bytes]) -> Iterator[tuple[str, int, bytes]]:
    n = len(records)
    for i in range(1, n):
        yield f"delete entry {i - 1}", i, _assemble(records[:i] + records[i + 1:])
    for i in range(1, n - 1):
        yield f"swap entries {i - 1},{i}", i, _assemble(records[:i] + [records[i + 1], records[i]] + records[i + 2:])
    for i in range(1, n):
        yield f"duplicate entry {i - 1}", i + 1, _assemble(records[: i + 1] + [records[i]] + records[i + 1:])
    yield "delete header", 0, _assemble(records[1:])


def _truncations(data: bytes) -> Iterator[tuple[str, int, bytes]]:
    for cut in range(0, len(data)):
        yield f"truncate at byte {cut}", -1, data[:cut]


def _check_all(mutations: Iterator[tuple[str, int, bytes]], data: bytes, checkpoints: list,
               check_index: bool) -> int:
    tried = 0
    for label, record_index, mutated in mutations:
        assert mutated != data, label
        report = verify_bytes(mutated, checkpoints=checkpoints).report
        assert not report.ok, f"undetected: {label}"
        if check_index:  # the report names the mutated record (header = record 0, entry k = record k+1)
            expected_seq = None if record_index == 0 else record_index - 1
            assert report.problem.seq == expected_seq or (expected_seq is None and report.problem.seq == 0), \
                f"{label}: reported {report.problem}"
        tried += 1
    return tried


def test_every_single_field_change_is_detected_at_its_entry(real_log: tuple[bytes, list]) -> None:
    data, checkpoints = real_log
    tried = _check_all(_field_mutations(_records(data), random.Random(7)), data, [], check_index=True)
    print(f"\nsingle-field mutations tried: {tried}, all detected")
    assert tried > 10 * 25


def test_every_deletion_reordering_and_duplication_is_detected(real_log: tuple[bytes, list]) -> None:
    data, checkpoints = real_log
    # The last entry deleted is a valid prefix: only the checkpoint catches it.
    tried = _check_all(_structural_mutations(_records(data)), data, checkpoints, check_index=False)
    print(f"\nstructural mutations tried: {tried}, all detected")
    n = len(_records(data))
    assert tried == (n - 1) + (n - 2) + (n - 1) + 1


@pytest.mark.slow
def test_every_truncation_is_detected(real_log: tuple[bytes, list]) -> None:
    data, checkpoints = real_log
    tried = _check_all(_truncations(data), data, checkpoints, check_index=False)
    print(f"\ntruncations tried: {tried}, all detected")
    assert tried == len(data)


def test_a_clean_tail_cut_passes_without_checkpoints_and_fails_with_one(real_log: tuple[bytes, list]) -> None:
    """What the checkpoints are for: a whole-entry prefix verifies on its own."""
    data, checkpoints = real_log
    records = _records(data)
    prefix = _assemble(records[:-2])
    assert verify_bytes(prefix).report.ok
    report = verify_bytes(prefix, checkpoints=checkpoints).report
    assert report.problem.reason == "checkpoint-beyond-end" and report.problem.seq == len(records) - 3


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10**9), mask=st.integers(1, 255))
def test_any_byte_flip_is_detected(real_log: tuple[bytes, list], position: int, mask: int) -> None:
    data, checkpoints = real_log
    mutated = bytearray(data)
    mutated[position % len(data)] ^= mask
    assert not verify_bytes(bytes(mutated), checkpoints=checkpoints).report.ok


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=1, max_size=600))
def test_appended_junk_is_detected(real_log: tuple[bytes, list], junk: bytes) -> None:
    data, _ = real_log
    assert not verify_bytes(data + junk).report.ok


def test_an_entry_chained_correctly_but_signed_by_another_key_is_detected(real_log: tuple[bytes, list]) -> None:
    data, _ = real_log
    records = _records(data)
    head = decode_entry(records[-1])
    forged = sign_entry(Signer.generate(), head.seq + 1, head.time + 1, head.hash, Event(kind="distillation", round=0))
    report = verify_bytes(_assemble(records + [forged.record])).report
    assert (report.problem.reason, report.problem.seq) == ("bad-signature", head.seq + 1)
