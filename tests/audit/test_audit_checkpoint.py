"""Checkpoints: when the daemon makes them, the store, and catching a history rewritten by its own owner."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_fixtures import StepClock

from knexa_node.audit import (
    AuditError,
    AuditLog,
    CheckpointStore,
    Checkpointer,
    Event,
    TornTailError,
    make_checkpoint,
    parse_checkpoint,
    verify_file,
)
from knexa_node.crypto import Signer
from knexa_node.wire import Checkpoint, RoundOpen, WireError, seal_envelope


def _event(i: int) -> Event:
    return Event(kind="distillation", round=i // 4, metrics={"i": i})


def test_checkpointer_every_n_entries_and_at_round_end(tmp_path: Path) -> None:
    signer = Signer.generate()
    with AuditLog.open(tmp_path / "x.log", signer) as log:
        cp = Checkpointer(log, signer, every=3)
        assert cp.maybe(round_closed=True) is None  # nothing to checkpoint yet
        made = []
        for i in range(7):
            log.append(_event(i))
            envelope = cp.maybe()
            if envelope is not None:
                made.append(parse_checkpoint(envelope.to_bytes())[1].seq)
        assert made == [2, 5]
        closing = cp.maybe(round_closed=True)
        assert closing is not None and parse_checkpoint(closing.to_bytes())[1].seq == 6
        assert cp.maybe(round_closed=True) is None  # no new entry since
        _, checkpoint = parse_checkpoint(closing.to_bytes())
        assert (checkpoint.head_hash, checkpoint.round) == (log.head_hash, log.head_round)
        with pytest.raises(AuditError):
            make_checkpoint(log, Signer.generate())


def test_store_verifies_deduplicates_persists_and_finds_equivocation(tmp_path: Path) -> None:
    a, b = Signer.generate(), Signer.generate()
    path = tmp_path / "checkpoints.log"
    first = seal_envelope(a, Checkpoint(seq=4, head_hash=bytes(32), round=1)).to_bytes()
    other_head = seal_envelope(a, Checkpoint(seq=4, head_hash=b"\x01" * 32, round=1)).to_bytes()
    with CheckpointStore.open(path) as store:
        store.add(first)
        store.add(first)
        store.add(seal_envelope(b, Checkpoint(seq=1, head_hash=bytes(32), round=0)).to_bytes())
        for bad in (b"junk", first[:-1], seal_envelope(a, RoundOpen(round=1, deadline=1.0, policy="x")).to_bytes()):
            with pytest.raises(WireError):
                store.add(bad)
        assert len(store) == 2 and store.conflicts(a.peer_id) == []
        store.add(other_head)
    loaded = CheckpointStore.load(path)
    assert len(loaded) == 3 and len(loaded.for_peer(a.peer_id)) == 2 and len(loaded.for_peer(b.peer_id)) == 1
    assert len(loaded.conflicts(a.peer_id)) == 1
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(AuditError):
        CheckpointStore.load(path)
    with pytest.raises(TornTailError):
        CheckpointStore.open(path)
    with CheckpointStore.open(path, repair=True) as store:
        assert len(store) == 2


def test_history_rewritten_by_its_owner_contradicts_checkpoints_others_kept(tmp_path: Path) -> None:
    """The owner holds the key, so it can re-sign a whole new chain: only checkpoints catch that."""
    owner, witness = Signer.generate(), Signer.generate()
    honest, rewritten = tmp_path / "honest.log", tmp_path / "rewritten.log"
    witness_store = CheckpointStore.open(tmp_path / "witness-checkpoints.log")
    with AuditLog.open(honest, owner, clock=StepClock()) as log:
        cp = Checkpointer(log, owner, every=4)
        for i in range(10):
            log.append(_event(i))
            envelope = cp.maybe()
            if envelope is not None:  # "published on gossip" and kept by a witness
                witness_store.add(envelope.to_bytes())
    # Someone else's checkpoint in the store must not matter for this log.
    witness_store.add(seal_envelope(witness, Checkpoint(seq=0, head_hash=bytes(32), round=0)).to_bytes())
    witness_store.close()
    checkpoints = list(CheckpointStore.load(tmp_path / "witness-checkpoints.log"))
    report = verify_file(honest, checkpoints=checkpoints).report
    assert report.ok and (report.checkpoints_checked, report.checkpoints_ignored) == (2, 1)

    # The owner rewrites entry 2 and re-signs everything after it: a perfectly valid chain.
    clock = StepClock()
    with AuditLog.open(rewritten, owner, clock=clock) as log:
        for i in range(10):
            log.append(_event(i) if i != 2 else Event(kind="distillation", round=0, metrics={"i": 999}))
    assert verify_file(rewritten).report.ok
    report = verify_file(rewritten, checkpoints=checkpoints).report
    assert (report.problem.reason, report.problem.seq) == ("checkpoint-mismatch", 3)

    # Truncating to before the last checkpoint (even re-signed cleanly) contradicts it too.
    with AuditLog.open(tmp_path / "short.log", owner, clock=StepClock()) as log:
        for i in range(6):
            log.append(_event(i))
    report = verify_file(tmp_path / "short.log", checkpoints=checkpoints).report
    assert (report.problem.reason, report.problem.seq) == ("checkpoint-beyond-end", 6)
