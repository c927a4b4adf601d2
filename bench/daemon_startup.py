"""Daemon start-up: seconds from ``knexa-node start`` to the ready line, and RSS, over a few starts.

    .venv/bin/python bench/daemon_startup.py [--starts 5] [--idle 3] [--model embedded:llama-tiny] [--bin DIR]

For each role (a relay, and a learning node when ``--model`` is given) it starts
the daemon ``--starts`` times and prints the median and the range of: the time
to the ready line (and the daemon's CPU seconds until then), the RSS at ready, the RSS after ``--idle`` seconds, and for
a learning node the time to its ``model-ready`` event. Also the import time of
libp2p and torch alone, in fresh interpreters, since they bound the rest.
``--bin`` runs another checkout's ``knexa-node`` (e.g. main's .venv/bin) for a
before/after in one run. RSS comes from /proc (Linux only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from knexa_node.daemon.control import call
from net_idle import cpu_s, rss_mib  # bench/ is on the path of a bench script

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def one_start(bin_dir: Path, home: Path, idle_s: float, wait_model: bool) -> dict[str, float]:
    started = time.monotonic()
    proc = subprocess.Popen([str(bin_dir / "knexa-node"), "start", "--home", str(home), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    try:
        json.loads(proc.stdout.readline())
        out = {"ready_s": time.monotonic() - started, "cpu_ready_s": cpu_s(proc.pid), "rss_ready_mib": rss_mib(proc.pid)}
        if wait_model:
            # Polled from the status rather than the model-ready event, which older checkouts do not log.
            while (call(home / "control.sock", "status").get("learner") or {}).get("learner", {}).get("busy") == "loading":
                time.sleep(0.1)
            out["model_ready_s"] = time.monotonic() - started
        time.sleep(idle_s)
        out["rss_idle_mib"] = rss_mib(proc.pid)
        out["torch_mapped"] = float("libtorch" in Path(f"/proc/{proc.pid}/maps").read_text())
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def import_s(python: Path, module: str) -> float:
    started = time.monotonic()
    subprocess.run([str(python), "-c", f"import {module}"], check=True, env=ENV)
    return time.monotonic() - started


def summary(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs if key in r]
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--model", default="", help="also measure a learning node with this model.path")
    parser.add_argument("--bin", type=Path, default=Path(sys.executable).parent, help="directory holding knexa-node")
    args = parser.parse_args()
    python = args.bin / "python"
    print(f"knexa-node from {args.bin}; import in a fresh interpreter: libp2p {import_s(python, 'libp2p'):.2f} s, "
          f"torch {import_s(python, 'torch'):.2f} s")
    roles = [("relay", "")] + ([("learning", args.model)] if args.model else [])
    with tempfile.TemporaryDirectory() as tmp:
        for role, model in roles:
            home = Path(tmp) / role
            init = [str(args.bin / "knexa-node"), "init", "--home", str(home), "--listen", "/ip4/127.0.0.1/tcp/0"]
            subprocess.run(init + (["--model", model] if model else []), check=True, capture_output=True, env=ENV)
            runs = [one_start(args.bin, home, args.idle, wait_model=bool(model)) for _ in range(args.starts)]
            print(f"{role:8} x{args.starts}: ready {summary(runs, 'ready_s')} s (CPU {summary(runs, 'cpu_ready_s')} s), model ready {summary(runs, 'model_ready_s')} s, "
                  f"RSS at ready {summary(runs, 'rss_ready_mib')} MiB, after {args.idle:g} s idle {summary(runs, 'rss_idle_mib')} MiB, "
                  f"torch mapped in {sum(r['torch_mapped'] for r in runs):.0f}/{len(runs)}  [median (min-max)]")


if __name__ == "__main__":
    main()
