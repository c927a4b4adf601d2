"""Crash-safe policy state: snapshot + journal, torn tails, corruption, kill -9 of a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpm_journal_child import OPTIONS, stream
from knexa_cpm.policies import Pairing, PolicyError, make_policy
from knexa_cpm.state import (
    JOURNAL_MAGIC, PolicyStore, StateCorruptError, StateError, StateMismatchError, decode_snapshot, encode_snapshot,
)

CHILD = Path(__file__).with_name("cpm_journal_child.py")


def reference(n: int):
    policy = make_policy("knexa", **OPTIONS)
    for i in range(1, n + 1):
        policy.feedback(*stream(i))
    return policy


def assert_same_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["feedback_count"] == sb["feedback_count"]
    for key in ("A", "A_inv", "b"):
        np.testing.assert_array_equal(sa["bandit"][key], sb["bandit"][key])
    assert sa["normalizer"] == sb["normalizer"]
    assert sa["trust"] == sb["trust"]


def fill(directory: Path, n: int, checkpoint_at: tuple[int, ...] = ()) -> None:
    with PolicyStore.open(directory, make_policy("knexa", **OPTIONS)) as store:
        for i in range(1, n + 1):
            assert store.record_feedback(*stream(i), meta={"nonce": i}) == i
            if i in checkpoint_at:
                store.checkpoint(extra={"at": i})


def reopen(directory: Path) -> PolicyStore:
    return PolicyStore.open(directory, make_policy("knexa", **OPTIONS))


def test_reopen_restores_snapshot_plus_journal_exactly(tmp_path):
    fill(tmp_path, 23, checkpoint_at=(10,))
    with reopen(tmp_path) as store:
        assert store.seq == 23 and store.snapshot_seq == 10 and store.extra == {"at": 10}
        assert [e.seq for e in store.replayed] == list(range(11, 24))
        assert [e.meta["nonce"] for e in store.replayed] == list(range(11, 24))
        assert_same_state(store.policy, reference(23))
        store.record_feedback(*stream(24))
    with reopen(tmp_path) as store:
        assert_same_state(store.policy, reference(24))


def test_refused_feedback_writes_nothing(tmp_path):
    with reopen(tmp_path) as store:
        pairing, _ = stream(1)
        with pytest.raises(PolicyError):
            store.record_feedback(pairing, float("nan"))
        with pytest.raises(PolicyError):
            store.record_feedback(Pairing("a", "b", "text", np.zeros(3)), 1.0)
        size = store.journal_path.stat().st_size
        assert size == len(JOURNAL_MAGIC) and store.seq == 0


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(0, 10_000))
def test_any_torn_journal_tail_loses_only_the_unfinished_record(cut):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        fill(directory, 8)
        journal = directory / "journal.bin"
        data = journal.read_bytes()
        cut = cut % (len(data) + 1)
        journal.write_bytes(data[:cut])
        with reopen(directory) as store:
            kept = store.seq
            assert_same_state(store.policy, reference(kept))
            # Every complete record before the cut survived.
            complete = sum(1 for i in range(1, 9) if _record_end(data, i) <= cut)
            assert kept == complete
            store.record_feedback(*stream(kept + 1))
        with reopen(directory) as store:
            assert store.seq == kept + 1 and store.torn_bytes == 0


def _record_end(data: bytes, index: int) -> int:
    offset = len(JOURNAL_MAGIC)
    for _ in range(index):
        offset += 8 + int.from_bytes(data[offset:offset + 4], "big")
    return offset


def test_zero_filled_tail_is_a_torn_write(tmp_path):
    fill(tmp_path, 5)
    with open(tmp_path / "journal.bin", "ab") as handle:
        handle.write(b"\0" * 300)
    with reopen(tmp_path) as store:
        assert store.seq == 5 and store.torn_bytes == 300


def test_corruption_in_the_middle_of_the_journal_is_an_error(tmp_path):
    fill(tmp_path, 6)
    journal = tmp_path / "journal.bin"
    data = bytearray(journal.read_bytes())
    data[_record_end(bytes(data), 2) + 20] ^= 0x40  # inside the third record's payload
    journal.write_bytes(bytes(data))
    with pytest.raises(StateCorruptError, match="checksum"):
        reopen(tmp_path)
    journal.write_bytes(b"garbage!" + bytes(data[8:]))
    with pytest.raises(StateCorruptError, match="magic"):
        reopen(tmp_path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "missing"])
def test_damaged_snapshot_is_an_error_never_a_reset(tmp_path, damage):
    fill(tmp_path, 6, checkpoint_at=(3,))
    snapshot = tmp_path / "snapshot.bin"
    data = bytearray(snapshot.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 1
        snapshot.write_bytes(bytes(data))
    elif damage == "truncate":
        snapshot.write_bytes(bytes(data[:-7]))
    elif damage == "empty":
        snapshot.write_bytes(b"")
    else:
        snapshot.unlink()
    with pytest.raises(StateCorruptError):
        reopen(tmp_path)


def test_state_of_another_policy_or_config_is_refused(tmp_path):
    fill(tmp_path, 2)
    with pytest.raises(StateMismatchError):
        PolicyStore.open(tmp_path, make_policy("linucb"))
    with pytest.raises(StateMismatchError):
        PolicyStore.open(tmp_path, make_policy("knexa", lam=2.0, beta0=0.5))


def test_a_restart_with_another_scoring_weight_keeps_what_the_policy_learned(tmp_path):
    """Options that only weigh scores (knexa's prior weight, as an upgrade may change its default) fit the state."""
    fill(tmp_path, 5)
    with reopen(tmp_path) as store:
        learned = store.policy.state_dict()
    other = make_policy("knexa", **{**OPTIONS, "prior_weight": 7.0, "beta0": 0.1})
    with PolicyStore.open(tmp_path, other) as store:
        assert store.seq == 5
        assert np.array_equal(store.policy.state_dict()["bandit"]["A"], learned["bandit"]["A"])
    with pytest.raises(StateMismatchError):  # one that shapes the state still does not
        PolicyStore.open(tmp_path, make_policy("knexa", **{**OPTIONS, "raw": not OPTIONS.get("raw", True)}))


def test_second_opener_is_refused_while_the_first_holds_the_lock(tmp_path):
    with reopen(tmp_path):
        with pytest.raises(StateError, match="in use"):
            reopen(tmp_path)
    reopen(tmp_path).close()


def test_crash_between_snapshot_and_journal_reset_does_not_double_apply(tmp_path):
    fill(tmp_path, 7)
    old_journal = (tmp_path / "journal.bin").read_bytes()
    with reopen(tmp_path) as store:
        store.checkpoint()
    (tmp_path / "journal.bin").write_bytes(old_journal)  # as if the reset never happened
    with reopen(tmp_path) as store:
        assert store.seq == 7 and store.replayed == []
        assert_same_state(store.policy, reference(7))


@pytest.mark.slow
@pytest.mark.parametrize("target", [3, 40, 137])
def test_kill_9_mid_write_loses_nothing_acknowledged(tmp_path, target):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHILD.parent), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, str(CHILD), str(tmp_path), "16"], stdout=subprocess.PIPE, env=env)
    acknowledged = 0
    try:
        assert child.stdout is not None
        for line in child.stdout:
            acknowledged = int(line)
            if acknowledged >= target:
                break
        # The child keeps appending while we kill it: the signal lands at an
        # arbitrary point of record_feedback or checkpoint.
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert acknowledged >= target, "child died before acknowledging"
    with reopen(tmp_path) as store:
        assert store.seq >= acknowledged
        assert_same_state(store.policy, reference(store.seq))


