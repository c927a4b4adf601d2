"""The dashboard's cost to the daemon: page weight, and the daemon's CPU while a page polls it.

    .venv/bin/python bench/dashboard_cost.py --home H [--seconds 60]

H is a node home whose config has ``[dashboard] enabled = true``; the script
starts the daemon, measures its CPU time over the same window idle and with
a client polling ``/api/dashboard`` every 2 s (as the page does), and prints
both and their difference. Quote figures from a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from knexa_node.daemon.control import call


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    daemon = subprocess.Popen([str(Path(sys.executable).parent / "knexa-node"), "start", "--home", str(args.home)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        daemon.stdout.readline()  # the ready line
        url = call(args.home / "control.sock", "status")["dashboard"]
        if not url:
            sys.exit("the dashboard is not enabled in this home's config")
        page = urllib.request.urlopen(url, timeout=10).read()
        proc = psutil.Process(daemon.pid)
        time.sleep(5)  # let start-up work settle
        start = cpu_seconds(proc)
        time.sleep(args.seconds)
        idle = cpu_seconds(proc) - start
        start, polls, payload = cpu_seconds(proc), 0, 0
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            payload = len(urllib.request.urlopen(url + "api/dashboard", timeout=10).read())
            polls += 1
            time.sleep(2.0)
        polled = cpu_seconds(proc) - start
        print(json.dumps({"page_kb": round(len(page) / 1024, 1), "api_kb": round(payload / 1024, 1),
                          "window_s": args.seconds, "polls": polls, "cpu_s_idle": round(idle, 3),
                          "cpu_s_polled": round(polled, 3), "extra_cpu_percent": round(100 * (polled - idle) / args.seconds, 2),
                          "extra_ms_per_poll": round(1000 * (polled - idle) / max(polls, 1), 2)}))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


if __name__ == "__main__":
    main()
