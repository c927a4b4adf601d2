"""Gossip propagation from a CPM to N nodes on loopback: delivery ratio, median and p99 latency.

    .venv/bin/python bench/net_gossip.py procs 5 [--messages 100] [--rate 20]    # one process per host
    .venv/bin/python bench/net_gossip.py inproc 20 [--messages 40] [--rate 5]    # all hosts on one trio loop
    .venv/bin/python bench/net_gossip.py procs 6 --messages 100 --rate 5 --profile-child DIR  # + cProfile of one node
    sudo .venv/bin/python bench/net_gossip.py procs 20 --lab-delay-ms 40 --lab-jitter-ms 10   # in a network lab

Topology as in a deployment: a bootstrap hub, the CPM and N - 1 more nodes
that know only the hub and find each other through the DHT; the N receivers
are the hub and those nodes. Each message is a signed RoundOpen padded to
~256 bytes, published at ``rate`` per second. Latency = receipt time - the
envelope's signed timestamp (one machine, one clock). A message not received
within ``--grace`` seconds after the last publication counts as lost, so the
run time is bounded. Prints the load average next to the figures: on a
shared 2-core machine they depend on it.

``procs`` hosts run with the daemon's network parameters (``NetParams``
defaults, on loopback); ``--params test`` gives them the tests' quick
discovery instead (figures before 2026-11-29 session 11 used those).

``procs`` also measures each node's CPU over ``--idle`` seconds of quiet
before publishing (the background: DHT lookups, heartbeats) and prints the
per-message CPU net of it, the copies of each message a receiver got (mesh
duplicates), how many our envelope validator checked, and the copies sent and
GossipSub control messages (IHAVE, IWANT, GRAFT, PRUNE) per message, to tell
mesh forwards from gossip repairs; ``--degree`` tries other mesh degrees;
``--profile-child DIR`` writes CPU-time cProfiles of one plain node (quiet
and publication windows) and prints its top functions (cProfile multiplies
that node's CPU by ~3-4, so it is left out of the means).

``--lab-delay-ms`` (and ``--lab-jitter-ms``, ``--lab-loss``) runs each host
of ``procs`` in its own namespace of a network lab (integration/netlab.py)
whose links have that shape (netem, or the lab's user-space delay line where
the kernel has none), each host at its own address. Each member's link
delays what it sends, so a message straight from the CPM takes one delay to
arrive and a forwarded copy two: the figures include the propagation.

``procs`` is the honest measure of one node's path. ``inproc`` puts N + 1
hosts on one Python thread: every host's per-message CPU (py-libp2p spends
~2-3 ms per gossip RPC) adds up on one core, so it measures that core's
saturation more than the network; keep ``rate`` low for N = 20.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from knexa_node.crypto import Signer
from knexa_node.net.network import Network
from knexa_node.net.params import NetParams
from knexa_node.net.protocols import ROUNDS, topic
from knexa_node.testing import LOOPBACK, loopback_params, swarm, wait_until
from knexa_node.wire import RoundOpen, seal_envelope

T = topic("test", ROUNDS)
PAD = "x" * 160


@dataclass
class Tally:
    receivers: int
    messages: int
    latencies: list[float] = field(default_factory=list)
    by_round: dict[int, list[float]] = field(default_factory=dict)

    def add(self, round_: int, latency: float) -> None:
        self.latencies.append(latency)
        self.by_round.setdefault(round_, []).append(latency)

    def trend(self) -> str:
        """Median latency of the first and last tenth of the messages: a rise means a queue builds up."""
        tenth = max(1, self.messages // 10)
        first = [x for r in range(tenth) for x in self.by_round.get(r, [])]
        last = [x for r in range(self.messages - tenth, self.messages) for x in self.by_round.get(r, [])]
        if not first or not last:
            return ""
        return f", first/last tenth median {statistics.median(first) * 1000:.0f}/{statistics.median(last) * 1000:.0f} ms"

    def complete(self) -> bool:
        return len(self.latencies) >= self.receivers * self.messages

    def line(self, label: str) -> str:
        lat = sorted(self.latencies)
        delivered = len(lat) / (self.receivers * self.messages)
        if not lat:
            return f"{label}: delivered 0%"
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        return (f"{label}: delivered {delivered:.1%} of {self.receivers}x{self.messages}, "
                f"median {statistics.median(lat) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms" + self.trend())


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def publish_all(cpm: Network, messages: int, rate: float) -> None:
    start = trio.current_time()
    for i in range(messages):
        await cpm.publish(T, seal_envelope(cpm.signer, RoundOpen(round=i, deadline=0.0, policy=PAD)).to_bytes())
        # A fixed schedule: a slow publish does not lower the offered rate.
        await trio.sleep_until(start + (i + 1) / rate)


def meshed(net: Network) -> bool:
    return net.gossip.topics().get(T, {}).get("mesh", 0) > 0


# --- all hosts in this process ---------------------------------------------------------------------


async def inproc(n: int, messages: int, rate: float, grace: float, settle: float) -> None:
    t0 = time.monotonic()
    async with swarm(n + 1, timeout=120) as nets:  # hub, CPM, n - 1 nodes
        cpm, receivers = nets[1], [nets[0], *nets[2:]]
        tally = Tally(len(receivers), messages)
        for net in receivers:
            async def on(envelope, message, origin):
                tally.add(message.round, time.time() - envelope.timestamp)
            net.subscribe(T, on)
        cpm.subscribe(T, on)
        everyone = len(nets) - 1
        with trio.move_on_after(120):
            await wait_until(lambda: all(len(net.connected_peers()) == everyone and meshed(net) for net in nets), 120)
        connected = sum(len(net.connected_peers()) == everyone for net in nets)
        await trio.sleep(settle)  # discovery and mesh churn of the start-up settle
        print(f"in-process N={n}: {len(nets)} hosts up in {time.monotonic() - t0:.1f} s, fully connected {connected}/{len(nets)}, "
              f"meshes {sorted(net.gossip.topics()[T]['mesh'] for net in nets)}")
        cpu0, wall0 = cpu_s(), time.monotonic()
        await publish_all(cpm, messages, rate)
        with trio.move_on_after(grace):
            await wait_until(tally.complete, grace)
        cpu = cpu_s() - cpu0
        print(tally.line(f"  {messages} msgs at {rate:g}/s") +
              f"; {cpu * 1000 / messages:.0f} ms CPU per message for all hosts, one core {100 * cpu / (time.monotonic() - wall0):.0f}% busy; {load()}")


# --- one process per host -----------------------------------------------------------------------------


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def node_params(kind: str, bootstrap: str) -> NetParams:
    """``daemon``: what ``knexa-node start`` runs with (NetParams' defaults), on loopback; ``test``: the
    tests' quick discovery (knexa_node.testing.loopback_params: lookups from every 2 s instead of 10 s,
    which figures before 2026-11-29 used)."""
    bootstraps = (bootstrap,) if bootstrap else ()
    if kind == "test":
        return loopback_params(bootstrap=bootstraps)
    return NetParams(listen=(LOOPBACK,), consortium="test", bootstrap=bootstraps)


async def child(role: str, bootstrap: str, peers: int, profile_to: str, degree: tuple[int, int, int] | None,
                host: str = "", params_kind: str = "daemon") -> None:
    """A host of the ``procs`` bench, driven over stdin/stdout (JSON lines).

    With ``profile_to`` the child runs cProfile (CPU time, not wall time: the
    machine is shared) between its second and third ``report`` (the
    publication window) and writes the stats there, and those of the quiet
    window before (first to second ``report``) to ``*.idle.pstats``.
    """
    params = node_params(params_kind, bootstrap)
    if host:  # a lab namespace: listen on its own address
        params = replace(params, listen=(f"/ip4/{host}/tcp/0",))
    if degree is not None:
        d, d_lo, d_hi = degree
        params = replace(params, gossip=replace(params.gossip, degree=d, degree_low=d_lo, degree_high=d_hi))
    net = Network(Signer.generate(), params)
    profiler = cProfile.Profile(time.process_time) if profile_to else None
    reports = 0

    async def on(envelope, message, origin):
        emit(event="got", round=message.round, latency=time.time() - envelope.timestamp)

    net.subscribe(T, on)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.serve)
        emit(event="up", addr=net.dialable_addrs()[0], peer_id=net.peer_id)
        with trio.move_on_after(180):
            await wait_until(lambda: len(net.connected_peers()) >= peers and meshed(net), 180)
        emit(event="ready", peers=len(net.connected_peers()), mesh=net.gossip.topics()[T]["mesh"])
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        while True:
            data = await stdin.receive_some()
            if not data:
                break
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = json.loads(line)
                if command["do"] == "publish":
                    cpu0 = cpu_s()
                    await publish_all(net, command["messages"], command["rate"])
                    emit(event="published", cpu_s=cpu_s() - cpu0)
                elif command["do"] == "report":
                    reports += 1
                    if profiler is not None and reports in (2, 3):  # the quiet window, the publication window
                        profiler.disable()
                        profiler.dump_stats(profile_to.replace(".pstats", ".idle.pstats") if reports == 2 else profile_to)
                    emit(event="report", cpu_s=cpu_s(), mesh=net.gossip.topics()[T]["mesh"],
                         copies=net.stats.gossip_copies_in, validated=net.stats.gossip_validations,
                         copies_out=net.stats.gossip_copies_out, control=dict(net.stats.gossip_control))
                    if profiler is not None and reports in (1, 2):
                        profiler = cProfile.Profile(time.process_time)
                        profiler.enable()
        nursery.cancel_scope.cancel()


class Child:
    def __init__(self, role: str, bootstrap: str, peers: int, profile_to: str = "", degree: str = "",
                 lab: Any = None, member: str = "", params_kind: str = "daemon") -> None:
        """``lab``, ``member``: run inside that lab member's namespace, at its address."""
        self.role = role
        self.profiled = bool(profile_to)
        argv = [sys.executable, str(Path(__file__).resolve()), "_child", role, bootstrap or "-", str(peers),
                profile_to or "-", degree or "-", lab.address(member) if lab is not None else "-", params_kind]
        self.proc = subprocess.Popen(
            lab.exec_argv(member, argv) if lab is not None else argv,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )

    def read(self) -> dict:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"{self.role} process ended (exit {self.proc.poll()})")
        return json.loads(line)

    def send(self, **command: object) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]


