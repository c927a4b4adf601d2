"""A node's five data sets, from its config: private train/validation, public transfer/dev, local test.

Files given in ``[data]`` win; anything left empty comes from the embedded
task (seeded, so every node of a consortium draws the same public sets and
its own Dirichlet shard). The private sets never leave the node; the transfer
set is what teachers answer, the dev set covers every category (reward on
what the student lacks), the test set is never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from knexa_node.config import Config
from knexa_node.learn.data import assert_disjoint, dirichlet_split, embedded_task_with_transfer, load_jsonl, split_validation
from knexa_node.learn.problems import Problem


@dataclass(frozen=True)
class NodeData:
    train: list[Problem]
    validation: list[Problem]
    transfer: list[Problem]
    dev: list[Problem]
    test: list[Problem]

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in ("train", "validation", "transfer", "dev", "test")}


def load_node_data(config: Config, *, base: Path | None = None) -> NodeData:
    """Assemble the node's data; raises ``DataError`` (from the loader) for bad files."""
    data = config.data

    def path(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() or base is None else base / p

    # Files first: a broken file is reported before seconds are spent drawing the embedded task.
    files = {name: load_jsonl(path(value)) for name, value in
             (("train", data.train), ("validation", data.validation), ("transfer", data.transfer),
              ("dev", data.dev), ("test", data.test)) if value}
    task = None if len(files.keys() - {"validation"}) == 4 else embedded_task_with_transfer(data.seed, data.transfer_per_category)
    if task is None or "train" in files:  # task is None only when every file, train included, is given
        private = files["train"]
    else:
        shards = dirichlet_split(task.train_pool, data.shards, data.dirichlet_alpha, seed=data.seed,
                                 per_client=data.shard_size or None)
        if data.shard >= len(shards):
            raise ValueError(f"data.shard {data.shard} is out of range for data.shards {data.shards}")
        private = shards[data.shard]
    if "validation" in files:
        train, validation = private, files["validation"]
    else:
        train, validation = split_validation(private, 0.1, seed=data.seed + data.shard)
    transfer = files["transfer"] if "transfer" in files else task.transfer  # type: ignore[union-attr]
    dev = files["dev"] if "dev" in files else task.dev  # type: ignore[union-attr]
    test = files["test"] if "test" in files else task.test  # type: ignore[union-attr]
    # Public transfer/dev/test must never contain a private training prompt.
    assert_disjoint(train + validation, transfer, test)
    assert_disjoint(train + validation, dev)
    return NodeData(train, validation, transfer, dev, test)
