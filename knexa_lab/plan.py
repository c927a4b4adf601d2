"""Lay out a local consortium: one CPM home and N node homes, each with its own identity and config.

Everything is written under one work directory so that it can be inspected
and audited after the run (``<workdir>/cpm``, ``<workdir>/node-0``, ...).
Nodes get heterogeneous embedded models (two families or more, two
tokenizers), their own Dirichlet shard of the embedded task, and the first
node as bootstrap peer; everyone's config names the CPM and the member list.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from knexa_node.config import Config, render_config
from knexa_node.fsutil import atomic_write_text
from knexa_node.identity import NodeHome, create_identity, load_identity
from knexa_node.learn.data import EMBEDDED_POOL
from knexa_node.models import EMBEDDED_PREFIX
DEFAULT_MODELS = ("embedded:llama-tiny", "embedded:neox-tiny", "embedded:gpt2-tiny", "embedded:qwen2-tiny")
# The demo's private problems per node: a node learns its few categories in 8 warm-up epochs of 600
# (as in the study), which cost what 4 epochs of a 4-node equal share (1,200) did, and leave the
# round's compute to the exchanges (docs/study.md, "The demo at a size where exchanges show").
DEMO_SHARD_SIZE = 600


def check_shard_size(nodes: int, size: int) -> int:
    """``size`` private problems for each of ``nodes`` (0: an equal share), if the embedded pool has them all."""
    if size < 0 or size * nodes > EMBEDDED_POOL:  # else the last nodes' shards would come up short, silently
        raise ValueError(f"{size} x {nodes} nodes, but the embedded pool holds {EMBEDDED_POOL} problems")
    return size


def demo_shard_size(nodes: int, requested: int | None = None) -> int:
    """Private problems per node: ``requested`` (checked), else 600 or the equal share if smaller."""
    if requested is None:
        return min(DEMO_SHARD_SIZE, EMBEDDED_POOL // nodes)
    return check_shard_size(nodes, requested)


@dataclass
class DemoSettings:
    nodes: int = 4
    rounds: int = 3
    policy: str = "knexa"
    seed: int = 0
    models: tuple[str, ...] = DEFAULT_MODELS
    dirichlet_alpha: float = 0.3
    shard_size: int = 0  # 0: an equal share of the embedded pool
    lr: float = 2e-3  # tiny from-scratch (embedded) models
    pretrained_lr: float = 2e-4  # a LoRA adapter on a pretrained directory: 2e-3 would wash out what it knows
    batch_size: int = 16
    generation_batch_size: int = 32
    warmup_epochs: int = 1
    epochs_per_round: int = 1
    teachers_per_student: int = 1  # c: teachers per student and students per teacher in a round (1: the paper's disjoint pairs)
    verify: str = "tests"  # teacher answers: "tests" (only those passing the public tests) or "off" (all, the paper)
    targeted: bool = True  # students ask for their weak categories (public dev set); teachers answer those
    exchange_budget: int = 64  # transfer prompts a teacher answers per request at most (0: all)
    teacher_samples: int = 2  # sampled candidates per tested prompt whose greedy answer failed
    distill_epochs: int = 2  # passes over the received items in one distillation phase
    received_memory: int = 2000  # verified received answers replayed in later local epochs (0: none)
    replay_after: float = 1.0  # own-data steps ending a distillation phase, per distillation step
    skip_held: bool = True  # requests name the transfer prompts already held, so teachers answer new ones
    transfer_per_category: int = 16  # public transfer prompts per category of the embedded task
    distill_guard: str = "dev"  # undo a distillation phase after which dev Pass@1 fell ("off": keep all)
    reward: str = "covered"  # reward fed to the policy: "covered" (dev Pass@1 gain on covered categories) or "eq3"
    warmup_cache: str = ""  # lock-step runs: a directory where the warm-up of each (seed, node) is kept and reused
    round_deadline_s: float = 600.0
    proposal_ttl_s: float = 600.0
    protocol: str = "text"
    dp: bool = False
    consortium: str = "demo"
    dashboard: bool = False  # every daemon serves its dashboard on a loopback port (DemoLayout.dashboards)

    def package_categories(self) -> float:
        """What one package carries in categories' worth of transfer prompts (0: no budget), for the CPM's estimate."""
        return self.exchange_budget / self.transfer_per_category if self.exchange_budget > 0 else 0.0


@dataclass
class DemoLayout:
    workdir: Path
    cpm: NodeHome
    nodes: list[NodeHome]
    cpm_peer: str
    node_peers: list[str]
    ports: list[int] = field(default_factory=list)  # CPM first, then nodes
    dashboards: list[str] = field(default_factory=list)  # dashboard URLs, CPM first, then nodes (if asked)


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _identity(home: NodeHome) -> str:
    """Reuse a home's identity across runs in the same workdir, so peer IDs stay stable."""
    if home.key_file.exists():
        return load_identity(home).peer_id
    return create_identity(home).peer_id