def in_lab(n: int, shape: tuple[float, float, float]) -> contextlib.AbstractContextManager[Any]:
    """A network lab of ``n + 1`` members shaped (delay ms, jitter ms, loss %), or nothing when all are 0."""
    if not any(shape):
        return contextlib.nullcontext(None)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
    import netlab  # noqa: PLC0415 - a test tool, only in this mode

    reason = netlab.unavailable_reason()
    if reason:
        raise SystemExit(reason)
    delay, jitter, loss = shape
    return netlab.Lab([f"h{i}" for i in range(n + 1)], shape=netlab.LinkShape(delay, jitter, loss))


def procs(n: int, messages: int, rate: float, grace: float, settle: float, idle: float, profile_dir: str = "",
          degree: str = "", lab_shape: tuple[float, float, float] = (0.0, 0.0, 0.0), params_kind: str = "daemon") -> None:
    with in_lab(n, lab_shape) as lab:
        if lab is not None:
            print(f"lab: {n + 1} namespaces, links delay {lab_shape[0]:g} ms +- {lab_shape[1]:g} ms, loss {lab_shape[2]:g}%; "
                  f"{'; '.join(lab.degraded) or 'netem'}", flush=True)
        _procs(n, messages, rate, grace, settle, idle, profile_dir, degree, lab, params_kind)


