"""Five daemons as separate processes on 127.0.0.1: DHT discovery, CPM gossip, SIGKILL and rejoin.

A bootstrap node, a CPM and three nodes that know only the bootstrap each run
``knexa-node start`` / ``knexa-cpm start`` with their own home. Checks go
through the command line (``status --json``, ``peers --json``); polling while
waiting uses the same control socket directly to save interpreter start-ups.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

from knexa_node.daemon.control import ControlError, call

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def cli(tool: str, *args: str, timeout: float = 120) -> str:
    done = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, f"{tool} {' '.join(args)}: {done.stderr}"
    return done.stdout


def cli_json(tool: str, *args: str) -> object:
    return json.loads(cli(tool, *args, "--json"))


class Daemon:
    def __init__(self, tool: str, home: Path) -> None:
        self.tool, self.home = tool, home
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict = {}

    def start(self, timeout: float = 120) -> dict:
        self.proc = subprocess.Popen([str(BIN / self.tool), "start", "--home", str(self.home), "--log-format", "json"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if selector.select(timeout=max(deadline - time.monotonic(), 0)):
                line = self.proc.stdout.readline()
                if not line:
                    break
                event = json.loads(line)
                if event.get("event") == "ready":
                    self.ready = event
                    return event
        raise AssertionError(f"{self.tool} on {self.home} did not get ready (exit {self.proc.poll()})")

    def control(self, cmd: str) -> object:
        try:
            return call(self.home / "control.sock", cmd, timeout=5)
        except ControlError:
            return None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def peer_ids(daemon: Daemon) -> set[str]:
    peers = daemon.control("peers") or []
    return {p["peer_id"] for p in peers}


@pytest.mark.slow
def test_five_daemons_discover_gossip_and_rejoin(tmp_path: Path) -> None:
    homes = {name: tmp_path / name for name in ("boot", "cpm", "n1", "n2", "n3")}
    daemons: dict[str, Daemon] = {}
    try:
        cli("knexa-node", "init", "--home", str(homes["boot"]), "--listen", LOOPBACK, "--name", "boot")
        daemons["boot"] = Daemon("knexa-node", homes["boot"])
        join = daemons["boot"].start()["addrs"][0]
        cpm_id = cli("knexa-cpm", "init", "--home", str(homes["cpm"]), "--listen", LOOPBACK, "--bootstrap", join).split()[-1]
        daemons["cpm"] = Daemon("knexa-cpm", homes["cpm"])
        for name in ("n1", "n2", "n3"):
            cli("knexa-node", "init", "--home", str(homes[name]), "--listen", LOOPBACK, "--bootstrap", join,
                "--cpm", cpm_id, "--name", name)
            daemons[name] = Daemon("knexa-node", homes[name])
        for name in ("cpm", "n1", "n2", "n3"):
            daemons[name].start()
        ids = {name: d.ready["peer_id"] for name, d in daemons.items()}
        everyone = set(ids.values())

        # Nodes knew only the bootstrap: the DHT must have told them about each other.
        nodes = ("n1", "n2", "n3")
        wait_for(lambda: all(peer_ids(daemons[n]) == everyone - {ids[n]} for n in nodes), 45, "discovery through the DHT")
        peers = cli_json("knexa-node", "peers", "--home", str(homes["n1"]))
        assert {p["peer_id"] for p in peers} == everyone - {ids["n1"]}
        assert all(p["addrs"] for p in peers)

        # A signed RoundOpen from the CPM reaches every node (its status shows it).
        def meshed(d: Daemon) -> bool:
            status = d.control("status") or {}
            return any(t["mesh"] > 0 for t in status.get("topics", {}).values())

        wait_for(lambda: all(meshed(d) for d in daemons.values()), 30, "gossip meshes")
        announced = cli_json("knexa-cpm", "round", "open", "--round", "3", "--home", str(homes["cpm"]))
        assert announced["round"] == 3

        def saw_round(d: Daemon) -> bool:
            last = (d.control("status") or {}).get("last_round")
            return bool(last) and last["round"] == 3 and last["cpm"] == cpm_id

        wait_for(lambda: all(saw_round(daemons[n]) for n in ("boot", *nodes)), 20, "the round announcement")
        status = cli_json("knexa-node", "status", "--home", str(homes["n2"]))
        assert status["last_round"]["round"] == 3 and status["last_round"]["trusted"] is True
        assert status["dht_routing_table_size"] >= 3

        # SIGKILL a node: its lock and socket are stale; a restart rejoins with the same peer ID.
        daemons["n3"].kill()
        wait_for(lambda: ids["n3"] not in peer_ids(daemons["n1"]), 30, "n1 to notice n3's death")
        again = daemons["n3"].start()
        assert again["peer_id"] == ids["n3"]
        wait_for(lambda: peer_ids(daemons["n3"]) == everyone - {ids["n3"]}, 45, "n3 to rejoin everyone")
        wait_for(lambda: ids["n3"] in peer_ids(daemons["n1"]), 30, "n1 to see n3 again")
        peers = cli_json("knexa-node", "peers", "--home", str(homes["n1"]))
        assert ids["n3"] in {p["peer_id"] for p in peers}

        # A clean stop through the CLI.
        stopped = cli_json("knexa-node", "stop", "--home", str(homes["n2"]))
        assert stopped["stopped"] is True
        assert daemons["n2"].proc.wait(timeout=10) == 0
    finally:
        for daemon in daemons.values():
            daemon.kill()
