"""Helpers for the wiring tests: a tiny real model, real keys, daemons whose networks run on loopback.

A :class:`Node` is a real :class:`~knexa_node.daemon.daemon.Daemon` (its
home, config, signer, network) with an :class:`ExchangeService` installed;
only ``Daemon.run`` is skipped (signals, lock, control socket are not under
test here): its network is started the same way ``run`` starts it.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import trio

from knexa_node.config import Config
from knexa_node.crypto import Signer
from knexa_node.daemon.daemon import Daemon
from knexa_node.daemon.exchanges import ExchangeService
from knexa_node.daemon.logs import EventLog
from knexa_node.identity import NodeHome
from knexa_node.learn.agent import Agent, AgentConfig
from knexa_node.learn.data import dirichlet_split, embedded_task, split_validation
from knexa_node.learn.embedded import (
    ModelSpec,
    TokenizerSpec,
    build_model_dir,
    train_tokenizer,
)
from knexa_node.learn.sandbox import SandboxLimits
from knexa_node.testing import loopback_params
from knexa_node.wire import PairingProposal, seal_envelope

torch.set_num_threads(1)

TASK = embedded_task(0, train_per_category=8, transfer_per_category=1, dev_per_category=1, test_per_category=1)
SHARDS = dirichlet_split(TASK.train_pool, 2, 0.3, seed=0, per_client=48)
TRANSFER = TASK.transfer
CONSORTIUM = "wiring"


def build_tiny_model(root: Path) -> Path:
    """A 2-layer Llama-shaped model and its BPE tokenizer, built offline (about a second)."""
    spec = TokenizerSpec(vocab_size=320, corpus_per_category=20)
    model = ModelSpec("llama", spec, hidden=48, layers=2, heads=2, intermediate=96, max_positions=256)
    return build_model_dir(model, root / "llama", train_tokenizer(spec))


def make_agent(model_dir: Path, state: Path, shard: int = 0) -> Agent:
    train, validation = split_validation(SHARDS[shard], 0.2, seed=shard)
    config = AgentConfig(train_mode="full", lr=3e-3, batch_size=8, max_new_tokens=10, top_k_logits=8,
                         sandbox=SandboxLimits(timeout_s=1.0, cpu_s=1))
    return Agent(str(model_dir), state, config, train=train, validation=validation)


def private_texts(shard: int) -> list[str]:
    return [p.prompt + p.solution for p in SHARDS[shard]]


def agent_call_for(agent: Any) -> Callable:
    """The learner's contract, in miniature: ``fn(agent)`` in a worker thread under the agent's lock."""
    lock = trio.Lock()

    async def call(fn: Callable[[Any], Any]) -> Any:
        async with lock:
            return await trio.to_thread.run_sync(fn, agent)

    return call


def proposal(cpm: Signer, teacher: str, student: str, *, round_: int = 1, protocol: str = "text") -> tuple[bytes, PairingProposal]:
    message = PairingProposal(proposal_id=os.urandom(16), round=round_, teacher=teacher, student=student,
                              protocol=protocol, context=(0.5, 0.25), score=1.0, expires=time.time() + 600)
    return seal_envelope(cpm, message).to_bytes(), message


@dataclass
class Node:
    daemon: Daemon
    service: ExchangeService
    events: io.StringIO
    agent: Any = None
    round: int | None = 1

    @property
    def peer_id(self) -> str:
        return self.daemon.signer.peer_id

    def logged(self, name: str) -> list[str]:
        return [line for line in self.events.getvalue().splitlines() if f" {name} " in f" {line} "]


@dataclass
class NodeSpec:
    agent: Any
    private: list[str]
    members: list[int] | None = None  # indices of the nodes on this node's allow-list; None: all
    dp: bool = False
    timeout_s: float = 30.0


def node_config(cpm: str, members: list[str], *, dp: bool = False, timeout_s: float = 30.0) -> Config:
    config = Config()
    config.consortium.name = CONSORTIUM
    config.consortium.cpm = cpm
    config.consortium.members = list(members)
    config.exchange.timeout_s = timeout_s
    config.privacy.dp_enabled = dp
    config.privacy.dp_epsilon_per_exchange = 2.0
    config.privacy.dp_budget_per_peer = 5.0
    return config


@asynccontextmanager
async def consortium(tmp_path: Path, cpm: Signer, specs: list[NodeSpec], *, start: bool = True) -> AsyncIterator[list[Node]]:
    """Daemons for ``specs`` with their exchange services, networks running and all connected to node 0.

    ``start=False`` leaves the networks to the caller (to run the whole ``Daemon.run``).
    """
    signers = [Signer.generate() for _ in specs]
    ids = [s.peer_id for s in signers]
    nodes: list[Node] = []
    for index, (spec, signer) in enumerate(zip(specs, signers)):
        home = NodeHome(tmp_path / f"node{index}")
        home.create_dirs()
        members = ids if spec.members is None else [ids[i] for i in spec.members]
        config = node_config(cpm.peer_id, members, dp=spec.dp, timeout_s=spec.timeout_s)
        events = io.StringIO()
        daemon = Daemon(home, config, signer, log=EventLog("human", out=io.StringIO(), err=events),
                        params=loopback_params(consortium=CONSORTIUM))
        node = Node(daemon, None, events, spec.agent)  # type: ignore[arg-type]
        node.service = ExchangeService(daemon, agent_call_for(spec.agent), TRANSFER, spec.private,
                                       lambda node=node: node.round, checkpoint_every=64)
        node.service.install()
        nodes.append(node)
    try:
        if not start:
            yield nodes
            return
        async with trio.open_nursery() as nursery:
            with trio.fail_after(20):
                for node in nodes:
                    await nursery.start(node.daemon.net.serve)
                hub = nodes[0].daemon.net
                for node in nodes[1:]:
                    net = node.daemon.net
                    net.host.get_peerstore().add_addrs(hub.host.get_id(), hub.host.get_addrs(), 10**9)
                    await net.connect(hub.peer_id)
            yield nodes
            nursery.cancel_scope.cancel()
    finally:
        for node in nodes:
            node.service.close()
