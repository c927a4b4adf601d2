"""The network lab itself: it builds what it says, shapes and cuts links, and leaves nothing behind.

Teardown is proven on a clean exit, after a failure in the middle of the
build, after SIGTERM and SIGINT to a process using the lab, and (through
:func:`netlab.sweep_stale`) after SIGKILL of such a process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import netlab
from netlab import Lab, LabError, LinkShape

REASON = netlab.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
HERE = Path(__file__).parent

# A tiny TCP/UDP helper run inside namespaces (the lab's images have python3 but no ping/nc).
PROBE = textwrap.dedent("""
    import socket, sys, time
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "connect":
        try:
            socket.create_connection((host, port), timeout=float(sys.argv[4])).close(); print("connected")
        except ConnectionRefusedError: print("refused")
        except OSError as exc: print("failed", type(exc).__name__)
    elif mode == "rtt":  # milliseconds of refused connects (SYN out, RST back: one round trip), one a line
        for _ in range(int(sys.argv[4])):
            started = time.perf_counter()
            try: socket.create_connection((host, port), timeout=5).close()
            except ConnectionRefusedError: print(round((time.perf_counter() - started) * 1000, 2))
    elif mode == "udp-send":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(int(sys.argv[4])):
            s.sendto(b"x" * 64, (host, port))
            if i % 20 == 19: time.sleep(0.002)  # paced: loss must come from the link, not from full buffers
    elif mode == "udp-count":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22); s.bind((host, port)); s.settimeout(30.0)
        print("bound", flush=True); n = 0
        try:
            while True:
                s.recv(2048); n += 1
                s.settimeout(float(sys.argv[4]))  # after the first packet: end when the sender went quiet
        except socket.timeout: pass
        print(n)
