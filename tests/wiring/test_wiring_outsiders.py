"""Refusals of outsiders are counted every time and audited at most once per peer per interval (issue 15, finding 7)."""

from __future__ import annotations

import pytest
import trio
from wiring_helpers import NodeSpec, consortium, private_texts, proposal
from wiring_stubs import StubAgent

from knexa_node.audit import verify_file
from knexa_node.audit.log import log_path
from knexa_node.crypto import Signer
from knexa_node.daemon.refusals import RefusalGate
from knexa_node.net.protocols import EXCHANGE_PROTOCOL
from knexa_node.testing import wait_until

ATTEMPTS = 12


def test_gate_admits_one_refusal_per_peer_per_interval_and_counts_the_rest() -> None:
    gate = RefusalGate(interval_s=10.0, max_peers=2)
    assert gate.admit("a", 0.0) == 0
    assert [gate.admit("a", t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert gate.admit("b", 3.0) == 0  # another peer has its own interval
    assert gate.admit("a", 10.0) == 3  # logged again, carrying the three suppressed before it
    assert gate.admit("a", 11.0) is None and gate.suppressed_total == 4
    gate.admit("c", 12.0)  # a third peer: the least recently refused ("b") is forgotten
    assert gate.admit("b", 13.0) == 0
    with pytest.raises(ValueError):
        RefusalGate(interval_s=0)


async def test_an_outsider_flooding_exchange_streams_grows_the_log_by_one_entry(tmp_path) -> None:
    cpm = Signer.generate()
    # The teacher's allow-list does not name node 1; node 1 knows the teacher and keeps asking.
    specs = [NodeSpec(StubAgent(), private_texts(0), members=[0]), NodeSpec(StubAgent(), [])]
    with trio.fail_after(60):
        async with consortium(tmp_path, cpm, specs) as (teacher, outsider):
            for _ in range(ATTEMPTS):
                envelope, message = proposal(cpm, teacher.peer_id, outsider.peer_id)
                refused = await outsider.service.fetch(envelope, message)
                assert refused.code == "refused-by-peer:non-member", refused
            await wait_until(lambda: teacher.service.stats.by_code["teacher"]["non-member"] >= ATTEMPTS, timeout=10)
            net = teacher.daemon.net.stats
    assert net.stream_errors[f"{EXCHANGE_PROTOCOL} non-member"] == ATTEMPTS
    assert net.refusals_unlogged == ATTEMPTS - 1
    view = verify_file(log_path(teacher.daemon.home))
    assert view.report.ok
    refusals = [e.event for e in view.entries if e.event.peer == outsider.peer_id]
    assert len(refusals) == 1 and refusals[0].metrics["code"] == "non-member"
    assert refusals[0].metrics["suppressed"] == 0  # the first one; the next admitted entry carries the count
    assert len(teacher.logged("exchange")) == 1
