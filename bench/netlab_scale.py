"""Daemons in the network lab at a chosen size: time to ready and DHT discovery completeness.

    sudo .venv/bin/python bench/netlab_scale.py --nodes 20 [--spread] [--delay-ms 40 --jitter-ms 10 --loss 1]
    sudo .venv/bin/python bench/netlab_scale.py --nodes 20 --rounds 3

Prints one JSON object: seconds until every daemon printed its ready line,
seconds until every node was connected to every other member (or the share
reached when --timeout ran out), and the lab's degradations (no netem here).
With ``--rounds R`` the consortium then runs R rounds (tiny public sets, the
smallest model, so that the network is what is tested): per round its
profiles, pairs, feedback and how it closed, and the scenarios' verdict
(every audit log verifies and cross-checks, no crash, drops counted).
``--spread`` gives each member its own /24 (py-libp2p's Kademlia keeps 2
peers per /24). Gossip delivery is measured by bench/net_gossip.py, not here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

from netlab import LinkShape, unavailable_reason  # noqa: E402
from netlab_consortium import lab_settings, open_consortium, verdict  # noqa: E402


def completeness(consortium) -> float:  # type: ignore[no-untyped-def]
    peers = set(consortium.layout.node_peers)
    seen = 0
    for daemon in consortium.nodes:
        connected = {p["peer_id"] for p in daemon.control("peers")}
        seen += len(connected & (peers - {daemon.ready["peer_id"] if daemon.ready else ""}))
    n = len(peers)
    return seen / (n * (n - 1))


def run_rounds(consortium, rounds: int, timeout: float) -> dict:  # type: ignore[no-untyped-def]
    """Wait for ``rounds`` rounds, then the scenarios' verdict; what every round did."""
    started = time.monotonic()
    status = consortium.wait_rounds(rounds, timeout=timeout)
    found = verdict(consortium)
    keep = ("round", "profiles", "proposals", "feedback", "failed", "closed_by")
    return {"rounds_s": round(time.monotonic() - started, 1),
            "rounds": [{k: entry.get(k) for k in keep if k in entry} for entry in status.get("history", [])],
            "verdict_ok": found.ok, "problems": found.problems[:20], "audit_entries": sum(found.entries.values()),
            "nodes_audited": len(found.entries)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--spread", action="store_true")
    parser.add_argument("--delay-ms", type=float, default=40.0)
    parser.add_argument("--jitter-ms", type=float, default=10.0)
    parser.add_argument("--loss", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--rounds", type=int, default=0, help="rounds to run after discovery (0: none)")
    parser.add_argument("--round-timeout", type=float, default=1800.0, help="seconds for all the rounds")
    parser.add_argument("--workdir", default="", help="keep the daemons' homes and logs here (default: a temporary directory)")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(reason)
        return 2
    shape = LinkShape(args.delay_ms, args.jitter_ms, args.loss)
    # Without rounds to run, a deadline no one reaches keeps the consortium idle while discovery is timed.
    settings = (lab_settings(args.nodes, args.rounds, round_deadline_s=120.0, proposal_ttl_s=600.0) if args.rounds
                else lab_settings(args.nodes, 1, round_deadline_s=3600.0))
    with (contextlib.nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory()) as tmp:
        with open_consortium(Path(tmp), settings, shape=shape, spread=args.spread) as (lab, consortium):
            started = time.monotonic()
            share = completeness(consortium)
            while share < 1.0 and time.monotonic() - started < args.timeout:
                time.sleep(2.0)
                share = completeness(consortium)
            figures = {"nodes": args.nodes, "spread": args.spread, "ready_s": round(consortium.ready_s, 1),
                       "discovery_complete_after_s": round(time.monotonic() - started, 1) if share >= 1.0 else None,
                       "discovery_completeness": round(share, 3), "degraded": lab.degraded}
            if args.rounds:
                figures.update(run_rounds(consortium, args.rounds, args.round_timeout))
            print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