""")


# Both ways of joining a member to the bridge: veth pairs, and TAPs through the user-space delay line.
PLUMBING = [False, *([True] if REASON is None and netlab.capabilities().tun else [])]


@pytest.fixture(params=PLUMBING, ids=lambda through: "delay-line" if through else "veth")
def delay_line(request: pytest.FixtureRequest) -> bool:
    return request.param


def probe(lab: Lab, member: str, *args: str, timeout: float = 30.0) -> str:
    return lab.run(member, [sys.executable, "-c", PROBE, *args], timeout=timeout).stdout.strip()


def host_addresses() -> str:
    return subprocess.run([netlab.IP, "-br", "addr"], capture_output=True, text=True, timeout=10).stdout


def host_links() -> set[str]:
    out = subprocess.run([netlab.IP, "-br", "link"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[0].split("@")[0] for line in out.splitlines() if line.strip()}


def test_members_reach_each_other_and_nothing_reaches_the_host(delay_line: bool) -> None:
    links_before = host_links()
    with Lab(["a", "b", "c"], delay_line=delay_line) as lab:
        assert len(netlab.lab_namespaces(lab.prefix + "-")) == 4  # a bridge namespace and one per member
        addresses = {lab.address(m) for m in ("a", "b", "c")}
        assert len(addresses) == 3
        for address in addresses:
            assert address not in host_addresses()
        # Nobody listens on port 9: a refusal proves the packet crossed the bridge and came back.
        assert probe(lab, "a", "connect", lab.address("b"), "9", "5") == "refused"
        assert probe(lab, "c", "connect", lab.address("a"), "9", "5") == "refused"
        # The host's own addresses do not exist inside: no route out of the lab.
        assert probe(lab, "a", "connect", "192.0.2.1", "9", "2").startswith("failed")
    assert lab.leftovers() == []
    assert host_links() <= links_before  # no veth or TAP of the lab surfaced in the host's namespace


def test_spread_puts_every_member_in_its_own_slash_24() -> None:
    with Lab(["a", "b"], spread=True) as lab:
        assert lab.address("a").rsplit(".", 1)[0] != lab.address("b").rsplit(".", 1)[0]
        assert probe(lab, "a", "connect", lab.address("b"), "9", "5") == "refused"


def test_cut_loses_packets_until_heal(delay_line: bool) -> None:
    with Lab(["a", "b"], delay_line=delay_line) as lab:
        lab.cut("b")
        assert probe(lab, "a", "connect", lab.address("b"), "9", "2") == "failed TimeoutError"
        lab.heal("b")
        assert probe(lab, "a", "connect", lab.address("b"), "9", "5") == "refused"


def test_cut_between_partitions_two_members_and_leaves_the_rest_of_the_lab_connected() -> None:
    # Through the delay line too in test_netlab_scenarios (the CPM cut off from half the nodes, 40 ms links).
    with Lab(["a", "b", "c", "d"], shape=LinkShape(loss_pct=1.0)) as lab:
        lab.cut_between("a", ["b", "c"])
        for x, y in (("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")):
            assert probe(lab, x, "connect", lab.address(y), "9", "2") == "failed TimeoutError", (x, y)
        for x, y in (("a", "d"), ("b", "c"), ("d", "b")):
            assert probe(lab, x, "connect", lab.address(y), "9", "5") == "refused", (x, y)
        new = lab.readdress("b")  # the partition follows the member to its new address
        assert probe(lab, "a", "connect", new, "9", "2") == "failed TimeoutError"
        lab.heal_between("a", ["b"])
        assert probe(lab, "a", "connect", new, "9", "5") == "refused"
        assert probe(lab, "c", "connect", lab.address("a"), "9", "2") == "failed TimeoutError"
        lab.heal_between("a", ["c"])
        assert probe(lab, "c", "connect", lab.address("a"), "9", "5") == "refused"
    assert lab.leftovers() == []


def test_readdress_moves_a_member(delay_line: bool) -> None:
    with Lab(["a", "b"], delay_line=delay_line) as lab:
        old = lab.address("b")
        new = lab.readdress("b")
        assert new != old
        assert probe(lab, "a", "connect", new, "9", "5") == "refused"
        assert probe(lab, "a", "connect", old, "9", "2").startswith("failed")


def test_loss_drops_about_the_share_asked_for(delay_line: bool) -> None:
    sent = 2000
    with Lab(["a", "b"], shape=LinkShape(loss_pct=30.0), delay_line=delay_line) as lab:
        receiver = lab.spawn("b", [sys.executable, "-c", PROBE, "udp-count", lab.address("b"), "7000", "2"],
                             stdout=subprocess.PIPE)
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == b"bound"
        # Neighbours resolved first. Over a 30%-loss link one connect can fail (its ARP or SYN lost 3 times,
        # seen once in CI as "failed OSError"); ten in a row fail with probability ~1e-15.
        assert any(probe(lab, "a", "connect", lab.address("b"), "9", "5") == "refused" for _ in range(10))
        probe(lab, "a", "udp-send", lab.address("b"), "7000", str(sent))
        received = int(receiver.communicate(timeout=30)[0].strip())
    # 30% of 2000: mean 1400 delivered, sd ~20; 8 sd either side cannot fail by chance.
    assert 1240 <= received <= 1560, received


def test_rate_and_loss_are_applied_where_the_kernel_allows() -> None:
    caps = netlab.capabilities()
    with Lab(["a"], shape=LinkShape(delay_ms=40, jitter_ms=10, loss_pct=1, rate_mbit=100)) as lab:
        qdiscs = lab.run("a", [netlab.TC, "qdisc", "show", "dev", "eth0"]).stdout
        if caps.netem:
            assert "netem" in qdiscs and "delay 40" in qdiscs and lab.degraded == []
        elif caps.tun:
            assert "tbf" in qdiscs and "clsact" in qdiscs
            assert lab.degraded == [
                "no sch_netem in this kernel: latency and jitter by a user-space delay line (integration/delayline.py)"]
        else:
            assert "tbf" in qdiscs and "clsact" in qdiscs
            assert lab.degraded == ["no sch_netem in this kernel: latency and jitter are not emulated"]


@pytest.mark.skipif(not (netlab.capabilities().netem or netlab.capabilities().tun),
                    reason="no sch_netem and no TAP devices here: latency is not emulated")
def test_link_delay_shows_in_the_round_trip_time() -> None:
    # One-way a -> b is a's delay, b -> a is b's: a round trip is about 2 x 40 ms, plus a spread from the jitter.
    with Lab(["a", "b"], shape=LinkShape(delay_ms=40, jitter_ms=5)) as lab:
        probe(lab, "a", "connect", lab.address("b"), "9", "5")  # neighbours resolved first
        rtts = sorted(float(x) for x in probe(lab, "a", "rtt", lab.address("b"), "9", "20").split())
        lab.shape("a", LinkShape())
        lab.shape("b", LinkShape())
        bare = sorted(float(x) for x in probe(lab, "a", "rtt", lab.address("b"), "9", "20").split())
    assert len(rtts) == len(bare) == 20
    median, bare_median = rtts[10], bare[10]
    assert 70 <= median - bare_median <= 110, (rtts, bare)
    assert rtts[-1] - rtts[0] > 2, rtts  # jitter: not every round trip takes the same time


def test_close_ends_the_processes_it_started() -> None:
    with Lab(["a"]) as lab:
        sleeper = lab.spawn("a", ["sleep", "300"])
        # The process really runs inside the namespace.
        assert str(sleeper.pid) in subprocess.run([netlab.IP, "netns", "pids", lab.members["a"].netns],
                                                  capture_output=True, text=True, timeout=10).stdout.split()
    assert sleeper.poll() is not None
    assert lab.leftovers() == []


def test_a_failure_in_the_middle_of_the_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = netlab._run
    calls = {"veth": 0}

    def failing_run(argv, **kwargs):  # type: ignore[no-untyped-def]
        if "veth" in argv:
            calls["veth"] += 1
            if calls["veth"] == 3:
                raise LabError("simulated failure while adding the third veth")
        return real_run(argv, **kwargs)

    monkeypatch.setattr(netlab, "_run", failing_run)
    lab = Lab(["a", "b", "c", "d"])
    with pytest.raises(LabError, match="simulated failure"):
        with lab:
            pass
    monkeypatch.undo()
    assert calls["veth"] == 3
    assert netlab.lab_namespaces(lab.prefix + "-") == []


# The user of the lab reads Ctrl-C as a terminal user's process does, even when the test runs under a parent
# that ignores SIGINT (a shell's background job: the child would inherit SIG_IGN and never see it).
USER = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {here!r})
    import netlab
    with netlab.Lab(["a", "b"]) as lab:
        sleeper = lab.spawn("a", ["sleep", "300"])
        print(lab.prefix, sleeper.pid, flush=True)
        time.sleep(300)
""")


