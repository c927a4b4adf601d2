"""A user-space delay line for the network lab on kernels without ``sch_netem``.

Run by :class:`integration.netlab.Lab` inside the lab's bridge namespace::

    ip netns exec knl-...-br python -m integration.delayline --ports N

It creates 2 N TAP devices there: ``t<i>`` (the lab moves it into member i's
namespace and renames it ``eth0``) and ``m<i>`` (the lab makes it a port of
the bridge). Every Ethernet frame member i sends (read from ``t<i>``) is
written to ``m<i>`` after member i's delay, plus a normal jitter, in order (a
frame never overtakes an earlier one of the same member, as with netem's rate
or a real link's queue); frames the bridge sends to member i (read from
``m<i>``) go to ``t<i>`` at once. So one-way latency A -> B is A's delay, as
with netem on A's ``eth0``. Loss, partitions and rate limits stay in the
kernel, on the TAP devices (cls_bpf, tbf): a TAP has no offloads, so the
kernel hands us finished frames (segmented, checksummed) and no packet needs
fixing here.

Commands on stdin, one per line: ``delay <i> <ms> <jitter_ms>``. It prints
``ready`` once every device exists, and ends on EOF of stdin or SIGTERM.

A frame costs ~10-20 microseconds of Python here: fine for the control traffic
and the packages of the lab's scenarios; a figure of bulk throughput through
it says so (docs/netlab.md).
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import os
import random
import selectors
import struct
import sys
import time
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65536
# Frames held per member at most (netem's default limit is 1000; the lab asks netem for 10000).
QUEUE_LIMIT = 10000


@dataclass
class Schedule:
    """When each held frame leaves: the pure part of the delay line (no I/O, an injected clock and RNG)."""

    ports: int
    rng: random.Random = field(default_factory=random.Random)
    # Per port, sized in __post_init__: delay and jitter (s), the last release time, frames held.
    delay_s: list[float] = field(init=False)
    jitter_s: list[float] = field(init=False)
    last: list[float] = field(init=False)
    held: list[int] = field(init=False)
    heap: list[tuple[float, int, int, bytes]] = field(init=False, default_factory=list)
    dropped: int = field(init=False, default=0)
    _seq: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.delay_s = [0.0] * self.ports
        self.jitter_s = [0.0] * self.ports
        self.last = [0.0] * self.ports
        self.held = [0] * self.ports

    def set_delay(self, port: int, delay_ms: float, jitter_ms: float) -> None:
        if not 0 <= port < self.ports or delay_ms < 0 or jitter_ms < 0:
            raise ValueError(f"bad delay command for port {port}: {delay_ms} ms +- {jitter_ms} ms")
        self.delay_s[port], self.jitter_s[port] = delay_ms / 1000.0, jitter_ms / 1000.0

    def hold(self, port: int, frame: bytes, now: float) -> None:
        """Hold a frame member ``port`` sent at ``now`` (dropped when its queue is full)."""
        if self.held[port] >= QUEUE_LIMIT:
            self.dropped += 1
            return
        wait = self.delay_s[port]
        if self.jitter_s[port]:
            wait = max(0.0, self.rng.gauss(wait, self.jitter_s[port]))
        release = max(now + wait, self.last[port])  # in order, as on a link
        self.last[port] = release
        self.held[port] += 1
        self._seq += 1
        heapq.heappush(self.heap, (release, self._seq, port, frame))

    def due(self, now: float) -> list[tuple[int, bytes]]:
        """The frames whose time has come, oldest first."""
        out = []
        while self.heap and self.heap[0][0] <= now:
            _, _, port, frame = heapq.heappop(self.heap)
            self.held[port] -= 1
            out.append((port, frame))
        return out

    def next_release(self) -> float | None:
        return self.heap[0][0] if self.heap else None


def open_tap(name: str) -> int:
    """A non-blocking fd of a new TAP device ``name`` (gone when the fd closes)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _write(fd: int, frame: bytes) -> None:
    try:
        os.write(fd, frame)
    except OSError:
        pass  # a device that is down (a cut link) or full loses the frame, like a wire


def _read_all(fd: int) -> list[bytes]:
    frames = []
    for _ in range(256):  # bounded: other devices get their turn
        try:
            frames.append(os.read(fd, MAX_FRAME))
        except OSError:  # nothing more to read now (BlockingIOError), or the device is gone
            break
    return frames


def _command(schedule: Schedule, line: str) -> None:
    parts = line.split()
    if len(parts) == 4 and parts[0] == "delay":
        schedule.set_delay(int(parts[1]), float(parts[2]), float(parts[3]))
    elif parts:
        raise ValueError(f"unknown command {line!r}")


def serve(ports: int) -> None:
    member_fds = [open_tap(f"t{i}") for i in range(ports)]
    bridge_fds = [open_tap(f"m{i}") for i in range(ports)]
    schedule = Schedule(ports)
    selector = selectors.DefaultSelector()
    for i, fd in enumerate(member_fds):
        selector.register(fd, selectors.EVENT_READ, ("member", i))
    for i, fd in enumerate(bridge_fds):
        selector.register(fd, selectors.EVENT_READ, ("bridge", i))
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, ("control", -1))
    print("ready", flush=True)
    pending = b""
    while True:
        release = schedule.next_release()
        timeout = None if release is None else max(0.0, release - time.monotonic())
        for key, _ in selector.select(timeout):
            kind, port = key.data
            if kind == "control":
                chunk = os.read(key.fd, 4096)
                if not chunk:
                    return  # the lab is gone
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    try:
                        _command(schedule, line.decode())
                    except ValueError as exc:
                        print(f"error: {exc}", file=sys.stderr, flush=True)
            elif kind == "member":
                now = time.monotonic()
                for frame in _read_all(key.fd):
                    schedule.hold(port, frame, now)
            else:
                for frame in _read_all(key.fd):
                    _write(member_fds[port], frame)
        for port, frame in schedule.due(time.monotonic()):
            _write(bridge_fds[port], frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, required=True, help="members of the lab (TAP pairs to create)")
    args = parser.parse_args(argv)
    if not 1 <= args.ports <= 1000:
        parser.error("--ports must be 1-1000")
    try:
        serve(args.ports)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