def _procs(n: int, messages: int, rate: float, grace: float, settle: float, idle: float, profile_dir: str,
           degree: str, lab: Any, params_kind: str) -> None:
    children: list[Child] = []
    t0 = time.monotonic()
    profile_to = ""
    if profile_dir and n > 2:  # one plain node is profiled, another measured
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        profile_to = str(Path(profile_dir) / f"node-n{n}-{messages}x{rate:g}.pstats")
    try:
        hub = Child("hub", "", n, degree=degree, lab=lab, member="h0", params_kind=params_kind)
        children.append(hub)
        addr = hub.read()["addr"]
        # The first plain node (not hub, not CPM) is the profiled receiver.
        children += [Child("cpm", addr, n, degree=degree, lab=lab, member="h1", params_kind=params_kind)] + [
            Child("node", addr, n, profile_to if i == 0 else "", degree, lab=lab, member=f"h{i + 2}",
                  params_kind=params_kind) for i in range(n - 1)]
        for c in children[1:]:
            c.read()  # up
        ready = [c.read() for c in children]  # everyone sees the other n hosts (or gave up after 180 s)
        time.sleep(settle)
        print(f"processes N={n}, {params_kind} parameters{f' (gossip D,D_lo,D_hi = {degree})' if degree else ''}: {n + 1} hosts ready in {time.monotonic() - t0:.1f} s, peers {[r['peers'] for r in ready]}")
        cpm, receivers = children[1], [c for c in children if c.role != "cpm"]
        tally = Tally(len(receivers), messages)
        cpu = trio.run(_collect, cpm, children, tally, messages, rate, grace, idle)
        print(tally.line(f"  {messages} msgs at {rate:g}/s") + f"; {load()}")
        print(f"  CPU per message: CPM {cpu['cpm'] * 1000 / messages:.1f} ms, hub {cpu['hub'] * 1000 / messages:.1f} ms, "
              f"other nodes {statistics.mean(cpu['node']) * 1000 / messages:.1f} ms each (load-independent; one core = 1000 ms/s"
              f"{'; the profiled node left out' if profile_to else ''})")
        net = [s - b for s, b in zip(cpu["node"], cpu["node_background"])]
        print(f"  other nodes idle: {statistics.mean(cpu['idle_ms_per_s']):.1f} ms CPU per s (measured over {idle:g} s before); "
              f"CPU per message net of that background: {statistics.mean(net) * 1000 / messages:.1f} ms each")
        copies, validated = cpu["copies"], cpu["validated"]
        print(f"  copies of each message received per receiver: {statistics.mean(copies) / messages:.2f} "
              f"(min {min(copies) / messages:.2f}, max {max(copies) / messages:.2f}); "
              f"envelope validations per message: {statistics.mean(validated) / messages:.2f}")
        per_receiver = {k: v / len(receivers) / messages for k, v in sorted(cpu["traffic"]["receivers"].items())}
        print("  per message, mean over receivers: " + ", ".join(f"{k} {v:.2f}" for k, v in per_receiver.items()) +
              "; the CPM: " + ", ".join(f"{k} {v / messages:.2f}" for k, v in sorted(cpu["traffic"]["cpm"].items())))
        if profile_to:
            print_profile(profile_to, messages)
    finally:
        for c in children:
            c.proc.kill()
            c.proc.wait()