def theta_after_honest_stream(policy, start: int, count: int = 120) -> np.ndarray:
    for i in range(start, start + count):
        policy.feedback(*stream(i))
    return policy.bandit.theta.copy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("checkpoint", [False, True])
def test_a_reward_of_1e308_does_not_freeze_learning_after_a_restart(tmp_path, checkpoint):
    # Issue 15, finding 3: one reward of 1e308 made the normalizer's variance infinite and every later
    # z-score 0, also after a restart (the journal replays it, the snapshot kept the infinity).
    with reopen(tmp_path) as store:
        for i in range(1, 31):
            store.record_feedback(*stream(i))
        store.record_feedback(stream(31)[0], 1e308)
        if checkpoint:
            store.checkpoint()
    with reopen(tmp_path) as store:
        assert store.seq == 31
        assert np.all(np.abs(store.policy.normalizer.values()) <= 100.0)
        start = store.policy.bandit.theta.copy()
        moved = theta_after_honest_stream(store.policy, 32) - start
    clean = reference(30)
    clean.feedback(stream(31)[0], 0.0)
    clean_start = clean.bandit.theta.copy()
    clean_moved = theta_after_honest_stream(clean, 32) - clean_start
    # The later rewards move the model as they move one that never saw the poison (frozen: not at all).
    assert cosine(moved, clean_moved) > 0.85
    assert np.linalg.norm(moved) == pytest.approx(np.linalg.norm(clean_moved), rel=0.1)


def test_a_snapshot_with_the_old_running_statistics_starts_a_fresh_window(tmp_path):
    # A CPM whose snapshot was written before issue 15 may hold mu = 1e308 / n and m2 = inf.
    fill(tmp_path, 10, checkpoint_at=(10,))
    snapshot = tmp_path / "snapshot.bin"
    payload = decode_snapshot(snapshot.read_bytes())
    payload["state"]["normalizer"] = {"clip": 5.0, "update_first": True, "count": 10, "mu": 1e307, "m2": float("inf")}
    snapshot.write_bytes(encode_snapshot(payload))
    with reopen(tmp_path) as store:
        assert store.policy.normalizer.count == 0
        zs = [store.policy.normalizer(stream(i)[1]) for i in range(11, 40)]
    assert np.std(zs) > 0.3


@pytest.mark.parametrize("poison", ["window-nan", "window-huge", "bandit-inf", "trust-nan"])
def test_a_poisoned_snapshot_is_an_error_never_loaded(tmp_path, poison):
    fill(tmp_path, 10, checkpoint_at=(10,))
    snapshot = tmp_path / "snapshot.bin"
    payload = decode_snapshot(snapshot.read_bytes())
    state = payload["state"]
    if poison == "window-nan":
        state["normalizer"]["values"][0] = float("nan")
    elif poison == "window-huge":
        state["normalizer"]["values"][0] = 1e308
    elif poison == "bandit-inf":
        state["bandit"]["b"] = np.full_like(state["bandit"]["b"], np.inf)
    else:
        teacher = next(iter(state["trust"]["stats"]))
        student = next(iter(state["trust"]["stats"][teacher]))
        state["trust"]["stats"][teacher][student] = [1.0, float("nan")]
    snapshot.write_bytes(encode_snapshot(payload))
    with pytest.raises(StateCorruptError, match="does not fit"):
        reopen(tmp_path)
