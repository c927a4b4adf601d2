"""Real knexa daemons (``knexa-cpm``, ``knexa-node``) in a network lab, one per namespace.

Homes are laid out by :func:`knexa_lab.plan.lay_out` (identities, models,
shards, members, CPM); this module only rewrites each config's network part
so that every daemon listens on and announces its namespace address (the
same port everywhere: each namespace has its own), bootstraps through
node-0's namespace address, and, when asked, uses tiny public data sets so
that rounds are quick and the network, not learning, is what is tested.

Daemons are :class:`knexa_lab.processes.DaemonProcess` run through
``ip netns exec``; the lab adopts each process, so closing the lab ends them.

:func:`verdict` is the common end of every scenario (audit logs verify and
cross-check, no daemon crashed, drops counted); it returns a :class:`Verdict`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from knexa_lab.orchestrate import CHILD_ENV, READY_TIMEOUT_S, _build_models
from knexa_lab.plan import DemoLayout, DemoSettings, lay_out
from knexa_lab.processes import DaemonProcess, DemoError, tool
from knexa_node.audit import AuditError, LogView, cross_check, log_path, receipt_heads, verify_file
from knexa_node.audit.entry import OK
from knexa_node.config import load_config, render_config
from knexa_node.fsutil import atomic_write_text
from knexa_node.identity import NodeHome
from knexa_node.learn.data import embedded_task, write_jsonl

from netlab import Lab, LinkShape

PORT = 4001
CPM = "cpm"
# Cross-check mismatches a kill -9 explains: the killed side never wrote its entry (it died first).
KILL_EXPLAINED = ("missing", "missing-transfer")
# The smallest embedded model (all four are the same size; gpt2's tokenizer is the smaller one).
SMALLEST_MODEL = "embedded:gpt2-tiny"


def node_member(index: int) -> str:
    return f"n{index}"


@dataclass(frozen=True)
class TinyData:
    """Public sets cut down to a few problems per category (0: keep the embedded size)."""

    transfer_per_category: int = 1
    dev_per_category: int = 1
    test_per_category: int = 1


def lab_settings(nodes: int, rounds: int, **overrides: Any) -> DemoSettings:
    """Demo settings for a network test: one small model, tiny shards, no warm-up, short deadlines."""
    base = dict(nodes=nodes, rounds=rounds, models=(SMALLEST_MODEL,), shard_size=12, warmup_epochs=0,
                epochs_per_round=1, batch_size=8, round_deadline_s=60.0, proposal_ttl_s=120.0, consortium="netlab")
    return DemoSettings(**{**base, **overrides})


class LabDaemon(DaemonProcess):
    """A daemon inside one lab member's namespace."""

    def __init__(self, lab: Lab, member: str, name: str, home: NodeHome, command: str, env: dict[str, str]) -> None:
        super().__init__(name, home, command, env=env)
        self.lab, self.member = lab, member
        self.argv = lab.exec_argv(member, self.argv)
        self.starts = 0

    def start(self) -> None:
        super().start()
        assert self.proc is not None
        self.lab.adopt(self.proc)
        self.starts += 1

    def kill9(self) -> None:
        """SIGKILL the daemon's process group (no chance to clean up), and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def events(self) -> Iterator[dict[str, Any]]:
        """The structured events of every run of this daemon so far (its JSON log lines)."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def crashes(self) -> list[str]:
        """Signs that the daemon crashed rather than stopped: tracebacks in its log."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.startswith("Traceback")]


class LabConsortium:
    """A CPM and N learning nodes in a lab. Build with :func:`open_consortium` (a context manager)."""

    def __init__(self, lab: Lab, workdir: Path, settings: DemoSettings, *, tiny: TinyData | None = TinyData()) -> None:
        self.lab, self.workdir, self.settings = lab, workdir, settings
        self.layout: DemoLayout = lay_out(workdir, settings)
        self.tiny = tiny
        env = {**CHILD_ENV, "KNEXA_MODEL_CACHE": os.environ.get("KNEXA_MODEL_CACHE", "")}
        self.env = {k: v for k, v in env.items() if v}
        self.cpm = LabDaemon(lab, CPM, "cpm", self.layout.cpm, "knexa-cpm", self.env)
        self.nodes = [LabDaemon(lab, node_member(i), f"node-{i}", home, "knexa-node", self.env)
                      for i, home in enumerate(self.layout.nodes)]
        self._data_files = self._write_tiny_data() if tiny else {}
        for daemon in self.everyone:
            self.write_network_config(daemon)

    @property
    def everyone(self) -> list[LabDaemon]:
        return [self.cpm, *self.nodes]

    def multiaddr(self, member: str) -> str:
        return f"/ip4/{self.lab.address(member)}/tcp/{PORT}"

    def bootstrap(self) -> str:
        return f"{self.multiaddr(node_member(0))}/p2p/{self.layout.node_peers[0]}"

    def _write_tiny_data(self) -> dict[str, str]:
        assert self.tiny is not None
        task = embedded_task(self.settings.seed, transfer_per_category=self.tiny.transfer_per_category,
                             dev_per_category=self.tiny.dev_per_category, test_per_category=self.tiny.test_per_category)
        folder = self.workdir / "public-data"
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for name in ("transfer", "dev", "test"):
            path = folder / f"{name}.jsonl"
            write_jsonl(path, getattr(task, name))
            files[name] = str(path)
        return files

    def write_network_config(self, daemon: LabDaemon) -> None:
        """Listen on and announce the member's current namespace address; bootstrap through node-0."""
        config = load_config(daemon.home.config_file)
        config.node.listen = [self.multiaddr(daemon.member)]
        config.node.announce = [self.multiaddr(daemon.member)]
        config.node.bootstrap = [] if daemon is self.nodes[0] else [self.bootstrap()]
        if daemon is not self.cpm:
            for name, path in self._data_files.items():
                setattr(config.data, name, path)
        atomic_write_text(daemon.home.config_file, render_config(config), mode=0o600)

    def start(self, *, timeout: float = READY_TIMEOUT_S) -> float:
        """Build the model once, start node-0, then everyone else; returns seconds until all were ready."""
        _build_models(self.settings)
        started = time.monotonic()
        self.nodes[0].start()
        self.nodes[0].wait_ready(timeout)
        for daemon in [*self.nodes[1:], self.cpm]:
            daemon.start()
        for daemon in [*self.nodes[1:], self.cpm]:
            daemon.wait_ready(timeout)
        return time.monotonic() - started

    def restart(self, daemon: LabDaemon, *, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        if daemon.alive():
            daemon.stop()
        daemon.start()
        return daemon.wait_ready(timeout)

    def move(self, daemon: LabDaemon, *, timeout: float = READY_TIMEOUT_S) -> str:
        """Stop ``daemon``, give its namespace a new address, restart it there (same identity); returns the address."""
        daemon.stop()
        address = self.lab.readdress(daemon.member)
        self.write_network_config(daemon)
        daemon.start()
        daemon.wait_ready(timeout)
        return address

    def wait_rounds(self, rounds: int, *, timeout: float, idle: bool = True) -> dict[str, Any]:
        """Wait until the CPM closed ``rounds`` rounds (and the live nodes are back to waiting); bounded."""
        deadline = time.monotonic() + timeout
        while True:
            for daemon in self.everyone:
                if daemon.proc is not None and not daemon.alive() and daemon.proc.returncode not in (0, -9):
                    raise DemoError(f"{daemon.name} died with {daemon.proc.returncode}:\n{daemon.log_tail()}")
            status = self.cpm.control("cpm-status")
            if status.get("rounds_closed", 0) >= rounds:
                if not idle or all(self.phase(n) in ("waiting", None) for n in self.nodes if n.alive()):
                    return status
            if time.monotonic() > deadline:
                raise DemoError(f"{rounds} rounds not closed in {timeout:.0f} s; CPM status: "
                                f"{json.dumps(status.get('history', []))[:1500]}")
            time.sleep(1.0)

    def phase(self, daemon: LabDaemon) -> str | None:
        try:
            return (daemon.control("status", timeout=5.0).get("learner") or {}).get("phase")
        except DemoError:
            return None

    def audit(self) -> dict[str, dict[str, Any]]:
        """``knexa-node audit verify --home H --json`` for every node: name -> its verdict."""
        verdicts = {}
        for daemon in self.nodes:
            done = subprocess.run([tool("knexa-node"), "audit", "verify", "--home", str(daemon.home.root), "--json"],
                                  capture_output=True, text=True, timeout=120, env={**os.environ, **self.env})
            try:
                verdict = json.loads(done.stdout)
            except ValueError:
                verdict = {"ok": False, "problem": (done.stdout + done.stderr)[-500:]}
            verdict["returncode"] = done.returncode
            verdicts[daemon.name] = verdict
        return verdicts


class open_consortium:
    """``with open_consortium(workdir, settings, shape=...) as (lab, consortium):`` builds, starts, tears down."""

    def __init__(self, workdir: Path, settings: DemoSettings, *, shape: LinkShape | None = None, spread: bool = False,
                 tiny: TinyData | None = TinyData(), start: bool = True) -> None:
        members = [CPM, *(node_member(i) for i in range(settings.nodes))]
        self.lab = Lab(members, shape=shape, spread=spread)
        self.workdir, self.settings, self.tiny, self.start = workdir, settings, tiny, start

    def __enter__(self) -> tuple[Lab, LabConsortium]:
        self.lab.__enter__()
        try:
            consortium = LabConsortium(self.lab, self.workdir, self.settings, tiny=self.tiny)
            if self.start:
                consortium.ready_s = consortium.start()  # type: ignore[attr-defined]
        except BaseException:
            self.lab.close()
            raise
        return self.lab, consortium

    def __exit__(self, *exc: object) -> None:
        self.lab.close()


@dataclass
class Verdict:
    """What :func:`verdict` found after a scenario. ``problems`` empty: the scenario's common checks pass."""

    problems: list[str] = field(default_factory=list)
    explained: list[str] = field(default_factory=list)  # cross-check gaps that a kill -9 of that side accounts for
    entries: dict[str, int] = field(default_factory=dict)  # daemon name -> audit entries that verified
    drops: dict[str, dict[str, Any]] = field(default_factory=dict)  # daemon name -> what it counted as dropped, and why

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        return json.dumps({"problems": self.problems, "explained": self.explained, "entries": self.entries,
                           "drops": self.drops}, indent=1, default=str)[:6000]


def verdict(consortium: LabConsortium, killed: tuple[LabDaemon, ...] = ()) -> Verdict:
    """The checks every scenario ends with (issue 16), on the consortium as it is now.

    - every node's audit log verifies, also against the log heads its counterparts hold in signed receipts
      (a log cut short after a kill -9 fails this);
    - every pair of logs cross-checks; a ``missing``/``missing-transfer`` gap is only *explained* (not a
      problem) when one side of that exchange is in ``killed`` and that side is the one without the entry,
      or (``missing``) when the side that logged it logged only failures (refused, timed out: the other side
      may never have heard of it);
    - every daemon is running, or ended with status 0; one in ``killed`` may have died by SIGKILL (-9)
      before its restart; no daemon's log holds a traceback;
    - every running daemon answers ``status``, and its counters of drops and refusals are collected in
      :attr:`Verdict.drops` (network drops by reason, exchange outcome codes, rewards the CPM never
      acknowledged, the CPM's refusals).
    """
    found = Verdict()
    killed_names = {d.name for d in killed}
    for daemon in consortium.everyone:
        code = daemon.proc.returncode if daemon.proc is not None and not daemon.alive() else None
        if code not in (None, 0) and not (code == -signal.SIGKILL and daemon.name in killed_names):
            found.problems.append(f"{daemon.name} exited with status {code}: {daemon.log_tail(5)}")
        if daemon.crashes():
            found.problems.append(f"{daemon.name} logged a traceback: {daemon.log_tail(5)}")
        if daemon.alive():
            found.drops[daemon.name] = _drops(daemon)
    problems, explained = cross_check_all(_audit_views(consortium, found), killed_names)
    found.problems += problems
    found.explained += explained
    return found


def cross_check_all(views: dict[str, LogView], killed: set[str] | frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """Cross-check every pair of logs (name -> view); returns (problems, gaps explained by a kill or a failure)."""
    problems: list[str] = []
    explained: list[str] = []
    names = sorted(views)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            try:
                result = cross_check(views[a], views[b])
            except ValueError as exc:
                problems.append(f"cross-check {a} / {b}: {exc}")
                continue
            for mismatch in result.mismatches:
                line = f"cross-check {a} / {b}: {mismatch.kind}: {mismatch.detail} (proposal {mismatch.proposal_id.hex()})"
                # The side without an entry (its seq is None) is the one that may have died before writing it.
                silent = b if mismatch.b_seq is None else a if mismatch.a_seq is None else None
                ok = mismatch.kind in KILL_EXPLAINED and silent in killed
                if mismatch.kind == "missing" and silent is not None:
                    # Only failed attempts on the side that logged (a dial refused, a stream cut by a partition):
                    # the other side may never have heard of the exchange.
                    ok = ok or _only_failures(views[a if silent == b else b], mismatch.proposal_id)
                (explained if ok else problems).append(line)
    return problems, explained


def _only_failures(view: LogView, proposal_id: bytes) -> bool:
    outcomes = {e.event.outcome for e in view.entries if e.event.proposal_id == proposal_id}
    return bool(outcomes) and OK not in outcomes


def _audit_views(consortium: LabConsortium, found: Verdict) -> dict[str, LogView]:
    """Every node's log verified on its own, then again against the heads its counterparts pinned in receipts."""
    views: dict[str, LogView] = {}
    for daemon in consortium.nodes:
        try:
            views[daemon.name] = verify_file(log_path(daemon.home))
        except AuditError as exc:
            found.problems.append(f"{daemon.name}: audit log unreadable: {exc}")
    for name, view in views.items():
        pinned = [(envelope, head) for other, v in views.items() if other != name
                  for _, envelope, head in receipt_heads(v.entries)]
        daemon = next(d for d in consortium.nodes if d.name == name)
        report = verify_file(log_path(daemon.home), checkpoints=pinned).report
        found.entries[name] = report.entries
        if not report.ok:
            found.problems.append(f"{name}: audit log does not verify: {report.problem}")
    return views


def _drops(daemon: LabDaemon) -> dict[str, Any]:
    """What one daemon counted as dropped or refused, and why (from ``status``)."""
    try:
        status = daemon.control("status", timeout=10.0)
    except DemoError as exc:
        return {"status-error": str(exc)[:200]}
    counters = status.get("counters") or {}
    out: dict[str, Any] = {"net_dropped": counters.get("dropped", {}), "stream_errors": counters.get("stream_errors", {})}
    exchanges = status.get("exchanges") or {}
    if exchanges:
        out["exchange_codes"] = exchanges.get("codes", {})
        out["exchange_counts"] = exchanges.get("counts", {})
        try:  # rewards this student sent that the CPM never acknowledged (refused, or no answer)
            rewards = daemon.control("metrics", timeout=10.0).get("rewards", [])
            out["feedback_unacknowledged"] = sum(1 for r in rewards if not r.get("accepted"))
        except DemoError as exc:
            out["feedback_unacknowledged"] = f"metrics-error: {str(exc)[:100]}"
    cpm = status.get("cpm") or {}
    if cpm:
        out["cpm_refusals"] = cpm.get("refusals", {})
        out["cpm_failed_exchanges"] = (cpm.get("counters") or {}).get("failed_exchanges", 0)
        out["cpm_closed_by"] = [h.get("closed_by") for h in cpm.get("history", [])]
    return out
