"""Every directory a node writes is 0700 and every file 0600 (issue 15, finding 8).

``knexa-node init`` runs on a home whose directories already exist with
0755; then each writer of the node is called into that home (identity and
config, audit log and checkpoints, replay cache, privacy budget, agent state
with adapter weights and optimizer state, the round metrics file), and the
test walks the home.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import torch

from knexa_node.audit import AuditLog, CheckpointStore, Event, checkpoint_path, make_checkpoint
from knexa_node.exchange.replay import ReplayCache
from knexa_node.fsutil import atomic_write_text
from knexa_node.identity import NodeHome, load_identity
from knexa_node.learn.state import save_state
from knexa_node.privacy.budget import PrivacyBudget

BIN = Path(sys.executable).parent


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_init_and_every_writer_leave_a_private_home(tmp_path: Path) -> None:
    home = NodeHome(tmp_path / "org-a")
    for directory in (home.root, home.state_dir, home.audit_dir, home.logs_dir):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)  # as a previous tool or a umask of 022 left them
    created = subprocess.run([str(BIN / "knexa-node"), "init", "--home", str(home.root), "--name", "org-a"],
                             capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    signer = load_identity(home)

    with AuditLog.open_home(home, signer) as log, CheckpointStore.open(checkpoint_path(home)) as store:
        log.append(Event(kind="proposal-refused", round=1, outcome="refused", metrics={"code": "busy"}))
        store.add(make_checkpoint(log, signer).to_bytes())
    replay = ReplayCache.in_state_dir(home.state_dir)
    replay.add("proposal", 1, bytes(16))
    PrivacyBudget.in_state_dir(home.state_dir, total=10.0, per_peer=5.0).spend(signer.peer_id, 1.0, 1e-5)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    save_state(home.state_dir / "agent", 2, {"lora.weight": torch.zeros(3)}, optimizer.state_dict(), {"round": 2})
    atomic_write_text(home.state_dir / "metrics.jsonl", '{"round": 2}\n')  # what the participant writes each round

    modes = _modes(home.root)
    assert {"state/agent/round-000002/trainable.safetensors", "state/agent/round-000002/optimizer.pt",
            "state/metrics.jsonl", "audit/exchange.log", "identity.key", "config.toml"} <= set(modes)
    loose = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o700 if (home.root / name).is_dir() else 0o600)}
    assert not loose, loose
