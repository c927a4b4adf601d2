"""The demo's layout: homes, identities, and each node's config (read back through the real loader)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from knexa_node.config import load_config
from knexa_lab.plan import DemoSettings, demo_shard_size, lay_out
from knexa_node.learn.data import EMBEDDED_POOL


def test_configs_name_the_cpm_members_and_a_shard_each(tmp_path: Path) -> None:
    layout = lay_out(tmp_path, DemoSettings(nodes=3, seed=7, shard_size=50))
    configs = [load_config(home.config_file) for home in layout.nodes]
    assert [c.data.shard for c in configs] == [0, 1, 2] and {c.data.shards for c in configs} == {3}
    assert all(c.consortium.cpm == layout.cpm_peer and c.consortium.members == layout.node_peers for c in configs)
    assert configs[0].node.bootstrap == [] and all(layout.node_peers[0] in c.node.bootstrap[0] for c in configs[1:])
    assert len(set(layout.ports)) == 4
    again = lay_out(tmp_path, DemoSettings(nodes=3))
    assert again.node_peers == layout.node_peers  # identities are kept across runs in one workdir


def test_the_cpm_config_carries_teachers_per_student_and_what_a_package_carries(tmp_path: Path) -> None:
    layout = lay_out(tmp_path, DemoSettings(nodes=3, teachers_per_student=2, exchange_budget=96, transfer_per_category=32))
    cpm = load_config(layout.cpm.config_file).cpm
    assert cpm.teachers_per_student == 2 and cpm.package_categories == 3.0
    default = lay_out(tmp_path / "d", DemoSettings(nodes=3))
    assert load_config(default.cpm.config_file).cpm.teachers_per_student == 1
    assert load_config(default.cpm.config_file).cpm.package_categories == 64 / 16
    unbounded = lay_out(tmp_path / "u", DemoSettings(nodes=3, exchange_budget=0))
    assert load_config(unbounded.cpm.config_file).cpm.package_categories == 0.0


def test_a_pretrained_directory_gets_the_adapter_learning_rate(tmp_path: Path) -> None:
    settings = DemoSettings(nodes=2, models=(str(tmp_path / "smollm2"), "embedded:gpt2-tiny"), lr=2e-3,
                            pretrained_lr=3e-4)
    pretrained, embedded = (load_config(home.config_file) for home in lay_out(tmp_path / "w", settings).nodes)
    assert pretrained.model.path.endswith("smollm2") and pretrained.learning.lr == pytest.approx(3e-4)
    assert embedded.model.path == "embedded:gpt2-tiny" and embedded.learning.lr == pytest.approx(2e-3)


def test_too_small_a_consortium_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        lay_out(tmp_path, DemoSettings(nodes=1))


def test_the_demo_shard_is_600_where_the_pool_allows_and_a_too_large_one_is_refused() -> None:
    assert demo_shard_size(4) == 600 and demo_shard_size(8) == 600
    assert demo_shard_size(16) == EMBEDDED_POOL // 16 < 600  # 16 nodes cannot all have 600
    assert demo_shard_size(16, 0) == 0 and demo_shard_size(3, 240) == 240  # asked for: kept
    with pytest.raises(ValueError, match="embedded pool"):
        demo_shard_size(16, 600)


def test_the_demo_command_refuses_shards_larger_than_the_pool_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "knexa-node"), "demo", "--nodes", "16", "--shard-size", "600",
                           "--workdir", str(tmp_path / "c")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: --shard-size: 600 x 16 nodes, but the embedded pool holds 4800")
    assert "Traceback" not in done.stderr and not (tmp_path / "c").exists()
