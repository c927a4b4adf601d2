"""The delay line's schedule (pure: a given clock and RNG): delays, jitter without reordering, limits, bad commands."""

from __future__ import annotations

import random

import pytest

import delayline
from delayline import Schedule


def test_a_frame_leaves_after_its_members_delay_and_the_other_direction_is_not_held() -> None:
    schedule = Schedule(2)
    schedule.set_delay(0, 40.0, 0.0)
    schedule.hold(0, b"a", now=10.0)
    schedule.hold(1, b"b", now=10.0)  # member 1 has no delay
    assert schedule.due(10.0) == [(1, b"b")]
    assert schedule.next_release() == pytest.approx(10.040)
    assert schedule.due(10.039) == []
    assert schedule.due(10.040) == [(0, b"a")]
    assert schedule.next_release() is None


def test_jitter_spreads_the_delay_but_never_reorders_one_members_frames() -> None:
    schedule = Schedule(1, rng=random.Random(7))
    schedule.set_delay(0, 40.0, 10.0)
    releases = []
    for k in range(2000):
        schedule.hold(0, k.to_bytes(2, "big"), now=k * 0.001)
        releases.append(schedule.last[0] - k * 0.001)
    frames = [int.from_bytes(f, "big") for _, f in schedule.due(1e9)]
    assert frames == list(range(2000))
    spread = sorted(releases)
    # A frame sent 1 ms after another waits at least until it left: the queue, not only the jitter, shapes the
    # delay; still the median stays near 40 ms and the delays spread out.
    assert 0.038 <= spread[1000] <= 0.055 and spread[-1] - spread[0] > 0.010


def test_a_full_queue_drops_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delayline, "QUEUE_LIMIT", 3)
    schedule = Schedule(1)
    schedule.set_delay(0, 5.0, 0.0)
    for k in range(5):
        schedule.hold(0, bytes([k]), now=0.0)
    assert schedule.dropped == 2
    assert [f for _, f in schedule.due(1.0)] == [b"\x00", b"\x01", b"\x02"]
    schedule.hold(0, b"x", now=1.0)  # room again once frames left
    assert schedule.dropped == 2


@pytest.mark.parametrize("line", ["delay 5 1 1", "delay 0 -1 0", "delay 0 1 -2", "jump 0 1 1"])
def test_bad_commands_are_refused(line: str) -> None:
    with pytest.raises(ValueError):
        delayline._command(Schedule(2), line)


def test_a_command_sets_the_delay() -> None:
    schedule = Schedule(2)
    delayline._command(schedule, "delay 1 40 10")
    assert (schedule.delay_s[1], schedule.jitter_s[1]) == (0.040, 0.010)
