"""kill -9 scenarios of issue 16: a teacher mid-package, a student mid-distillation, the CPM mid-round.

Each scenario waits for an observable point, read over the control socket
with a bounded poll (a learner's ``busy`` state, the CPM's round phase and
counters), SIGKILLs the daemon's process group, restarts it from the same
home (same identity, same port, same address) and checks:

- the killed round ends with a logged outcome (the CPM's ``closed_by``), the
  others are never stuck;
- the next round includes the restarted daemon (its profile reaches the CPM;
  for the CPM: every node's profile reaches the restarted CPM);
- nothing acknowledged is lost: every audit entry written before the kill is
  still there, byte for byte (same hashes); the CPM's acknowledged feedback is
  still in its state (``bandit_updates``, the journal's sequence); the DP
  budget spent is not reset (DP is on in the teacher scenario, where a
  teacher spends it);
- the common verdict (:func:`netlab_consortium.verdict`).

Each prints one ``RECOVERY {...}`` line (run pytest with ``-s``): seconds from
the kill to the daemon's ready line, to being connected to every member, to
its (or, for the CPM, everyone's) profile in the next round, and what was lost.

Small by default: 3 nodes and a CPM; ``KNEXA_NETLAB_FULL=1`` runs 6 nodes.
Links: 40 ms +- 10 ms and 1% loss (netem where the kernel has it, else the
lab's user-space delay line, as on the development VM).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

import netlab
from knexa_node.audit import log_path, verify_file
from knexa_node.daemon.unfinished import unreported_lessons
from knexa_node.privacy.budget import BUDGET_FILE
from netlab import LinkShape
from netlab_consortium import LabConsortium, LabDaemon, lab_settings, open_consortium, verdict

REASON = netlab.unavailable_reason()
FULL = os.environ.get("KNEXA_NETLAB_FULL") == "1"
NODES = 6 if FULL else 3
SHAPE = LinkShape(delay_ms=40, jitter_ms=10, loss_pct=1.0)
POLL_S = 0.05  # the observable points last a second or more on this machine; a poll this fine does not miss them
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=REASON or ""),
              pytest.mark.timeout(1200)]

T = TypeVar("T")


def poll(probe: Callable[[], T], timeout: float, what: str, interval: float = POLL_S) -> T:
    """``probe()``'s first truthy value, polled; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(interval)


def status_of(daemon: LabDaemon) -> dict[str, Any]:
    """The daemon's ``status`` ({} while it does not answer: starting, dead)."""
    try:
        return dict(daemon.control("status", timeout=5.0))
    except Exception:  # a daemon starting, busy or dead: no answer this time
        return {}


def busy(status: dict[str, Any]) -> str:
    """What a node's learner is doing, from its status."""
    return str(((status.get("learner") or {}).get("learner") or {}).get("busy", ""))


def node_round(status: dict[str, Any]) -> int:
    """The round a node works in, from its status."""
    return int((status.get("learner") or {}).get("round", 0))


def cpm_status(consortium: LabConsortium) -> dict[str, Any]:
    try:
        return dict(consortium.cpm.control("cpm-status", timeout=5.0))
    except Exception:  # the CPM is down or restarting
        return {}


def audit_hashes(daemon: LabDaemon) -> list[bytes]:
    return [entry.hash for entry in verify_file(log_path(daemon.home)).entries]


def epsilon_spent(daemon: LabDaemon) -> float:
    path = daemon.home.state_dir / BUDGET_FILE
    return float(json.loads(path.read_text())["total"]["epsilon"]) if path.exists() else 0.0


def peer_of(consortium: LabConsortium, daemon: LabDaemon) -> str:
    return consortium.layout.node_peers[consortium.nodes.index(daemon)]


def profiled(consortium: LabConsortium, peers: list[str], after_round: int) -> int | None:
    """The first round after ``after_round`` whose profiles (CPM events) came from all of ``peers``."""
    seen: dict[int, set[str]] = {}
    for event in consortium.cpm.events():
        if event.get("event") == "profile" and int(event.get("round", 0)) > after_round:
            seen.setdefault(int(event["round"]), set()).add(str(event.get("peer_id")))
    return next((r for r in sorted(seen) if set(peers) <= seen[r]), None)


def connected_to_all(consortium: LabConsortium, daemon: LabDaemon) -> bool:
    """``daemon`` lists every other member (CPM and nodes) as connected."""
    wanted = {consortium.layout.cpm_peer, *consortium.layout.node_peers} - {(daemon.ready or {}).get("peer_id")}
    try:
        return wanted <= {p["peer_id"] for p in daemon.control("peers", timeout=5.0)}
    except Exception:  # restarting
        return False


