"""Idle daemon RSS and CPU: a bootstrap and ``peers`` nodes as real processes, measured on the bootstrap.

    .venv/bin/python bench/net_idle.py [--seconds 600] [--peers 5]

The issue asks for 10 minutes with 5 peers. Prints the bootstrap daemon's RSS
(start and end of the idle window) and its CPU use over the window, read
from /proc (Linux only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far: start-up cost that load on the machine does not inflate."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start(home: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([str(BIN / "knexa-node"), "start", "--home", str(home), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    return proc, json.loads(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--peers", type=int, default=5)
    args = parser.parse_args()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            boot_home = Path(tmp) / "boot"
            subprocess.run([str(BIN / "knexa-node"), "init", "--home", str(boot_home), "--listen", "/ip4/127.0.0.1/tcp/0"], check=True, capture_output=True, env=ENV)
            boot, ready = start(boot_home)
            procs.append(boot)
            for i in range(args.peers):
                home = Path(tmp) / f"n{i}"
                subprocess.run([str(BIN / "knexa-node"), "init", "--home", str(home), "--listen", "/ip4/127.0.0.1/tcp/0",
                                "--bootstrap", ready["addrs"][0]], check=True, capture_output=True, env=ENV)
                procs.append(start(home)[0])
            time.sleep(5)  # discovery settles
            rss0, cpu0, t0 = rss_mib(boot.pid), cpu_s(boot.pid), time.monotonic()
            time.sleep(args.seconds)
            rss1, cpu1, t1 = rss_mib(boot.pid), cpu_s(boot.pid), time.monotonic()
            print(f"idle bootstrap daemon with {args.peers} peers over {t1 - t0:.0f} s: RSS {rss0:.1f} -> {rss1:.1f} MiB, "
                  f"CPU {100 * (cpu1 - cpu0) / (t1 - t0):.2f}% of one core ({cpu1 - cpu0:.2f} s)")
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
