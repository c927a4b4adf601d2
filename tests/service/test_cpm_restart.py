"""The CPM across restarts and missed announcements: what kill -9 of a CPM or a node leaves behind (issue 16)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from knexa_cpm.service import REANNOUNCE_S, CpmService
from knexa_node.wire import open_envelope

from test_cpm_service import CPM, NODES, Clock, ask, make_service, profile_of


async def test_an_open_round_is_announced_again_until_every_member_profiled(tmp_path: Path) -> None:
    # A member that restarts while the round collects profiles missed the announcement (gossip keeps no history).
    clock = Clock()
    service, published = make_service(tmp_path, clock)
    await service.open_round()
    for i, node in enumerate(NODES[:3]):
        ask(service, node, profile_of(i, 1))

    def announcements() -> list[object]:
        return [open_envelope(d) for t, d in published if t.endswith("/rounds")]

    await service.tick()
    assert len(announcements()) == 1  # not before REANNOUNCE_S
    clock.now += REANNOUNCE_S
    await service.tick()
    first, again = announcements()
    assert again[1] == first[1] and again[0].digest != first[0].digest  # same round, a new message for gossip
    assert service.counters["reannounced"] == 1
    ask(service, NODES[3], profile_of(3, 1))
    await service.tick()  # every member profiled: pairs, no more announcements
    clock.now += REANNOUNCE_S
    await service.tick()
    assert len(announcements()) == 2 and service.book is not None and service.book.phase == "paired"


async def test_a_round_left_open_by_a_killed_cpm_is_closed_as_interrupted_on_restart(tmp_path: Path) -> None:
    clock = Clock()
    service, _ = make_service(tmp_path, clock)
    await service.open_round()
    ask(service, NODES[0], profile_of(0, 1))
    service.close()  # what kill -9 leaves: the round opened, never closed
    events: list[tuple[str, dict]] = []
    config = service.config
    restarted = CpmService(CPM, config, tmp_path / "cpm", publish=lambda *a: None, clock=clock,
                           on_event=lambda name, **fields: events.append((name, fields)))
    assert events == [("round-closed", {"round": 1, "phase": "closed", "closed_by": "interrupted"})]
    assert restarted.status()["history"][-1]["closed_by"] == "interrupted" and restarted.last_round == 1
    assert restarted.status()["rounds_closed"] == 1
    restarted.close()
    events.clear()
    again = CpmService(CPM, config, tmp_path / "cpm", publish=lambda *a: None, clock=clock,
                       on_event=lambda name, **fields: events.append((name, fields)))
    assert events == [] and again.history == []  # told once, not at every start
    again.close()


async def test_a_closed_round_is_not_reported_as_interrupted(tmp_path: Path) -> None:
    clock = Clock()
    service, _ = make_service(tmp_path, clock)
    await service.open_round()
    clock.now += 31
    await service.tick()  # no profiles: closed at the deadline
    assert service.round_closed()
    service.close()
    reopened, _ = make_service(tmp_path, clock)
    assert reopened.history == [] and reopened.last_round == 1


async def test_a_restarted_cpm_goes_on_with_its_automatic_rounds(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    # 2 automatic rounds planned, the first one done before the restart: the restarted CPM runs one more, not two.
    clock = Clock()
    first, _ = make_service(tmp_path, clock)
    await first.open_round()
    clock.now += 31
    await first.tick()
    first.close()
    service, published = make_service(tmp_path, lambda: clock.now + trio.current_time())  # type: ignore[arg-type]
    service.config.cpm.auto_rounds = 2
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve)
        await trio.sleep(1000)  # several deadlines: every round the plan still holds has opened and closed
        nursery.cancel_scope.cancel()
    assert service.last_round == 2 and [h["round"] for h in service.history] == [2]
    assert service.status()["rounds_closed"] == 2  # counted over both runs: what an orchestrator waiting for 2 reads
