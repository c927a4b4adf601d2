"""Exchanges with an on-disk replay cache and DP budget: time per exchange, and how long the trio thread stalls.

    .venv/bin/python bench/exchange_session_fsync.py [--exchanges 40] [--payload-kib 256]

Runs ``serve_exchange`` against ``fetch_package`` over an in-memory stream
pair, one exchange after another, with the replay cache and the privacy
budget persisted (fsync) in a temporary directory. Meanwhile a ticker task
sleeps 1 ms at a time and records how late it wakes: the worst lateness is
how long something blocked the trio thread. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import trio
import trio.testing

from knexa_node.crypto import Signer
from knexa_node.exchange.driver import BuiltPackage, fetch_package, serve_exchange
from knexa_node.exchange.framed import TrioFramedStream
from knexa_node.exchange.membership import Membership
from knexa_node.exchange.policy import ExchangePolicy
from knexa_node.exchange.replay import ReplayCache
from knexa_node.privacy.budget import PrivacyBudget
from knexa_node.wire import PairingProposal, seal_envelope


async def run(exchanges: int, payload: bytes, state: Path) -> dict:
    cpm, teacher, student = Signer.generate(), Signer.generate(), Signer.generate()
    policy = ExchangePolicy(cpm=cpm.peer_id, membership=Membership.from_peer_ids([teacher.peer_id, student.peer_id]),
                            timeout_s=30.0, dp_enabled=True, dp_epsilon=0.01, dp_delta=1e-6)
    replay = ReplayCache.in_state_dir(state)
    budget = PrivacyBudget.in_state_dir(state, total=1e6, per_peer=1e6)

    async def build(_: PairingProposal, request: object) -> BuiltPackage:
        return BuiltPackage(payload, dp_epsilon=0.01)

    lateness: list[float] = []
    times: list[float] = []

    async def ticker(cancel: trio.CancelScope) -> None:
        with cancel:
            while True:
                before = time.perf_counter()
                await trio.sleep(0.001)
                lateness.append(time.perf_counter() - before - 0.001)

    async with trio.open_nursery() as nursery:
        cancel = trio.CancelScope()
        nursery.start_soon(ticker, cancel)
        for _ in range(exchanges):
            proposal = seal_envelope(cpm, PairingProposal(
                proposal_id=os.urandom(16), round=1, teacher=teacher.peer_id, student=student.peer_id, protocol="logits",
                context=(0.5, 0.5), score=1.0, expires=time.time() + 600)).to_bytes()
            left, right = trio.testing.memory_stream_pair()
            started = time.perf_counter()
            async with trio.open_nursery() as pair:
                pair.start_soon(lambda: serve_exchange(TrioFramedStream(left), remote=student.peer_id, signer=teacher,
                                                       policy=policy, replay=replay, build_package=build, current_round=1,
                                                       budget=budget))
                outcome = await fetch_package(TrioFramedStream(right), remote=teacher.peer_id, signer=student,
                                              policy=policy, proposal_envelope=proposal, current_round=1)
            times.append(time.perf_counter() - started)
            if not outcome.ok:
                raise SystemExit(f"exchange failed: {outcome.code} {outcome.reason}")
        cancel.cancel()
    return {
        "exchanges": exchanges, "payload_bytes": len(payload),
        "median_exchange_ms": round(1000 * statistics.median(times), 3),
        "max_trio_stall_ms": round(1000 * max(lateness), 3),
        "p99_trio_stall_ms": round(1000 * sorted(lateness)[int(0.99 * (len(lateness) - 1))], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=40)
    parser.add_argument("--payload-kib", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="knexa-fsync-bench-", dir=os.environ.get("KNEXA_BENCH_DIR")) as tmp:
        result = trio.run(run, args.exchanges, os.urandom(args.payload_kib * 1024), Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
