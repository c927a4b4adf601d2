"""Audit log speed: durable appends per second, and verification speed on a 100,000-entry log.

Run: ``.venv/bin/python bench/audit_bench.py [--appends 2000] [--entries 100000] [--repeats 3] [--dir DIR]``

Appends go through :class:`AuditLog` (sign, chain, write, fdatasync) on the
file system of ``--dir``. The big log is built with the same signing and
framing code but without an fsync per entry (100,000 fsyncs would measure
the disk, not the verifier); a quarter of its entries carry a real
counterpart receipt, like package entries do. Prints medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from knexa_node.audit import AuditLog, Event, events, verify_bytes
from knexa_node.audit.entry import sign_entry, sign_header
from knexa_node.audit.framing import encode_frame
from knexa_node.audit.verify import LOG_MAGIC
from knexa_node.crypto import Signer, sha256
from knexa_node.wire import PackageHeader, Receipt, seal_envelope


def _package_events(teacher: Signer, student: Signer, count: int) -> list[Event]:
    """A realistic mix: per exchange, one package-sent with the student's signed receipt and three plain entries."""
    out: list[Event] = []
    for i in range(count // 4 + 1):
        pid = os.urandom(16)
        header = PackageHeader(proposal_id=pid, round=i // 8, teacher=teacher.peer_id, student=student.peer_id,
                               protocol="text", payload_hash=sha256(pid), payload_size=50_000 + i, chunks=4,
                               ephemeral_key=os.urandom(32), dp_epsilon=0.5, redactions=1)
        receipt = seal_envelope(student, Receipt(proposal_id=pid, round=header.round, teacher=teacher.peer_id,
                                                 student=student.peer_id, payload_hash=header.payload_hash,
                                                 payload_size=header.payload_size)).to_bytes()
        out += [Event(kind="proposal-accepted", round=header.round, proposal_id=pid, peer=student.peer_id,
                      protocol="text", metrics={"role": "teacher", "score": 0.7}),
                events.guardrail_redactions(header),
                events.dp_epsilon_spent(header, delta=1e-5, epsilon_total=0.5 * (i + 1)),
                events.package_sent(header, receipt)]
    return out[:count]


def bench_appends(directory: Path, count: int, repeats: int) -> None:
    teacher, student = Signer.generate(), Signer.generate()
    evs = _package_events(teacher, student, count)
    rates = []
    for r in range(repeats):
        path = directory / f"appends-{r}.log"
        with AuditLog.open(path, teacher) as log:
            start = time.perf_counter()
            for ev in evs:
                log.append(ev)
            rates.append(count / (time.perf_counter() - start))
        path.unlink()
    start = time.perf_counter()
    prev = bytes(32)
    for seq, ev in enumerate(evs):
        prev = sign_entry(teacher, seq, 1.0 + seq, prev, ev).hash
    cpu_rate = count / (time.perf_counter() - start)
    print(f"appends with fdatasync: median {statistics.median(rates):,.0f}/s over {repeats} runs of {count} "
          f"(runs: {', '.join(f'{x:,.0f}' for x in rates)}); sign+encode alone {cpu_rate:,.0f}/s")


def build_log(entries: int) -> tuple[bytes, Signer]:
    teacher, student = Signer.generate(), Signer.generate()
    header = sign_header(teacher, 1_800_000_000.0)
    parts, prev = [LOG_MAGIC, encode_frame(header.record)], header.hash
    for seq, ev in enumerate(_package_events(teacher, student, entries)):
        entry = sign_entry(teacher, seq, 1_800_000_001.0 + seq * 0.01, prev, ev)
        parts.append(encode_frame(entry.record))
        prev = entry.hash
    return b"".join(parts), teacher


def bench_verify(directory: Path, entries: int, repeats: int) -> None:
    start = time.perf_counter()
    data, owner = build_log(entries)
    print(f"built a {entries:,}-entry log: {len(data) / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s")
    full, structural = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        report = verify_bytes(data).report
        full.append(time.perf_counter() - start)
        assert report.ok and report.entries == entries, report
        start = time.perf_counter()
        assert verify_bytes(data, signatures=False).report.ok
        structural.append(time.perf_counter() - start)
    print(f"verify (chain, signatures, receipts): median {statistics.median(full):.2f} s = "
          f"{entries / statistics.median(full):,.0f} entries/s over {repeats} runs")
    print(f"structure only (chain, seq, time; what reopening checks): median {statistics.median(structural):.2f} s = "
          f"{entries / statistics.median(structural):,.0f} entries/s")
    path = directory / "big.log"
    path.write_bytes(data)
    start = time.perf_counter()
    with AuditLog.open(path, owner) as log:
        assert log.count == entries
    print(f"reopening the {entries:,}-entry log for appends: {time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="directory on the file system to measure (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, directory {tmp}")
        bench_appends(Path(tmp), args.appends, args.repeats)
        bench_verify(Path(tmp), args.entries, args.repeats)


if __name__ == "__main__":
    main()
