"""CPU figures of the learning engine per round, for the embedded models, with 1 torch thread.

For each model: a node with a Dirichlet(alpha) private shard trains for
``--rounds`` rounds; each round prints the local epoch time, the teacher
package time (text, the public transfer set), the distillation time of a
package from the other model, and Pass@1 on the held-out test set, so the
output also shows whether a few rounds move Pass@1. Prints one JSON object.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/learn_cpu.py --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from knexa_node.learn.agent import Agent, AgentConfig  # noqa: E402
from knexa_node.learn.data import dirichlet_split, embedded_task, split_validation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama-tiny,neox-tiny")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=400)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = embedded_task(0, train_per_category=200, transfer_per_category=16, dev_per_category=4, test_per_category=8)
    names = args.models.split(",")
    shards = dirichlet_split(task.train_pool, len(names), args.alpha, seed=0, per_client=args.per_client)
    home = Path(tempfile.mkdtemp(prefix="knexa-bench-"))
    agents = []
    for index, name in enumerate(names):
        train, validation = split_validation(shards[index], 0.1, seed=index)
        config = AgentConfig(train_mode="full", lr=args.lr, batch_size=args.batch_size, max_new_tokens=48,
                             total_rounds=args.rounds)
        agents.append(Agent(f"embedded:{name}", home / name, config, train=train, validation=validation))
    figures: dict = {"threads": args.threads, "transfer": len(task.transfer), "test": len(task.test), "models": {}}
    for index, agent in enumerate(agents):
        figures["models"][names[index]] = {"parameters": agent.total_parameters, "train": len(agent.train_set),
                                           "rounds": []}
    for round_index in range(args.rounds):
        packages = []
        for index, agent in enumerate(agents):
            epoch = agent.local_epoch()
            package = agent.teacher_package(task.transfer, protocol="text")
            packages.append(package)
            figures["models"][names[index]]["rounds"].append(
                {"local_epoch_s": round(epoch.seconds, 2), "train_loss": round(epoch.mean_loss, 3),
                 "teacher_package_s": round(package.seconds, 2), "package_bytes": package.nbytes})
        for index, agent in enumerate(agents):
            teacher_package = packages[(index + 1) % len(agents)]
            report = agent.distill(teacher_package.payload, task.transfer, dev=task.dev)
            started = time.monotonic()
            evaluation = agent.evaluate(task.test)
            row = figures["models"][names[index]]["rounds"][-1]
            row.update({"distill_s": round(report.seconds, 2), "reward": round(report.reward, 4),
                        "reward_dev": round(report.reward_dev or 0.0, 4), "eval_s": round(time.monotonic() - started, 2),
                        "pass1": round(evaluation.pass_at[1].value, 3),
                        "pass1_ci": [round(evaluation.pass_at[1].low, 3), round(evaluation.pass_at[1].high, 3)]})
            row["round_total_s"] = round(row["local_epoch_s"] + row["teacher_package_s"] + row["distill_s"] + row["eval_s"], 2)
            agent.finish_round()
            print(json.dumps({"round": round_index, "model": names[index], **row}), flush=True)
    for name, data in figures["models"].items():
        data["median_round_s"] = statistics.median(r["round_total_s"] for r in data["rounds"])
        data["median_local_epoch_s"] = statistics.median(r["local_epoch_s"] for r in data["rounds"])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
