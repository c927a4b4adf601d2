"""`knexa-node doctor`: local verdicts from real homes, and the network probe against a real CPM daemon."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from knexa_node.config import Config, NodeSection
from knexa_node.doctor.checks import check_addresses, worst
from knexa_node.doctor.probe import checks_from_status, skew_check
from knexa_node.identity import NodeHome

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
PEER = "12D3KooWGKsX5XBHG97TJWKy5ZJoVhe297TX4V6FTSQHRBFjauar"


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=ENV, timeout=timeout)


def doctor(home: Path, *extra: str) -> tuple[int, dict]:
    result = run("knexa-node", "doctor", "--home", str(home), "--json", *extra)
    return result.returncode, json.loads(result.stdout)


def set_bootstrap(home: Path, addr: str) -> None:
    config = home / "config.toml"
    config.write_text(re.sub(r"(?m)^bootstrap = .*$", f'bootstrap = ["{addr}"]', config.read_text(), count=1))


def by_name(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for check in report["checks"]:
        out.setdefault(check["check"], []).append(check)
    return out


def test_addresses_verdicts():
    remote_boot = [f"/ip4/203.0.113.7/tcp/4001/p2p/{PEER}"]
    loopback = Config(node=NodeSection(listen=["/ip4/127.0.0.1/tcp/4001"], bootstrap=remote_boot))
    assert worst(check_addresses(loopback)) == "fail"
    unspecified = Config(node=NodeSection(listen=["/ip4/0.0.0.0/tcp/4001"], bootstrap=remote_boot))
    assert [c.level for c in check_addresses(unspecified) if c.name == "addresses"] == ["warn"]
    announced = Config(node=NodeSection(listen=["/ip4/0.0.0.0/tcp/4001"], announce=["/ip4/198.51.100.2/tcp/4001"],
                                        bootstrap=remote_boot))
    assert [c.level for c in check_addresses(announced) if c.name == "addresses"] == ["ok"]


def test_skew_and_running_status_verdicts():
    assert skew_check(0.4, "x").level == "ok"
    assert skew_check(-12.0, "x").level == "warn"
    assert skew_check(300.0, "x").level == "fail"
    config = Config(node=NodeSection(bootstrap=[f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"]))
    status = {"pid": 1, "connected_peers": [{"peer_id": PEER}], "last_round": {"sent_at": 100.0, "received_at": 100.5}}
    verdicts = {c.name: c.level for c in checks_from_status(config, status)}
    assert verdicts == {"daemon": "ok", "bootstrap": "ok", "clock": "ok"}
    lonely = {c.name: c.level for c in checks_from_status(config, {"connected_peers": []})}
    assert lonely["bootstrap"] == "warn" and lonely["clock"] == "warn"


@pytest.mark.slow
def test_local_checks_on_real_homes(tmp_path):
    home = tmp_path / "h"
    assert run("knexa-node", "init", "--home", str(home), "--listen", "/ip4/127.0.0.1/tcp/0").returncode == 0
    code, report = doctor(home, "--offline")
    checks = by_name(report)
    assert code == 0 and report["verdict"] in ("ok", "warn")
    assert checks["config"][0]["level"] == "ok" and checks["files"][0]["level"] == "ok"
    assert {"disk", "model", "sandbox"} <= checks.keys()
    os.chmod(NodeHome(home).key_file, 0o644)
    code, report = doctor(home, "--offline")
    assert code == 1 and by_name(report)["files"][0]["level"] == "fail"
    os.chmod(NodeHome(home).key_file, 0o600)
    NodeHome(home).config_file.write_text("[node]\nlisten = 5\n")
    code, report = doctor(home, "--offline")
    assert code == 1 and by_name(report)["config"][0]["level"] == "fail" and "listen" in by_name(report)["config"][0]["message"]
    human = run("knexa-node", "doctor", "--home", str(home), "--offline")
    assert human.returncode == 1 and "FAIL  config" in human.stdout and "verdict: fail" in human.stdout


@pytest.mark.slow
def test_probe_against_a_real_cpm(tmp_path):
    """Not a member: the CPM's signed refusal is the verdict; a member: ok, with the clock skew measured."""
    cpm_home, node_home = tmp_path / "cpm", tmp_path / "node"
    assert run("knexa-cpm", "init", "--home", str(cpm_home), "--listen", "/ip4/127.0.0.1/tcp/0").returncode == 0
    cpm_id = json.loads(run("knexa-cpm", "id", "--home", str(cpm_home), "--json").stdout)["peer_id"]
    assert run("knexa-node", "init", "--home", str(node_home), "--listen", "/ip4/127.0.0.1/tcp/0", "--cpm", cpm_id).returncode == 0
    node_id = json.loads(run("knexa-node", "id", "--home", str(node_home), "--json").stdout)["peer_id"]
    config = cpm_home / "config.toml"
    config.write_text(config.read_text().replace("members = []", f'members = ["{PEER}"]'))
    proc = subprocess.Popen([str(BIN / "knexa-cpm"), "start", "--home", str(cpm_home), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    try:
        ready = json.loads(proc.stdout.readline())
        set_bootstrap(node_home, ready["addrs"][0])
        code, report = doctor(node_home)
        checks = by_name(report)
        assert checks["bootstrap"][0]["level"] == "ok", checks
        assert checks["cpm"][-1]["level"] == "fail" and "not-member" in checks["cpm"][-1]["message"]
        assert code == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    config.write_text(config.read_text().replace(f'members = ["{PEER}"]', f'members = ["{node_id}"]'))
    proc = subprocess.Popen([str(BIN / "knexa-cpm"), "start", "--home", str(cpm_home), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    try:
        ready = json.loads(proc.stdout.readline())
        set_bootstrap(node_home, ready["addrs"][0])  # the CPM listens on a new port after its restart
        code, report = doctor(node_home)
        checks = by_name(report)
        assert checks["cpm"][-1]["level"] == "ok", checks
        assert checks["clock"][0]["level"] == "ok" and "against the CPM" in checks["clock"][0]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