def _user_of_the_lab() -> tuple[subprocess.Popen[str], str, int]:
    user = subprocess.Popen([sys.executable, "-c", USER.format(here=str(HERE))], stdout=subprocess.PIPE, text=True)
    assert user.stdout is not None
    line = user.stdout.readline().split()
    assert len(line) == 2, f"the lab user did not start: {line}"
    return user, line[0], int(line[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_using_the_lab_tears_it_down(signum: int) -> None:
    user, prefix, sleeper = _user_of_the_lab()
    assert len(netlab.lab_namespaces(prefix + "-")) == 3
    user.send_signal(signum)
    user.wait(timeout=30)
    assert netlab.lab_namespaces(prefix + "-") == []
    assert not psutil.pid_exists(sleeper) or psutil.Process(sleeper).status() == psutil.STATUS_ZOMBIE


def test_sweep_stale_removes_what_a_killed_owner_left() -> None:
    user, prefix, sleeper = _user_of_the_lab()
    user.kill()
    user.wait(timeout=10)
    assert len(netlab.lab_namespaces(prefix + "-")) == 3  # SIGKILL: nobody could clean up
    removed = netlab.sweep_stale()
    assert sorted(removed) == sorted(f"{prefix}-{m}" for m in ("a", "b", "br"))
    assert netlab.lab_namespaces(prefix + "-") == []
    deadline = time.monotonic() + 5
    while psutil.pid_exists(sleeper) and psutil.Process(sleeper).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the sleeper inside the stale namespace survived the sweep"
        time.sleep(0.05)


def test_sweep_stale_spares_labs_whose_owner_lives() -> None:
    with Lab(["a"]) as lab:
        removed = netlab.sweep_stale()
        assert not any(name.startswith(lab.prefix) for name in removed)
        assert len(netlab.lab_namespaces(lab.prefix + "-")) == 2


def test_bad_member_names_are_refused_before_anything_is_built() -> None:
    for members in (["a", "a"], [], ["br"], ["Has-Caps"]):
        with pytest.raises(ValueError):
            Lab(members)
    with pytest.raises(ValueError):
        LinkShape(loss_pct=150)
