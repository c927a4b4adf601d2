"""A network lab: Linux network namespaces joined by veth pairs to a bridge, with shaped and cuttable links.

    with Lab(["cpm", "n0", "n1"], shape=LinkShape(delay_ms=40, jitter_ms=10, loss_pct=1)) as lab:
        proc = lab.spawn("n0", ["knexa-node", "start", "--home", ...], stdout=..., stderr=...)
        lab.cut("n1"); ...; lab.heal("n1")
        lab.cut_between("cpm", ["n0"]); ...; lab.heal_between("cpm", ["n0"])

Topology: one namespace holds the bridge ``br0``; every member (CPM, node)
has its own namespace whose ``eth0`` is one end of a veth pair, the other end
(``m<i>``) a port of the bridge. Addresses come from a private test range
(``10.231.0.0/16``) that exists only inside these namespaces: the host's own
namespace gets no interface and no route, so traffic cannot leave the lab.

A member's link shape applies to what the member sends (latency with jitter
and loss on its ``eth0``) and its rate limit to both directions; one-way
latency A -> B is A's delay. With ``sch_netem`` the kernel does all of it.
Without it (some VM kernels), the lab does it another way and says so in
:attr:`Lab.degraded`: loss through a classic-BPF filter that drops a random
share of packets (``cls_bpf`` on a ``clsact`` hook), rate through ``tbf``,
and latency with jitter through a user-space delay line
(:mod:`integration.delayline`: each member's ``eth0`` and its bridge port are
TAP devices, and one process in the bridge namespace holds each frame the
member sends for its delay) when the lab is built with a delay and
``/dev/net/tun`` works; else latency is not emulated.

A partition of some members from some others (:meth:`Lab.cut_between`) is a
classic-BPF filter on each side's ``eth0`` egress that drops what goes to the
other side's addresses (first in line, pref 1; packets to anyone else go on
to the loss filter or netem): lost, not refused, like :meth:`Lab.cut`.

Teardown: :meth:`Lab.close` (run by ``with``, on an exception and, while a lab
is open in the main thread, on SIGTERM/SIGHUP, which it turns into
``SystemExit``; SIGINT already raises ``KeyboardInterrupt``) ends every process
the lab started and every process still inside its namespaces, then deletes
the namespaces, which deletes their veths and the bridge. Names carry the
owner's PID (``knl-<pid>-<hex>-<member>``), so parallel runs never clash and
:func:`sweep_stale` can remove what a SIGKILLed owner left behind, and only that.

Every loop here is bounded in count and time.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import signal
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Sequence

NETNS_PREFIX = "knl"
BRIDGE_MEMBER = "br"  # the namespace holding the bridge (not a member name users may pick)
SUBNET = ipaddress.ip_network("10.231.0.0/16")
COMMAND_TIMEOUT_S = 15.0
STOP_GRACE_S = 5.0
TC = shutil.which("tc") or "/usr/sbin/tc"
IP = shutil.which("ip") or "/usr/sbin/ip"
# Classic BPF: A = random u32; return TC_ACT_SHOT (2) when A > threshold, else TC_ACT_OK (0).
_SKF_AD_RANDOM = 0xFFFFF000 + 56
_TC_ACT_SHOT = 2
# The partition filter: A = skb protocol; A = IPv4 destination (relative to the network header).
_SKF_AD_PROTOCOL = 0xFFFFF000
_SKF_NET_IPV4_DST = 0xFFF00000 + 16
_TC_ACT_UNSPEC = 0xFFFFFFFF  # (-1) not decided here: the next filter (loss) sees the packet
_BLOCK_PREF = "1"
_NAME = re.compile(r"^[a-z0-9]{1,12}$")


class LabError(Exception):
    """Building, shaping or tearing down the lab failed (the message names the command and its error)."""


class LabUnavailable(LabError):
    """Namespaces cannot be made here (not root, no ``ip``); ``str()`` is one line, fit for a skip reason."""


@dataclass(frozen=True)
class LinkShape:
    """What one member's link does to the packets it carries (zero: untouched)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_mbit: float = 0.0

    def __post_init__(self) -> None:
        if min(self.delay_ms, self.jitter_ms, self.loss_pct, self.rate_mbit) < 0 or self.loss_pct > 100:
            raise ValueError(f"bad link shape {self}")


@dataclass(frozen=True)
class Capabilities:
    """What this machine lets the lab do; ``reason`` is set (one line) when it can do nothing."""

    reason: str | None
    netem: bool = False
    bpf_loss: bool = False
    tbf: bool = False
    tun: bool = False  # TAP devices can be made: the user-space delay line works


