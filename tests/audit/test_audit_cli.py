"""`knexa-node audit ...` on real logs: exit codes, JSON output, filters, repair, checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from audit_fixtures import StepClock, build_pair, log_exchange, make_exchange
from typer.testing import CliRunner

from knexa_cli.node import app
from knexa_node.audit import AuditLog, log_path
from knexa_node.crypto import Signer
from knexa_node.identity import NodeHome, create_identity

runner = CliRunner()


def audit(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["audit", *map(str, args)], env={"COLUMNS": "300"})
    return result.exit_code, result.output


def _home_with_log(tmp_path: Path, name: str = "org-a") -> tuple[NodeHome, Signer, Signer]:
    home = NodeHome(tmp_path / name)
    signer = create_identity(home)
    cpm, peer = Signer.generate(), Signer.generate()
    with AuditLog.open_home(home, signer, clock=StepClock()) as log, \
            AuditLog.open(tmp_path / f"{name}-peer.log", peer, clock=StepClock()) as peer_log:
        for r in range(2):
            log_exchange(log, peer_log, make_exchange(cpm, signer, peer, r))
    return home, signer, peer


def test_verify_exit_codes_and_json(tmp_path: Path) -> None:
    home, signer, _ = _home_with_log(tmp_path)
    code, out = audit("verify", "--home", home.root)
    assert code == 0 and "intact: 8 entries" in out and signer.peer_id in out
    code, out = audit("verify", log_path(home), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["entries"] == 8 and report["owner"] == signer.peer_id
    data = bytearray(log_path(home).read_bytes())
    data[len(data) // 2] ^= 0x10
    log_path(home).write_bytes(bytes(data))
    code, out = audit("verify", "--home", home.root, "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"] and report["problem"]["seq"] is not None and report["problem"]["reason"]
    code, out = audit("verify", "--home", home.root)
    assert code == 1 and "NOT intact" in out and f"entry {report['problem']['seq']}" in out


def test_usage_and_io_errors_exit_2(tmp_path: Path) -> None:
    home, _, _ = _home_with_log(tmp_path)
    assert audit("verify", log_path(home), "--home", home.root)[0] == 2
    assert audit("verify", tmp_path / "missing.log")[0] == 2
    assert audit("verify", "--home", home.root, "--checkpoints", log_path(home))[0] == 2  # not a store


def test_show_filters_and_export(tmp_path: Path) -> None:
    home, _, peer = _home_with_log(tmp_path)
    code, out = audit("show", "--home", home.root, "--round", "1", "--json")
    shown = json.loads(out)["entries"]
    assert code == 0 and len(shown) == 4 and {e["round"] for e in shown} == {1}
    code, out = audit("show", "--home", home.root, "--peer", Signer.generate().peer_id, "--json")
    assert code == 0 and json.loads(out)["entries"] == []
    code, out = audit("show", "--home", home.root)
    assert code == 0 and "package-sent" in out and "guardrail-redactions" in out
    code, out = audit("export", "--home", home.root, "--json")
    exported = json.loads(out)
    assert code == 0 and len(exported["entries"]) == 8 and exported["verify"]["ok"]
    assert all(e["peer"] == peer.peer_id for e in exported["entries"])


def test_cross_check_agrees_then_lists_mismatches(tmp_path: Path) -> None:
    _, _, path_a, path_b = build_pair(tmp_path, rounds=2)
    code, out = audit("cross-check", path_a, path_b, "--json")
    assert code == 0 and json.loads(out)["ok"] and json.loads(out)["common"] == 3
    # A third organization's log shares nothing with A; B's log with a torn last entry loses the refusal.
    other_home, _, _ = _home_with_log(tmp_path, "org-c")
    code, out = audit("cross-check", path_a, log_path(other_home))
    assert code == 0 and "0 common exchanges" in out
    data = path_b.read_bytes()
    short = tmp_path / "b-short.log"
    short.write_bytes(data[: len(data) - 1])  # torn tail: only the verified prefix is compared
    code, out = audit("cross-check", path_a, short, "--json")
    result = json.loads(out)
    assert code == 1 and result["verify_problems"]["b"]["problem"]["reason"] == "torn-tail"
    assert [m["kind"] for m in result["mismatches"]] == ["missing"]


def test_torn_tail_repair_and_checkpoint_commands(tmp_path: Path) -> None:
    home, _, _ = _home_with_log(tmp_path)
    path = log_path(home)
    path.write_bytes(path.read_bytes()[:-10])
    code, out = audit("verify", "--home", home.root, "--json")
    assert code == 1 and json.loads(out)["problem"]["reason"] == "torn-tail"
    code, out = audit("checkpoint", "--home", home.root)
    assert code == 2 and "audit repair" in out
    code, out = audit("repair", "--home", home.root)
    assert code == 0
    code, out = audit("checkpoint", "--home", home.root, "--json")
    assert code == 0 and json.loads(out)["seq"] == 7  # 7 entries kept + the log-repaired entry
    store = home.audit_dir / "checkpoints.log"
    code, out = audit("verify", "--home", home.root, "--checkpoints", store, "--json")
    assert code == 0 and json.loads(out)["checkpoints_checked"] == 1
    code, out = audit("show", "--home", home.root, "--json")
    assert json.loads(out)["entries"][-1]["kind"] == "log-repaired"


@pytest.mark.slow
def test_real_entry_point(tmp_path: Path) -> None:
    home, _, _ = _home_with_log(tmp_path)
    binary = Path(sys.executable).parent / "knexa-node"
    done = subprocess.run([str(binary), "audit", "verify", "--home", str(home.root), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout)["ok"], done.stderr


@pytest.mark.parametrize("columns", [60, 80, 120, 200])
def test_show_is_readable_at_any_width(tmp_path: Path, columns: int) -> None:
    """No header or value is folded into fragments; every line fits; --json stays complete."""
    home, signer, peer = _home_with_log(tmp_path)
    result = runner.invoke(app, ["audit", "show", "--home", str(home.root)], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= columns for line in lines), max(lines, key=len)
    words = result.output.split()
    for header in ("seq", "round", "kind", "outcome", "peer"):
        assert header in words or f"{header}:" in words, (header, result.output)
    assert peer.peer_id[-8:] in result.output  # the counterpart, whole
    for fragment in ("roun", "outc", "pack\n"):
        assert fragment not in words
    code, out = audit("show", "--home", home.root, "--json")
    entries = json.loads(out)["entries"]
    assert code == 0 and len(entries) == 8 and all({"metrics", "proposal_id", "receipt", "package_hash"} <= e.keys() for e in entries)
