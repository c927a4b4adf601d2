"""cross_check: two organizations' logs agree on their common exchanges, or every disagreement is listed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from audit_fixtures import StepClock, build_pair, make_exchange

from knexa_node.audit import AuditLog, cross_check, events, verify_file
from knexa_node.crypto import Signer


def test_honest_pair_agrees(tmp_path: Path) -> None:
    _, _, path_a, path_b = build_pair(tmp_path, rounds=3)
    result = cross_check(verify_file(path_a), verify_file(path_b))
    assert result.ok, result.mismatches
    assert result.common == 4  # three exchanges and one refusal
    assert cross_check(verify_file(path_b), verify_file(path_a)).ok


def test_every_disagreement_is_listed(tmp_path: Path) -> None:
    cpm, a, b = Signer.generate(), Signer.generate(), Signer.generate()
    exchanges = [make_exchange(cpm, a, b, r) for r in range(6)]
    with AuditLog.open(tmp_path / "a.log", a, clock=StepClock()) as log_a, \
            AuditLog.open(tmp_path / "b.log", b, clock=StepClock()) as log_b:
        for ex in exchanges:
            log_a.append(events.proposal_accepted(ex.proposal, a.peer_id))
            log_a.append(events.package_sent(ex.header, ex.receipt_envelope))
        # B's view, without the teacher's signed header (it would not verify otherwise):
        honest = [events.package_received(b"", ex.header) for ex in exchanges]
        log_b.append(honest[0])  # 0: agrees
        log_b.append(dataclasses.replace(honest[1], package_hash=b"\x07" * 32))  # 1: another hash
        log_b.append(dataclasses.replace(honest[2], package_size=honest[2].package_size + 1))  # 2: another size
        log_b.append(dataclasses.replace(honest[3], round=honest[3].round + 10))  # 3: another round
        log_b.append(events.proposal_accepted(exchanges[4].proposal, b.peer_id))  # 4: never received
        # 5: B has no record at all
    result = cross_check(verify_file(tmp_path / "a.log"), verify_file(tmp_path / "b.log"))
    by_proposal = {}
    for m in result.mismatches:
        by_proposal.setdefault(m.proposal_id, []).append(m.kind)
    pid = [ex.proposal.proposal_id for ex in exchanges]
    assert pid[0] not in by_proposal
    assert by_proposal[pid[1]] == ["package_hash"]
    assert by_proposal[pid[2]] == ["package_size"]
    assert by_proposal[pid[3]] == ["round"]
    assert by_proposal[pid[4]] == ["missing-transfer"]
    assert by_proposal[pid[5]] == ["missing"]
    assert result.common == 5 and not result.ok
    size = next(m for m in result.mismatches if m.kind == "package_size")
    assert (size.a_value, size.b_value) == (exchanges[2].header.payload_size, exchanges[2].header.payload_size + 1)
    assert size.a_seq == 5 and size.b_seq == 2


def test_exchanges_with_third_parties_are_not_compared(tmp_path: Path) -> None:
    cpm, a, b, c = (Signer.generate() for _ in range(4))
    with AuditLog.open(tmp_path / "a.log", a) as log_a, AuditLog.open(tmp_path / "b.log", b) as log_b:
        ex = make_exchange(cpm, a, c, 0)
        log_a.append(events.package_sent(ex.header, ex.receipt_envelope))
        ex = make_exchange(cpm, c, b, 0)
        log_b.append(events.package_received(ex.header_envelope, ex.header))
    result = cross_check(verify_file(tmp_path / "a.log"), verify_file(tmp_path / "b.log"))
    assert result.ok and result.common == 0
