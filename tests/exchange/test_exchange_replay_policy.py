"""Replay cache contract (persisted, bounded, refuses bad files), policy from config, and garbage into the state machines."""

from __future__ import annotations

import os
import time

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from knexa_node.config import parse_config
from knexa_node.crypto import Signer
from knexa_node.exchange.errors import CODES, ExchangeError
from knexa_node.exchange.policy import ExchangePolicy
from knexa_node.exchange.replay import ReplayCache, ReplayCacheError
from knexa_node.exchange.student import StudentSession
from knexa_node.exchange.teacher import TeacherSession
from knexa_node.privacy.budget import PrivacyBudget


def test_replay_cache_remembers_across_reopen_and_separates_kinds(tmp_path):
    cache = ReplayCache.in_state_dir(tmp_path)
    ident = os.urandom(16)
    assert cache.add("proposal", 1, ident)
    assert not cache.add("proposal", 1, ident)
    assert cache.add("feedback", 1, ident)  # the CPM's feedback IDs do not collide with proposals
    reopened = ReplayCache.in_state_dir(tmp_path)
    assert reopened.seen("proposal", 1, ident) and not reopened.add("feedback", 1, ident)
    assert (tmp_path / "replay.msgpack").stat().st_mode & 0o077 == 0


def test_replay_cache_is_bounded_by_rounds_and_refuses_older_ones(tmp_path):
    cache = ReplayCache.in_state_dir(tmp_path, keep_rounds=3)
    for round_ in range(10):
        for _ in range(5):
            assert cache.add("proposal", round_, os.urandom(16))
    assert len(cache) == 15 and cache.horizon == 7
    assert not cache.add("proposal", 6, os.urandom(16))  # too old to prove it is fresh
    assert len(ReplayCache.in_state_dir(tmp_path, keep_rounds=3)) == 15


def test_replay_cache_hard_cap(tmp_path):
    cache = ReplayCache.in_state_dir(tmp_path, keep_rounds=100, max_entries=10)
    for round_ in range(4):
        for _ in range(5):
            cache.add("proposal", round_, os.urandom(16))
    assert len(cache) == 10


@pytest.mark.parametrize("content", [b"\xc1", b"\x81\xa1v\x02", b"\x82\xa1v\x01\xa7entries\x91\x93\x01\x02\x03"])
def test_malformed_replay_file_is_a_clear_error(tmp_path, content):
    (tmp_path / "replay.msgpack").write_bytes(content)
    with pytest.raises(ReplayCacheError, match="replay.msgpack"):
        ReplayCache.in_state_dir(tmp_path)


def test_policy_from_config():
    cpm, member = Signer.generate(), Signer.generate()
    config = parse_config(f"""
[consortium]
cpm = "{cpm.peer_id}"
members = ["{member.peer_id}"]
[exchange]
max_package_mb = 2.0
timeout_s = 30
[privacy]
dp_enabled = true
dp_epsilon_per_exchange = 0.5
""")
    policy = ExchangePolicy.from_config(config)
    assert policy.cpm == cpm.peer_id and policy.membership.is_member(member.peer_id)
    assert not policy.membership.is_member(cpm.peer_id)
    assert policy.max_package_bytes == 2 * 1024 * 1024 and policy.timeout_s == 30
    assert policy.dp_enabled and policy.dp_epsilon == 0.5 and policy.dp_delta == 1e-5
    assert not ExchangePolicy.from_config(parse_config("")).dp_enabled


_KEYS = [Signer.generate() for _ in range(3)]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises_anything_but_exchange_errors(data):
    cpm, teacher, student = _KEYS
    policy = ExchangePolicy(cpm=cpm.peer_id)
    t = TeacherSession(teacher, policy, remote=student.peer_id, current_round=1, now=time.time(), replay=ReplayCache())
    with pytest.raises(ExchangeError) as info:
        t.receive_request(data)
    assert info.value.code in CODES
    with pytest.raises(ExchangeError) as info:
        StudentSession(student, policy, proposal_envelope=data, remote=teacher.peer_id, current_round=1, now=time.time())
    assert info.value.code in CODES


async def test_worker_threads_accept_one_id_once_and_never_overspend_the_budget(tmp_path):
    """The driver persists from worker threads, so several exchanges may add and spend at once."""
    cache = ReplayCache.in_state_dir(tmp_path)
    budget = PrivacyBudget.in_state_dir(tmp_path, total=5.0, per_peer=5.0)
    ident = os.urandom(16)
    accepted, spent, refused = [], [], []

    def spend() -> None:
        try:
            budget.spend("peer", 1.0, 1e-6)
            spent.append(1)
        except Exception:
            refused.append(1)

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(lambda: trio.to_thread.run_sync(lambda: accepted.append(cache.add("proposal", 1, ident))))
            nursery.start_soon(trio.to_thread.run_sync, spend)
    assert sorted(accepted) == [False] * 7 + [True]
    assert (len(spent), len(refused)) == (5, 3) and budget.total.epsilon == pytest.approx(5.0)
    assert PrivacyBudget.in_state_dir(tmp_path, total=5.0, per_peer=5.0).total.releases == 5
