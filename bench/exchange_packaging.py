"""What packaging adds to a teacher's package: guardrail and DP cost, verbatim drops, DP utility.

On the embedded llama-tiny architecture (built from config, untrained: the
timings do not depend on the weights), the embedded task's 192 transfer
prompts, one torch thread. Prints, as medians over --repeat runs:

- the agent's own ``teacher_package`` (text, logits), and ``Packager.build``
  for text without DP and for logits with DP, with the ratio to the agent alone;
- the guardrail's private n-gram index build for one node's shard, and the
  share of *correct* transfer answers (the reference solutions) that the
  verbatim-copy rule drops: the template task shares 12-token n-grams
  between problems, so this is the guardrail's utility cost on it;
- DP utility through the whole pipeline: share of released tokens equal to
  the teacher's clean greedy token, at several epsilons per exchange.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/exchange_packaging.py [--repeat 3] [--new-tokens 32] [--shard-size 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from knexa_node.config import PrivacySection
from knexa_node.crypto import Signer
from knexa_node.daemon.packaging import Packager
from knexa_node.learn.agent import Agent, AgentConfig
from knexa_node.learn.data import dirichlet_split, embedded_task, split_validation
from knexa_node.learn.embedded import EMBEDDED, build_model_dir
from knexa_node.learn.package import decode_package
from knexa_node.wire import PairingProposal


def paired_medians(first, second, repeat: int) -> tuple[float, float]:
    """Medians of two functions run alternately (a shared machine's load then hits both alike)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def privacy(dp: bool, epsilon: float = 1.0) -> PrivacySection:
    section = PrivacySection()
    section.dp_enabled = dp
    section.dp_epsilon_per_exchange = epsilon
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)

    task = embedded_task(0)
    shard = dirichlet_split(task.train_pool, 4, 0.3, seed=0, per_client=args.shard_size)[0]
    train, validation = split_validation(shard, 0.1, seed=0)
    private = [p.prompt + p.solution for p in shard]
    transfer = task.transfer
    teacher, student = Signer.generate(), Signer.generate()

    def proposal(protocol: str) -> PairingProposal:
        return PairingProposal(proposal_id=os.urandom(16), round=0, teacher=teacher.peer_id, student=student.peer_id,
                               protocol=protocol, context=(), score=0.0, expires=time.time() + 600)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(EMBEDDED["llama-tiny"], Path(tmp) / "model")
        agent = Agent(str(model_dir), Path(tmp) / "state",
                      AgentConfig(train_mode="full", max_new_tokens=args.new_tokens, top_k_logits=16),
                      train=train, validation=validation)
        print(f"model llama-tiny ({agent.total_parameters / 1e6:.1f}M params), {len(transfer)} transfer prompts, "
              f"{args.new_tokens} new tokens, private shard {len(shard)} problems, 1 torch thread, repeat {args.repeat}")

        start = time.perf_counter()
        plain = Packager(privacy(False), transfer, private)
        index_s = time.perf_counter() - start
        dropped = plain.guardrail.filter_items([p.solution for p in transfer]).dropped
        print(f"guardrail index: {index_s:.3f} s for {len(private)} private texts ({len(plain.guardrail.index)} n-grams)")
        print(f"correct transfer answers dropped as verbatim private data: {dropped}/{len(transfer)} "
              f"({dropped / len(transfer):.1%})")

        agent.teacher_package(transfer[:8], protocol="logits")  # warm-up
        agent_text, built_text = paired_medians(lambda: agent.teacher_package(transfer, protocol="text"),
                                                lambda: plain.build(agent, proposal("text")), args.repeat)
        noisy = Packager(privacy(True), transfer, private)
        agent_logits, built_dp = paired_medians(lambda: agent.teacher_package(transfer, protocol="logits"),
                                                lambda: noisy.build(agent, proposal("logits")), args.repeat)
        print(f"agent text package   {agent_text:.3f} s | Packager text, no DP  {built_text:.3f} s "
              f"(x{built_text / agent_text:.3f})")
        print(f"agent logits package {agent_logits:.3f} s | Packager logits + DP {built_dp:.3f} s "
              f"(x{built_dp / agent_logits:.3f})")

        clean = decode_package(agent.teacher_package(transfer, protocol="logits").payload, max_size=1 << 30)
        rows = sum(len(item.tokens) for item in clean.logits.values())
        for epsilon in (1.0, 10.0, 100.0, 1000.0):
            packager = Packager(privacy(True, epsilon), transfer, private, rng=np.random.default_rng(0))
            released = decode_package(packager.build(agent, proposal("logits")).payload, max_size=1 << 30)
            same = sum(int(np.sum(released.logits[k].tokens == item.tokens))
                       for k, item in clean.logits.items() if k in released.logits)
            print(f"DP epsilon {epsilon:>6g} per exchange over {rows} rows: released token = clean greedy token "
                  f"in {same / rows:.1%} of positions")


if __name__ == "__main__":
    main()