async def _collect(cpm: Child, children: list[Child], tally: Tally, messages: int, rate: float, grace: float,
                   idle: float) -> dict:
    """Measure ``idle`` seconds of quiet, then run the publication; return the CPU seconds each role spent
    in both windows (the quiet one is the background: DHT refreshes, heartbeats)."""
    reports: dict[Child, list[float]] = {c: [] for c in children}
    counts: dict[Child, list[tuple[int, int]]] = {c: [] for c in children}
    traffic: dict[Child, list[Counter[str]]] = {c: [] for c in children}
    published = trio.Event()

    async def pump(c: Child) -> None:
        while True:
            event = await trio.to_thread.run_sync(c.read, abandon_on_cancel=True)
            if event["event"] == "got":
                tally.add(event["round"], event["latency"])
            elif event["event"] == "report":
                reports[c].append(event["cpu_s"])
                counts[c].append((event["copies"], event["validated"]))
                traffic[c].append(Counter({**event["control"], "copies out": event["copies_out"]}))
            elif event["event"] == "published":
                published.set()

    async with trio.open_nursery() as nursery:
        for c in children:
            nursery.start_soon(pump, c)
        async def report_all(k: int) -> float:
            for c in children:
                c.send(do="report")
            await wait_until(lambda: all(len(r) == k for r in reports.values()), 30)
            return trio.current_time()

        t0 = await report_all(1)
        await trio.sleep(idle)
        t1 = await report_all(2)
        cpm.send(do="publish", messages=messages, rate=rate)
        await published.wait()
        with trio.move_on_after(grace):
            await wait_until(tally.complete, grace)
        t2 = await report_all(3)
        nursery.cancel_scope.cancel()
    spent = {c: r[2] - r[1] for c, r in reports.items()}
    # Background CPU scaled to the publication window's length.
    background = {c: (r[1] - r[0]) * (t2 - t1) / (t1 - t0) for c, r in reports.items()}
    receivers = [c for c in children if c is not cpm]
    nodes = [c for c in children if c.role == "node" and not c.profiled]  # cProfile's own cost is not the node's
    return {"cpm": spent[cpm], "hub": spent[children[0]], "node": [spent[c] for c in nodes],
            "node_background": [background[c] for c in nodes], "idle_ms_per_s": [(reports[c][1] - reports[c][0]) * 1000 / (t1 - t0) for c in nodes],
            "copies": [counts[c][2][0] - counts[c][1][0] for c in receivers],
            "validated": [counts[c][2][1] - counts[c][1][1] for c in receivers],
            "traffic": {"cpm": traffic[cpm][2] - traffic[cpm][1],
                        "receivers": sum((traffic[c][2] - traffic[c][1] for c in receivers), Counter())}}


