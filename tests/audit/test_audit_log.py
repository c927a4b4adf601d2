"""The writer: durable appends, one writer, owner checks, crash leftovers and explicit repair."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from audit_fixtures import StepClock, make_exchange

from knexa_node.audit import AuditError, AuditLog, EventError, LogLockedError, TornTailError, events, verify_file
from knexa_node.audit.entry import Event, sign_entry
from knexa_node.audit.framing import FRAME_HEADER_SIZE, MAGIC_SIZE, encode_frame, scan_frames
from knexa_node.audit.verify import LOG_MAGIC
from knexa_node.crypto import Signer
from knexa_node.identity import NodeHome


def _fill(path: Path, signer: Signer, n: int) -> list[bytes]:
    with AuditLog.open(path, signer, clock=StepClock()) as log:
        return [log.append(Event(kind="distillation", round=i // 3, metrics={"i": i})).hash for i in range(n)]


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    signer = Signer.generate()
    path = tmp_path / "x.log"
    first = _fill(path, signer, 3)
    with AuditLog.open(path, signer, clock=StepClock(2e9)) as log:
        assert (log.head_seq, log.head_hash, log.head_round) == (2, first[-1], 0)
        log.append(Event(kind="reward-reported", round=1))
    view = verify_file(path)
    assert view.report.ok and view.report.entries == 4
    assert view.entries[3].prev == first[-1]


def test_home_layout_and_file_mode(tmp_path: Path) -> None:
    home = NodeHome(tmp_path / "node")
    signer = Signer.generate()
    with AuditLog.open_home(home, signer) as log:
        log.append(Event(kind="distillation", round=0))
    assert log.path == home.audit_dir / "exchange.log"
    assert (log.path.stat().st_mode & 0o777) == 0o600


def test_a_second_writer_is_refused_while_the_first_holds_the_log(tmp_path: Path) -> None:
    signer = Signer.generate()
    path = tmp_path / "x.log"
    with AuditLog.open(path, signer):
        with pytest.raises(LogLockedError):
            AuditLog.open(path, signer)
        assert verify_file(path).report.ok  # readers are not blocked
    with AuditLog.open(path, signer) as log:  # released on close
        assert log.count == 0


def test_another_identity_cannot_append(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    _fill(path, Signer.generate(), 1)
    with pytest.raises(AuditError) as info:
        AuditLog.open(path, Signer.generate())
    assert info.value.reason == "wrong-owner"


def test_missing_log_without_create(tmp_path: Path) -> None:
    with pytest.raises(AuditError) as info:
        AuditLog.open(tmp_path / "none.log", Signer.generate(), create=False)
    assert info.value.reason == "missing"


def test_clock_stepping_back_keeps_time_monotone(tmp_path: Path) -> None:
    times = iter([100.0, 200.0, 150.0, 160.0, 300.0])
    with AuditLog.open(tmp_path / "x.log", Signer.generate(), clock=lambda: next(times)) as log:
        stamps = [log.append(Event(kind="distillation", round=0)).time for _ in range(4)]
    assert stamps == [200.0, 200.0, 200.0, 300.0]
    assert verify_file(tmp_path / "x.log").report.ok


def test_inconsistent_receipts_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    cpm, teacher, student, stranger = (Signer.generate() for _ in range(4))
    ex, other = make_exchange(cpm, teacher, student, 0), make_exchange(cpm, teacher, student, 0)
    forged = make_exchange(cpm, teacher, stranger, 0)  # receipt signed by someone else
    path = tmp_path / "t.log"
    with AuditLog.open(path, teacher) as log:
        size = path.stat().st_size
        bad = [
            events.package_sent(ex.header, other.receipt_envelope),  # receipt of another package
            events.package_sent(ex.header, ex.header_envelope),  # a header is not a receipt
            events.package_sent(ex.header, forged.receipt_envelope),
            events.package_sent(ex.header, ex.receipt_envelope[:-1] + bytes([ex.receipt_envelope[-1] ^ 1])),
            Event(kind="package-sent", round=1, proposal_id=ex.proposal.proposal_id, peer=student.peer_id,
                  protocol="text", package_hash=ex.header.payload_hash, package_size=ex.header.payload_size,
                  receipt=ex.receipt_envelope),  # wrong round
            Event(kind="distillation", round=-3),
        ]
        for event in bad:
            with pytest.raises(EventError):
                log.append(event)
        assert path.stat().st_size == size and log.head_seq == -1
        log.append(events.package_sent(ex.header, ex.receipt_envelope))
    assert verify_file(path).report.ok
    with AuditLog.open(tmp_path / "s.log", student) as log:
        with pytest.raises(EventError):  # the student's log needs the teacher's header, not its own receipt
            log.append(events.package_received(ex.receipt_envelope, ex.header))
        log.append(events.package_received(ex.header_envelope, ex.header))


def _last_frame_bounds(path: Path) -> tuple[int, int]:
    scan = scan_frames(path.read_bytes(), LOG_MAGIC)
    return scan.frames[-1].offset, scan.end


def test_every_cut_inside_the_last_entry_is_a_torn_tail_refused_then_repaired(tmp_path: Path) -> None:
    signer = Signer.generate()
    path = tmp_path / "x.log"
    hashes = _fill(path, signer, 3)
    whole = path.read_bytes()
    start, end = _last_frame_bounds(path)
    for cut in range(start + 1, end):
        path.write_bytes(whole[:cut])
        report = verify_file(path).report
        assert not report.ok and report.problem.reason == "torn-tail" and report.problem.seq == 2, cut
        assert report.entries == 2
        with pytest.raises(TornTailError) as info:
            AuditLog.open(path, signer)
        assert info.value.offset == start and info.value.torn_bytes == cut - start
        assert path.read_bytes() == whole[:cut]  # refusing touched nothing
    # Explicit repair keeps the torn bytes aside and records itself in the log.
    with AuditLog.open(path, signer, repair=True, clock=StepClock(2e9)) as log:
        assert log.head_seq == 2
    side = path.with_name(f"{path.name}.torn-{start}")
    assert side.read_bytes() == whole[start : end - 1]
    view = verify_file(path)
    assert view.report.ok and view.entries[1].hash == hashes[1]
    assert view.entries[2].event.kind == "log-repaired"
    assert view.entries[2].event.metrics["torn_bytes"] == end - 1 - start


def test_zero_filled_tail_is_torn_but_damage_in_the_middle_is_not_repairable(tmp_path: Path) -> None:
    signer = Signer.generate()
    path = tmp_path / "x.log"
    _fill(path, signer, 3)
    whole = path.read_bytes()
    path.write_bytes(whole + bytes(300))  # what some file systems leave after a crash
    assert verify_file(path).report.problem.reason == "torn-tail"
    with pytest.raises(TornTailError):
        AuditLog.open(path, signer)
    first = scan_frames(whole, LOG_MAGIC).frames[1]
    damaged = bytearray(whole)
    damaged[first.offset + FRAME_HEADER_SIZE + 5] ^= 0x40
    path.write_bytes(bytes(damaged))
    report = verify_file(path).report
    assert report.problem.reason == "corrupt-frame" and report.problem.seq == 0
    with pytest.raises(AuditError) as info:
        AuditLog.open(path, signer, repair=True)
    assert not isinstance(info.value, TornTailError)
    assert path.read_bytes() == bytes(damaged)


def test_not_a_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"hello world, this is not a log at all")
    with pytest.raises(AuditError):
        AuditLog.open(path, Signer.generate())
    assert verify_file(path).report.problem.reason == "not-an-audit-log"
    path.write_bytes(LOG_MAGIC[:5])
    assert verify_file(path).report.problem.reason == "torn-tail"
    path.write_bytes(LOG_MAGIC)
    assert verify_file(path).report.problem.reason == "bad-header"
    assert MAGIC_SIZE == len(LOG_MAGIC)


WRITER = Path(__file__).with_name("audit_writer_process.py")


@pytest.mark.slow
def test_a_killed_writer_leaves_a_valid_log_or_a_torn_tail(tmp_path: Path) -> None:
    """A real crash: SIGKILL a process that appends in a loop; every append it reported survives."""
    seed = os.urandom(32)
    path = tmp_path / "x.log"
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(path), seed.hex()], stdout=subprocess.PIPE, text=True)
        try:
            reported = -1
            assert proc.stdout is not None
            for line in proc.stdout:  # the child prints the seq of each 25th durable append
                reported = int(line)
                if reported >= 100 * (attempt + 1):
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        report = verify_file(path).report
        assert report.ok or report.problem.reason == "torn-tail", report.problem
        assert report.entries > reported
        with AuditLog.open(path, Signer(seed), repair=not report.ok) as log:
            log.append(Event(kind="distillation", round=attempt))
        assert verify_file(path).report.ok


def test_reopening_checks_the_head_entry(tmp_path: Path) -> None:
    """Reopening checks checksums, header and head (seq, signature); a foreign head is refused."""
    signer = Signer.generate()
    path = tmp_path / "x.log"
    hashes = _fill(path, signer, 3)
    data = path.read_bytes()
    forged = sign_entry(Signer.generate(), 3, 2e9, hashes[-1], Event(kind="distillation", round=0))
    path.write_bytes(data + encode_frame(forged.record))
    with pytest.raises(AuditError) as info:
        AuditLog.open(path, signer)
    assert info.value.reason == "damaged" and "not signed by this node" in str(info.value)
    skipped = sign_entry(signer, 5, 2e9, hashes[-1], Event(kind="distillation", round=0))  # seq gap
    path.write_bytes(data + encode_frame(skipped.record))
    with pytest.raises(AuditError) as info:
        AuditLog.open(path, signer)
    assert info.value.reason == "damaged" and "seq 5" in str(info.value)
    assert path.read_bytes() == data + encode_frame(skipped.record)