@dataclass
class Kill:
    """One kill -9 and what was there just before it."""

    victim: LabDaemon
    round: int  # the round the CPM had open
    audit: dict[str, list[bytes]]  # every node's audit entries (hashes) before the kill
    at: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


def kill_when(consortium: LabConsortium, pick: Callable[[], tuple[LabDaemon, int] | None], what: str) -> Kill:
    """Wait (bounded) until ``pick()`` names a daemon at the observable point (and its round), then kill -9 it at once."""
    victim, round_ = poll(pick, 400, what)
    at = time.monotonic()
    victim.kill9()
    assert victim.proc is not None and victim.proc.returncode == -9
    # Read after the kill: the victim's log is exactly what it wrote before it; the others' hold at least that.
    return Kill(victim, round_, {n.name: audit_hashes(n) for n in consortium.nodes}, at)


def restart(consortium: LabConsortium, kill: Kill) -> None:
    """Restart the killed daemon from its home (same identity); time its ready line and its links to everyone."""
    consortium.restart(kill.victim)
    kill.figures["ready_s"] = round(time.monotonic() - kill.at, 1)
    poll(lambda: connected_to_all(consortium, kill.victim), 180, f"{kill.victim.name} connected to every member")
    kill.figures["mesh_s"] = round(time.monotonic() - kill.at, 1)


def wait_included(consortium: LabConsortium, kill: Kill, peers: list[str]) -> None:
    """The next round takes the profiles of ``peers`` (the restarted node, or everyone for the CPM)."""
    included = poll(lambda: profiled(consortium, peers, kill.round), 400, f"profiles of {peers} after round {kill.round}")
    kill.figures["next_round_s"] = round(time.monotonic() - kill.at, 1)
    kill.figures["included_in_round"] = included


def nothing_acknowledged_lost(consortium: LabConsortium, kill: Kill) -> None:
    for node in consortium.nodes:
        before = kill.audit[node.name]
        assert audit_hashes(node)[:len(before)] == before, f"{node.name}: audit entries written before the kill changed"
    kill.figures["audit_entries_before_kill"] = {name: len(h) for name, h in kill.audit.items()}


def closed_by(consortium: LabConsortium, round_: int) -> str | None:
    """How the CPM logged the end of ``round_`` (its ``round-closed`` event), if it did."""
    for event in consortium.cpm.events():
        if event.get("event") == "round-closed" and event.get("round") == round_:
            return str(event.get("closed_by"))
    return None


def finish(consortium: LabConsortium, kill: Kill, scenario: str) -> dict[str, Any]:
    """The last round closed, the common verdict, and the figures printed."""
    poll(lambda: closed_by(consortium, consortium.settings.rounds), 600, f"round {consortium.settings.rounds} closed")
    nothing_acknowledged_lost(consortium, kill)
    found = verdict(consortium, killed=(kill.victim,))
    assert found.ok, str(found)
    figures = {**kill.figures, "kill_round": kill.round, "killed_round_closed_by": closed_by(consortium, kill.round),
               "rounds_closed_by": [closed_by(consortium, r) for r in range(1, consortium.settings.rounds + 1)],
               "explained_gaps": found.explained, "drops": found.drops}
    print(f"\nRECOVERY {json.dumps({'scenario': scenario, 'nodes': NODES, **figures}, default=str)}", flush=True)
    return figures


def test_kill9_of_a_teacher_mid_package(tmp_path: Path) -> None:
    # DP on: the teacher spends budget on every package. The victim is a teacher that already spent some
    # (so that the check means something), or any teacher once round 4 of 5 is open.
    settings = lab_settings(NODES, 5, dp=True, round_deadline_s=90.0, proposal_ttl_s=180.0)
    with open_consortium(tmp_path / "c", settings, shape=SHAPE) as (lab, consortium):
        spent: dict[str, float] = {}

        def building() -> tuple[LabDaemon, int] | None:
            late = int(cpm_status(consortium).get("last_round", 0)) >= 4
            for node in consortium.nodes:
                status = status_of(node)
                if busy(status) == "building package":
                    spent[node.name] = float((status.get("exchanges") or {}).get("epsilon_spent", 0.0))
                    if spent[node.name] > 0 or late:
                        return node, node_round(status)
            return None

        kill = kill_when(consortium, building, "a teacher building its package")
        epsilon_before = epsilon_spent(kill.victim)
        assert epsilon_before >= spent[kill.victim.name]  # the file holds at least what status said
        restart(consortium, kill)
        assert epsilon_spent(kill.victim) >= epsilon_before, "the DP budget spent was reset by the restart"
        assert closed_by(consortium, kill.round) or poll(lambda: closed_by(consortium, kill.round), 400,
                                                         f"round {kill.round} closed")
        wait_included(consortium, kill, [peer_of(consortium, kill.victim)])
        figures = finish(consortium, kill, "teacher mid-package")
        assert epsilon_spent(kill.victim) >= epsilon_before
        # The package that never came is counted: the CPM's failed exchanges, the student's refusal code.
        assert figures["drops"]["cpm"]["cpm_failed_exchanges"] >= 1, figures["drops"]
        print(f"epsilon before the kill {epsilon_before}, after {epsilon_spent(kill.victim)}")
    assert lab.leftovers() == []