def print_profile(path: str, messages: int, top: int = 30) -> None:
    """The profiled node's top functions by cumulative and by own time, in ms per message."""
    for key, title in (("cumulative", "cumulative"), ("tottime", "own")):
        out = io.StringIO()
        stats = pstats.Stats(path, stream=out)
        total = stats.total_tt  # type: ignore[attr-defined]
        stats.sort_stats(key).print_stats(top)
        print(f"  profile of one node by {title} time ({path}; {total * 1000 / messages:.1f} ms per message profiled in all; "
              f"divide the times by {messages} for ms per message):")
        lines = out.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
        print("\n".join("    " + line for line in lines[start:] if line.strip()))


def parse_degree(text: str) -> tuple[int, int, int]:
    try:
        d, d_lo, d_hi = (int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"--degree: expected D,D_LO,D_HI (three integers), got {text!r}") from None
    if not 0 < d_lo <= d <= d_hi:
        raise SystemExit(f"--degree: need 0 < D_LO <= D <= D_HI, got {text!r}")
    return d, d_lo, d_hi


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _, _, role, bootstrap, peers, profile_to, degree, host, params_kind = sys.argv
        trio.run(child, role, "" if bootstrap == "-" else bootstrap, int(peers), "" if profile_to == "-" else profile_to,
                 None if degree == "-" else parse_degree(degree), "" if host == "-" else host, params_kind)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["procs", "inproc"])
    parser.add_argument("n", nargs="+", type=int)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--grace", type=float, default=10.0, help="seconds after the last publication before a message counts as lost")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait once everyone is connected")
    parser.add_argument("--degree", default="", metavar="D,D_LO,D_HI",
                        help="procs: gossip mesh degrees instead of GossipParams' defaults (to compare)")
    parser.add_argument("--idle", type=float, default=10.0, help="procs: seconds of quiet measured before publishing (background CPU)")
    parser.add_argument("--profile-child", default="", metavar="DIR",
                        help="procs: cProfile one receiving node during the publication; write its .pstats to DIR, print its top functions")
    parser.add_argument("--lab-delay-ms", type=float, default=0.0,
                        help="procs: run every host in a network lab namespace, links delayed this much (needs root)")
    parser.add_argument("--lab-jitter-ms", type=float, default=0.0, help="procs, in the lab: jitter of that delay")
    parser.add_argument("--lab-loss", type=float, default=0.0, help="procs, in the lab: percent of packets lost per link")
    parser.add_argument("--params", choices=["daemon", "test"], default="daemon",
                        help="procs: the daemon's network parameters (default) or the tests' quick discovery")
    args = parser.parse_args()
    lab_shape = (args.lab_delay_ms, args.lab_jitter_ms, args.lab_loss)
    if any(lab_shape) and args.mode != "procs":
        parser.error("--lab-* needs procs mode")
    for n in args.n:
        if args.mode == "procs":
            if args.degree:
                parse_degree(args.degree)  # refuse a malformed value before starting processes
            procs(n, args.messages, args.rate, args.grace, args.settle, args.idle, args.profile_child, args.degree,
                  lab_shape, args.params)
        else:
            trio.run(inproc, n, args.messages, args.rate, args.grace, args.settle)


if __name__ == "__main__":
    main()
