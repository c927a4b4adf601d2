"""`knexa-node init` / `id` and `knexa-cpm init` / `id` through the real entry points."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=60)


def test_init_then_id_is_stable(tmp_path: Path) -> None:
    home = tmp_path / "org-a"
    created = run("knexa-node", "init", "--home", str(home), "--name", "org-a", "--listen", "/ip4/127.0.0.1/tcp/4101", "--consortium", "demo")
    assert created.returncode == 0, created.stderr
    peer_id = created.stdout.strip().splitlines()[-1]
    assert peer_id.startswith("12D3KooW")
    assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o600
    config = (home / "config.toml").read_text()
    assert 'name = "org-a"' in config and "# " in config
    for _ in range(2):
        shown = run("knexa-node", "id", "--home", str(home), "--json")
        document = json.loads(shown.stdout)
        assert document["peer_id"] == peer_id
        assert document["addrs"] == [f"/ip4/127.0.0.1/tcp/4101/p2p/{peer_id}"]
    again = run("knexa-node", "init", "--home", str(home))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert run("knexa-node", "id", "--home", str(home)).stdout.strip() == peer_id


def test_cpm_init_and_id(tmp_path: Path) -> None:
    created = run("knexa-cpm", "init", "--home", str(tmp_path / "cpm"))
    assert created.returncode == 0, created.stderr
    peer_id = created.stdout.strip().splitlines()[-1]
    assert run("knexa-cpm", "id", "--home", str(tmp_path / "cpm")).stdout.strip() == peer_id


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--listen", "/ip4/999.1.1.1/tcp/1"], "--listen: malformed multiaddr"),
        (["--bootstrap", "/ip4/127.0.0.1/tcp/1"], "--bootstrap"),
        (["--cpm", "not-a-peer-id"], "--cpm: malformed peer ID"),
    ],
)
def test_bad_flags_exit_2_without_traceback(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = run("knexa-node", "init", "--home", str(tmp_path / "h"), *args)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "h" / "identity.key").exists()


def test_bad_config_file_exit_2(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert run("knexa-node", "init", "--home", str(home)).returncode == 0
    (home / "config.toml").write_text("[node]\nlisten = ['/ip4/1.2.3.4/tcp/abc']\n")
    result = run("knexa-node", "id", "--home", str(home))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "node.listen[0]" in result.stderr and "Traceback" not in result.stderr
    os.unlink(home / "config.toml")
    result = run("knexa-node", "id", "--home", str(home))
    assert result.returncode == 2 and "file not found" in result.stderr