def test_kill9_of_a_student_mid_distillation(tmp_path: Path) -> None:
    # The restarted student finds the lesson it never reported in its audit log and reports it as failed, so the
    # round closes on feedback long before the proposal's TTL (300 s here) would have closed it.
    # More distillation epochs than the default: a window the poll cannot miss on a loaded machine.
    settings = lab_settings(NODES, 3, round_deadline_s=90.0, proposal_ttl_s=300.0, distill_epochs=6)
    with open_consortium(tmp_path / "c", settings, shape=SHAPE) as (lab, consortium):

        def distilling() -> tuple[LabDaemon, int] | None:
            for node in consortium.nodes:
                status = status_of(node)
                if busy(status).startswith("distilling"):
                    return node, node_round(status)
            return None

        kill = kill_when(consortium, distilling, "a student distilling")
        # The kill was mid-lesson: the package is in the student's log, its feedback is not.
        assert unreported_lessons(verify_file(log_path(kill.victim.home)).entries), "the lesson ended before the kill"
        restart(consortium, kill)
        assert poll(lambda: closed_by(consortium, kill.round), 120, f"round {kill.round} closed") == "feedback"
        kill.figures["killed_round_closed_s"] = round(time.monotonic() - kill.at, 1)
        # The student logs its report once the CPM's Ack is back, which may be just after the CPM closed the round.
        reports = poll(lambda: [e for e in kill.victim.events() if e.get("event") == "unfinished-lesson-reported"], 60,
                       f"{kill.victim.name} logged its unfinished lesson's report")
        assert [e["round"] for e in reports] == [kill.round] and reports[0]["answer"] == "ok", reports
        wait_included(consortium, kill, [peer_of(consortium, kill.victim)])
        figures = finish(consortium, kill, "student mid-distillation")
        assert figures["drops"]["cpm"]["cpm_failed_exchanges"] >= 1, figures["drops"]
    assert lab.leftovers() == []


def test_kill9_of_the_cpm_mid_round(tmp_path: Path) -> None:
    # Killed in round 2 once it paired (round 1's feedback acknowledged); round 3 must take everyone's profile.
    settings = lab_settings(NODES, 3, round_deadline_s=90.0, proposal_ttl_s=90.0)
    with open_consortium(tmp_path / "c", settings, shape=SHAPE) as (lab, consortium):
        before: dict[str, Any] = {}

        def paired() -> tuple[LabDaemon, int] | None:
            status = cpm_status(consortium)
            if status.get("last_round", 0) >= 2 and (status.get("round") or {}).get("phase") == "paired":
                before.update(status)
                return consortium.cpm, int(status["last_round"])
            return None

        kill = kill_when(consortium, paired, "the CPM's round 2 paired")
        acknowledged = [f["seq"] for f in before["feedback"]]
        restart(consortium, kill)
        after = cpm_status(consortium)
        # Every feedback the CPM acknowledged (journaled, fsynced, then acked) is in its state after the restart.
        assert after["bandit_updates"] >= before["bandit_updates"] >= max(acknowledged, default=0), (before, after)
        assert poll(lambda: closed_by(consortium, kill.round), 60, f"round {kill.round} logged") == "interrupted"
        wait_included(consortium, kill, consortium.layout.node_peers)
        figures = finish(consortium, kill, "CPM mid-round")
        # What the kill cost: the students' rewards for the interrupted round, refused or unanswered (never acked),
        # each counted by its node (and, where it reached the restarted CPM, in its refusals).
        lost = sum(d.get("feedback_unacknowledged", 0) for d in figures["drops"].values())
        refused = sum(figures["drops"]["cpm"]["cpm_refusals"].get(c, 0) for c in ("no-round", "unknown-proposal"))
        print(f"CPM kill: {lost} rewards never acknowledged (nodes), {refused} feedback refused by the restarted CPM")
        figures_ack = {"acknowledged_before_kill": len(acknowledged), "bandit_updates_before": before["bandit_updates"],
                       "bandit_updates_after": cpm_status(consortium)["bandit_updates"]}
        print(f"CPM state: {figures_ack}")
        assert figures["rounds_closed_by"][kill.round - 1] == "interrupted"
    assert lab.leftovers() == []