def lay_out(workdir: Path, settings: DemoSettings) -> DemoLayout:
    if settings.nodes < 2:
        raise ValueError("a consortium needs at least 2 nodes")
    if settings.rounds < 1:
        raise ValueError("rounds must be at least 1")
    workdir.mkdir(parents=True, exist_ok=True)
    cpm_home = NodeHome(workdir / "cpm")
    node_homes = [NodeHome(workdir / f"node-{i}") for i in range(settings.nodes)]
    cpm_peer = _identity(cpm_home)
    node_peers = [_identity(home) for home in node_homes]
    ports = free_ports((settings.nodes + 1) * (2 if settings.dashboard else 1))
    dashboard_ports = ports[settings.nodes + 1:]
    addr = lambda port: f"/ip4/127.0.0.1/tcp/{port}"  # noqa: E731
    bootstrap = [f"{addr(ports[1])}/p2p/{node_peers[0]}"]

    cpm_config = Config()
    cpm_config.node.name = "cpm"
    cpm_config.node.listen = [addr(ports[0])]
    cpm_config.node.bootstrap = bootstrap
    cpm_config.consortium.name = settings.consortium
    cpm_config.consortium.members = list(node_peers)
    cpm_config.cpm.policy = settings.policy
    cpm_config.cpm.auto_rounds = settings.rounds
    cpm_config.cpm.round_deadline_s = settings.round_deadline_s
    cpm_config.cpm.proposal_ttl_s = settings.proposal_ttl_s
    cpm_config.cpm.quorum = 1.0
    cpm_config.cpm.teachers_per_student = settings.teachers_per_student
    cpm_config.cpm.package_categories = settings.package_categories()
    _dashboard(cpm_config, dashboard_ports[:1])
    cpm_home.create_dirs()
    atomic_write_text(cpm_home.config_file, render_config(cpm_config), mode=0o600)

    for i, home in enumerate(node_homes):
        config = Config()
        config.node.name = f"node-{i}"
        config.node.listen = [addr(ports[i + 1])]
        config.node.bootstrap = [] if i == 0 else bootstrap
        config.consortium.name = settings.consortium
        config.consortium.cpm = cpm_peer
        config.consortium.members = list(node_peers)
        config.model.path = settings.models[i % len(settings.models)]
        config.data.seed = settings.seed
        config.data.shard = i
        config.data.shards = settings.nodes
        config.data.dirichlet_alpha = settings.dirichlet_alpha
        config.data.shard_size = settings.shard_size
        config.data.transfer_per_category = settings.transfer_per_category
        config.learning.lr = settings.lr if config.model.path.startswith(EMBEDDED_PREFIX) else settings.pretrained_lr
        config.learning.batch_size = settings.batch_size
        config.learning.generation_batch_size = settings.generation_batch_size
        config.learning.warmup_epochs = settings.warmup_epochs
        config.learning.epochs_per_round = settings.epochs_per_round
        config.learning.schedule_rounds = settings.rounds
        config.learning.verify = settings.verify
        config.learning.exchange_budget = settings.exchange_budget
        config.learning.teacher_samples = settings.teacher_samples
        config.learning.distill_epochs = settings.distill_epochs
        config.learning.received_memory = settings.received_memory
        config.learning.replay_after = settings.replay_after
        config.learning.skip_held = settings.skip_held
        config.learning.distill_guard = settings.distill_guard
        config.learning.reward = settings.reward
        config.exchange.protocol = settings.protocol
        config.exchange.timeout_s = settings.proposal_ttl_s
        config.privacy.dp_enabled = settings.dp
        _dashboard(config, dashboard_ports[i + 1:i + 2])
        home.create_dirs()
        atomic_write_text(home.config_file, render_config(config), mode=0o600)
    dashboards = [f"http://127.0.0.1:{port}/" for port in dashboard_ports]
    return DemoLayout(workdir, cpm_home, node_homes, cpm_peer, node_peers, ports[:settings.nodes + 1], dashboards)


def _dashboard(config: Config, port: list[int]) -> None:
    """Serve the daemon's dashboard on ``127.0.0.1:port[0]`` (no port: off)."""
    if port:
        config.dashboard.enabled = True
        config.dashboard.address = f"127.0.0.1:{port[0]}"
