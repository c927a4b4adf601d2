"""Baselines for comparison runs: the Central-KD server's ensemble teacher, and LocalOnly.

Central-KD (the paper's server baseline): every client sends its package to
a server, which merges them into one ensemble package that every client then
distils. Text packages merge by majority vote per transfer item (ties go to
the earliest package, so the result is deterministic). Logit packages merge
per item over the teachers that generated the majority token sequence: their
top-k distributions are averaged in probability space over the union of
their top-k ids, re-cut to k, and the rest of the mass stays implied.
Averaging logits of different sequences would mix unrelated positions.

LocalOnly is a round with the local epoch and no exchange.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from knexa_node.learn.agent import Agent, TrainReport
from knexa_node.learn.package import KnowledgePackage, LogitItem, PackageError, decode_package, encode_package


def _vote_text(packages: Sequence[KnowledgePackage]) -> dict[str, str]:
    merged: dict[str, str] = {}
    ids = dict.fromkeys(key for p in packages for key in p.texts)
    for key in ids:
        answers = [p.texts[key] for p in packages if key in p.texts]
        counts = Counter(a.strip() for a in answers)
        best = max(counts.values())
        merged[key] = next(a for a in answers if counts[a.strip()] == best)
    return merged


def _average_logits(items: Sequence[LogitItem], k: int) -> LogitItem:
    length = len(items[0].tokens)
    ids_out = np.zeros((length, k), dtype=np.int32)
    logp_out = np.full((length, k), -30.0, dtype=np.float16)  # log(~0) pads rows with fewer distinct ids
    for position in range(length):
        mass: dict[int, float] = {}
        for item in items:
            for token, logp in zip(item.topk_ids[position], item.topk_logp[position].astype(np.float64)):
                mass[int(token)] = mass.get(int(token), 0.0) + float(np.exp(logp)) / len(items)
        best = sorted(mass.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        for j, (token, probability) in enumerate(best):
            ids_out[position, j] = token
            logp_out[position, j] = np.float16(np.log(max(probability, 1e-30)))
    return LogitItem(items[0].tokens.copy(), ids_out, logp_out)


def _vote_logits(packages: Sequence[KnowledgePackage], k: int) -> dict[str, LogitItem]:
    merged: dict[str, LogitItem] = {}
    ids = dict.fromkeys(key for p in packages for key in p.logits)
    for key in ids:
        items = [p.logits[key] for p in packages if key in p.logits]
        counts = Counter(tuple(i.tokens.tolist()) for i in items)
        best = max(counts.values())
        winner = next(seq for seq in (tuple(i.tokens.tolist()) for i in items) if counts[seq] == best)
        merged[key] = _average_logits([i for i in items if tuple(i.tokens.tolist()) == winner], k)
    return merged


def ensemble_packages(payloads: Sequence[bytes], *, max_size: int = 256 << 20, round_index: int = 0) -> bytes:
    """The Central-KD server step: several clients' packages in, one ensemble package out."""
    if not payloads:
        raise PackageError("no packages to ensemble")
    packages = [decode_package(p, max_size=max_size) for p in payloads]
    kinds = {p.kind for p in packages}
    if len(kinds) != 1:
        raise PackageError("cannot ensemble text and logit packages together")
    if packages[0].kind == "text":
        merged = KnowledgePackage("text", "ensemble", round_index, texts=_vote_text(packages))
    else:
        if len({p.tokenizer for p in packages}) != 1:
            raise PackageError("logit packages from different tokenizers cannot be averaged")
        k = min(p.k for p in packages)
        merged = KnowledgePackage("logits", packages[0].tokenizer, round_index, logits=_vote_logits(packages, k), k=k)
    return encode_package(merged)


@dataclass(frozen=True)
class LocalOnlyRound:
    """What a LocalOnly round did: the local epoch and nothing else."""

    train: TrainReport
    validation_loss: float


def local_only_round(agent: Agent) -> LocalOnlyRound:
    """The LocalOnly baseline's round: train, measure, persist; no package in or out."""
    report = agent.local_epoch()
    loss = agent.validation_loss()
    agent.finish_round()
    return LocalOnlyRound(report, loss)