@dataclass
class Member:
    name: str
    index: int
    netns: str
    address: str
    shape: LinkShape = field(default_factory=LinkShape)
    cut: bool = False
    blocked: set[str] = field(default_factory=set)  # members this one is partitioned from (cut_between)

    @property
    def bridge_port(self) -> str:
        return f"m{self.index}"


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run one ``ip``/``tc`` command (bounded in time); raise :class:`LabError` with its stderr when it fails."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from None
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done


_capabilities: Capabilities | None = None


def capabilities() -> Capabilities:
    """Probe once per process, in a scratch namespace of our own, what can be built and shaped here."""
    global _capabilities
    if _capabilities is None:
        _capabilities = _probe()
    return _capabilities


def unavailable_reason() -> str | None:
    """One line saying why no lab can be built here, or None."""
    return capabilities().reason


def _probe() -> Capabilities:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return Capabilities("network lab needs root (ip netns add); not root here")
    if not Path(IP).exists():
        return Capabilities("network lab needs iproute2's `ip`; not found")
    name = f"{NETNS_PREFIX}-{os.getpid()}-{secrets.token_hex(2)}-probe"
    try:
        _run([IP, "netns", "add", name])
    except LabError as exc:
        return Capabilities(f"network lab cannot create a namespace: {exc}"[:200])
    try:
        _run([IP, "-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        if not Path(TC).exists():
            return Capabilities(None)
        tc = [IP, "netns", "exec", name, TC]
        netem = _run([*tc, "qdisc", "add", "dev", "p0", "root", "netem", "delay", "1ms"], check=False).returncode == 0
        _run([*tc, "qdisc", "del", "dev", "p0", "root"], check=False)
        tbf = _run([*tc, "qdisc", "add", "dev", "p0", "root", *_tbf_args(10.0)], check=False).returncode == 0
        bpf = (_run([*tc, "qdisc", "add", "dev", "p0", "clsact"], check=False).returncode == 0
               and _run([*tc, "filter", "add", "dev", "p0", "egress", *_loss_filter_args(1.0)], check=False).returncode == 0)
        tun = _run([IP, "-n", name, "tuntap", "add", "mode", "tap", "name", "tp0"], check=False).returncode == 0
        return Capabilities(None, netem=netem, bpf_loss=bpf, tbf=tbf, tun=tun)
    except LabError as exc:
        return Capabilities(f"network lab cannot create a veth pair: {exc}"[:200])
    finally:
        _run([IP, "netns", "del", name], check=False)


def _tbf_args(rate_mbit: float) -> list[str]:
    # burst: at least one rate-second's 1/100 and a few MTUs; latency bounds the queue.
    burst = max(int(rate_mbit * 1e6 / 8 / 100), 16 * 1514)
    return ["tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "100ms"]


def _loss_filter_args(loss_pct: float) -> list[str]:
    threshold = min(int((1.0 - loss_pct / 100.0) * 0xFFFFFFFF), 0xFFFFFFFF)
    code = f"4,32 0 0 {_SKF_AD_RANDOM},37 0 1 {threshold},6 0 0 {_TC_ACT_SHOT},6 0 0 0"
    return ["bpf", "da", "bytecode", code]


def _block_filter_args(addresses: Sequence[str]) -> list[str]:
    """Drop IPv4 packets to ``addresses``; leave every other packet to the next filter."""
    n = len(addresses)
    code = [f"32 0 0 {_SKF_AD_PROTOCOL}", f"21 0 {n + 1} {0x0800}", f"32 0 0 {_SKF_NET_IPV4_DST}"]
    code += [f"21 {n - i} 0 {int(ipaddress.ip_address(a))}" for i, a in enumerate(addresses)]
    code += [f"6 0 0 {_TC_ACT_UNSPEC}", f"6 0 0 {_TC_ACT_SHOT}"]
    return ["bpf", "da", "bytecode", f"{len(code)}," + ",".join(code)]


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lab_namespaces(prefix: str = NETNS_PREFIX + "-") -> list[str]:
    """Names of the lab namespaces that exist now whose name starts with ``prefix``."""
    done = _run([IP, "netns", "list"], check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def _kill_namespace_processes(netns: str) -> None:
    for _ in range(3):  # a dying process may fork once more; three passes are plenty
        done = _run([IP, "netns", "pids", netns], check=False)
        pids = [int(p) for p in done.stdout.split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(_owner_alive(p) and _is_not_zombie(p) for p in pids):
            time.sleep(0.05)


def _is_not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def _delete_namespace(netns: str) -> None:
    _kill_namespace_processes(netns)
    _run([IP, "netns", "del", netns], check=False)


def sweep_stale() -> list[str]:
    """Delete the lab namespaces whose owning process is gone (a SIGKILLed test run); returns their names."""
    removed = []
    for name in lab_namespaces():
        parts = name.split("-")
        if len(parts) >= 3 and parts[1].isdigit() and not _owner_alive(int(parts[1])):
            _delete_namespace(name)
            removed.append(name)
    return removed


class Lab:
    """One lab instance: a bridge namespace and one namespace per member. Use it as a context manager."""

    def __init__(self, members: Sequence[str], *, shape: LinkShape | None = None, spread: bool = False,
                 delay_line: bool | None = None) -> None:
        """``spread``: give each member its own /24 (else all share one /24, like hosts behind one switch).

        ``delay_line``: route every member through :mod:`integration.delayline` (None: exactly when
        ``shape`` has a delay and the kernel has no netem, so that latency is emulated all the same).
        """
        if len(set(members)) != len(members) or not members:
            raise ValueError("member names must be distinct and at least one")
        for name in members:
            if not _NAME.match(name) or name == BRIDGE_MEMBER:
                raise ValueError(f"bad member name {name!r} (1-12 of a-z0-9, not {BRIDGE_MEMBER!r})")
        if len(members) > 200:
            raise ValueError("at most 200 members")
        self.prefix = f"{NETNS_PREFIX}-{os.getpid()}-{secrets.token_hex(2)}"
        self.spread = spread
        self.bridge_netns = f"{self.prefix}-{BRIDGE_MEMBER}"
        self.members = {name: Member(name, i, f"{self.prefix}-{name}", self._address(i))
                        for i, name in enumerate(members)}
        self.initial_shape = shape or LinkShape()
        self.delay_line = delay_line
        self._delay_proc: subprocess.Popen[str] | None = None
        self.degraded: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        self._readdressed = 0
        self._old_handlers: dict[int, Any] = {}
        self.closed = False

    # --- addresses ---------------------------------------------------------------------------------

    def _address(self, slot: int) -> str:
        base = int(SUBNET.network_address)
        host = base + (slot + 1) * 256 + 1 if self.spread else base + slot + 1
        return str(ipaddress.ip_address(host))

    def address(self, name: str) -> str:
        return self.members[name].address

    # --- life cycle --------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self._install_signal_handlers()
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise LabUnavailable(reason)
        self._add_netns(self.bridge_netns)
        self._ip(self.bridge_netns, "link", "add", "br0", "type", "bridge")
        self._ip(self.bridge_netns, "link", "set", "br0", "up")
        for member in self.members.values():
            self._add_netns(member.netns)
        if self._wants_delay_line():
            self._start_delay_line()
        for member in self.members.values():
            if self._delay_proc is not None:  # the delay line made both ends as TAPs: move the member's end in
                self._ip(self.bridge_netns, "link", "set", f"t{member.index}", "netns", member.netns)
                self._ip(member.netns, "link", "set", f"t{member.index}", "name", "eth0")
            else:
                self._ip(self.bridge_netns, "link", "add", member.bridge_port, "type", "veth", "peer", "name", "eth0",
                         "netns", member.netns)
            self._ip(self.bridge_netns, "link", "set", member.bridge_port, "master", "br0", "up")
            self._ip(member.netns, "addr", "add", f"{member.address}/{SUBNET.prefixlen}", "dev", "eth0")
            self._ip(member.netns, "link", "set", "eth0", "up")
            self.shape(member.name, self.initial_shape)

    def _wants_delay_line(self) -> bool:
        caps = capabilities()
        if self.delay_line is None:
            shape = self.initial_shape
            return not caps.netem and caps.tun and (shape.delay_ms > 0 or shape.jitter_ms > 0)
        if self.delay_line and not caps.tun:
            raise LabError("the delay line needs TAP devices (/dev/net/tun); ip tuntap failed here")
        return self.delay_line

    def _start_delay_line(self) -> None:
        """Start :mod:`integration.delayline` in the bridge namespace; return once its TAP devices exist."""
        script = str(Path(__file__).with_name("delayline.py"))
        proc = subprocess.Popen([IP, "netns", "exec", self.bridge_netns, sys.executable, script,
                                 "--ports", str(len(self.members))],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.adopt(proc)
        ready, _, _ = select.select([proc.stdout], [], [], COMMAND_TIMEOUT_S) if proc.stdout else ([], [], [])
        line = proc.stdout.readline().strip() if ready and proc.stdout else ""
        if line != "ready":
            raise LabError(f"the delay line did not start (said {line!r}, exit status {proc.poll()})")
        self._delay_proc = proc
        self._note("no sch_netem in this kernel: latency and jitter by a user-space delay line (integration/delayline.py)")

    def _set_delay(self, member: Member, shape: LinkShape) -> None:
        if self._delay_proc is None or self._delay_proc.stdin is None:
            raise LabError("this lab has no delay line")
        try:
            self._delay_proc.stdin.write(f"delay {member.index} {shape.delay_ms} {shape.jitter_ms}\n")
            self._delay_proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise LabError(f"the delay line is gone: {exc}") from None

    def close(self) -> None:
        """End every process and delete every namespace of this lab (idempotent, bounded in time)."""
        if self.closed:
            return
        self.closed = True
        try:
            for proc in self._processes:
                _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for proc in self._processes:
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    pass
                _signal_group(proc, signal.SIGKILL)  # the group: children of a process that already exited
            for proc in self._processes:
                try:
                    proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    pass
            for netns in reversed(self._created):
                _delete_namespace(netns)
        finally:
            self._restore_signal_handlers()

    def leftovers(self) -> list[str]:
        """What of this lab still exists: namespaces and live processes (empty after a clean close)."""
        left = lab_namespaces(self.prefix + "-")
        left += [f"pid {p.pid}" for p in self._processes if p.poll() is None]
        return left

    def _add_netns(self, netns: str) -> None:
        _run([IP, "netns", "add", netns])
        self._created.append(netns)
        self._ip(netns, "link", "set", "lo", "up")

    def _ip(self, netns: str, *args: str) -> None:
        _run([IP, "-n", netns, *args])

    def _tc(self, netns: str, *args: str, check: bool = True) -> None:
        _run([IP, "netns", "exec", netns, TC, *args], check=check)

    # --- links -------------------------------------------------------------------------------------

    def shape(self, name: str, shape: LinkShape) -> None:
        """Set ``name``'s link shape (replacing the previous one)."""
        member = self.members[name]
        caps = capabilities()
        inner, outer = (member.netns, "eth0"), (self.bridge_netns, member.bridge_port)
        for netns, dev in (inner, outer):
            self._tc(netns, "qdisc", "del", "dev", dev, "root", check=False)
            self._tc(netns, "qdisc", "del", "dev", dev, "clsact", check=False)
        wants_delay = shape.delay_ms > 0 or shape.jitter_ms > 0
        if caps.netem:
            netem = ["netem", "limit", "10000"]
            if wants_delay:
                netem += ["delay", f"{shape.delay_ms}ms", f"{shape.jitter_ms}ms"]
                if shape.jitter_ms:
                    netem += ["distribution", "normal"]
            if shape.loss_pct:
                netem += ["loss", f"{shape.loss_pct}%"]
            if shape.rate_mbit:
                netem += ["rate", f"{shape.rate_mbit}mbit"]
            if len(netem) > 3:
                self._tc(inner[0], "qdisc", "add", "dev", inner[1], "root", *netem)
        else:
            if self._delay_proc is not None:
                self._set_delay(member, shape)
            elif wants_delay:
                self._note("no sch_netem in this kernel: latency and jitter are not emulated")
            if shape.loss_pct:
                if not caps.bpf_loss:
                    raise LabError("no sch_netem and no cls_bpf: cannot emulate loss on this kernel")
                self._tc(inner[0], "qdisc", "add", "dev", inner[1], "clsact")
                self._tc(inner[0], "filter", "add", "dev", inner[1], "egress", *_loss_filter_args(shape.loss_pct))
            if shape.rate_mbit:
                if not caps.tbf:
                    raise LabError("no sch_netem and no sch_tbf: cannot limit the rate on this kernel")
                self._tc(inner[0], "qdisc", "add", "dev", inner[1], "root", *_tbf_args(shape.rate_mbit))
        if shape.rate_mbit:  # the downlink: packets the bridge sends to this member
            limiter = ["netem", "rate", f"{shape.rate_mbit}mbit", "limit", "10000"] if caps.netem else _tbf_args(shape.rate_mbit)
            self._tc(outer[0], "qdisc", "add", "dev", outer[1], "root", *limiter)
        member.shape = shape
        self._apply_blocks(member)  # the clsact hook was rebuilt above

    def _note(self, line: str) -> None:
        if line not in self.degraded:
            self.degraded.append(line)

    def cut(self, name: str) -> None:
        """Partition ``name`` from everyone: its bridge port goes down (packets are lost, nothing is refused)."""
        self._ip(self.bridge_netns, "link", "set", self.members[name].bridge_port, "down")
        self.members[name].cut = True

    def heal(self, name: str) -> None:
        self._ip(self.bridge_netns, "link", "set", self.members[name].bridge_port, "up")
        self.members[name].cut = False
        # An address resolution that was under way during the cut would still fail ("no route to host")
        # a second after the heal: everyone forgets its neighbours and resolves them afresh.
        for member in self.members.values():
            _run([IP, "-n", member.netns, "neigh", "flush", "dev", "eth0"], check=False)

    def cut_between(self, name: str, others: Sequence[str]) -> None:
        """Partition ``name`` from ``others`` both ways; everyone else still reaches both sides."""
        self._set_blocks(name, others, blocked=True)

    def heal_between(self, name: str, others: Sequence[str]) -> None:
        self._set_blocks(name, others, blocked=False)

    def _set_blocks(self, name: str, others: Sequence[str], *, blocked: bool) -> None:
        if name in others or not set(others) <= set(self.members):
            raise ValueError(f"cannot partition {name!r} from {list(others)!r}")
        for a, b in [(name, other) for other in others] + [(other, name) for other in others]:
            (self.members[a].blocked.add if blocked else self.members[a].blocked.discard)(b)
        for member in {name, *others}:
            self._apply_blocks(self.members[member])

    def _apply_blocks(self, member: Member) -> None:
        """(Re)install ``member``'s partition filter for the present addresses of the members it is cut from."""
        self._tc(member.netns, "filter", "del", "dev", "eth0", "egress", "pref", _BLOCK_PREF, check=False)
        if not member.blocked:
            return
        if not capabilities().bpf_loss:
            raise LabError("no cls_bpf on this kernel: cannot cut one member from some others")
        addresses = sorted(self.members[other].address for other in member.blocked)
        self._tc(member.netns, "qdisc", "add", "dev", "eth0", "clsact", check=False)  # there already with loss
        self._tc(member.netns, "filter", "add", "dev", "eth0", "egress", "pref", _BLOCK_PREF,
                 *_block_filter_args(addresses))

    def readdress(self, name: str) -> str:
        """Give ``name`` a new address (the old one disappears); returns it."""
        member = self.members[name]
        self._readdressed += 1
        new = self._address(len(self.members) + 100 + self._readdressed)
        # Delete first: deleting a primary address also deletes the secondaries of its subnet.
        self._ip(member.netns, "addr", "del", f"{member.address}/{SUBNET.prefixlen}", "dev", "eth0")
        self._ip(member.netns, "addr", "add", f"{new}/{SUBNET.prefixlen}", "dev", "eth0")
        member.address = new
        for other in member.blocked:  # they drop by address: the new one, now
            self._apply_blocks(self.members[other])
        return new

    # --- processes ---------------------------------------------------------------------------------

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``name``'s namespace."""
        return [IP, "netns", "exec", self.members[name].netns, *argv]

    def spawn(self, name: str, argv: Sequence[str], *, stdout: IO[Any] | int | None = subprocess.DEVNULL,
              stderr: IO[Any] | int | None = subprocess.DEVNULL, env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``name``'s namespace, in its own session; the lab ends it on close."""
        if self.closed:
            raise LabError("the lab is closed")
        proc = subprocess.Popen(self.exec_argv(name, argv), stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        self.adopt(proc)
        return proc

    def adopt(self, proc: subprocess.Popen[Any]) -> None:
        """End ``proc`` (and its process group) when the lab closes."""
        self._processes.append(proc)

    def run(self, name: str, argv: Sequence[str], *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a short command inside ``name``'s namespace and return what it printed."""
        return subprocess.run(self.exec_argv(name, argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    # --- signals -----------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(signum)
            if previous in (signal.SIG_DFL, None):
                self._old_handlers[signum] = previous
                signal.signal(signum, _exit_on_signal)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._old_handlers.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._old_handlers.clear()


def _exit_on_signal(signum: int, frame: Any) -> None:
    # Unwind through `with Lab(...)` so that close() runs; the exit status says which signal.
    raise SystemExit(128 + signum)


def _signal_group(proc: subprocess.Popen[Any], signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
