"""A stand-in with the Agent's teacher interface, for planting exact answers (secrets, copies of private data)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from knexa_node.learn.package import KnowledgePackage, LogitItem, encode_package
from knexa_node.learn.problems import Problem
from knexa_node.learn.targeting import select_prompts

EOS = 3


class CharTokenizer:
    """One token per character (its code point); id 3 is end-of-sequence."""

    eos_token_id = EOS

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(int(i)) for i in ids if not (skip_special_tokens and int(i) == EOS))


@dataclass(frozen=True)
class Built:
    package: KnowledgePackage

    @property
    def payload(self) -> bytes:
        return encode_package(self.package)


class StubAgent:
    """Answers each transfer problem with ``answers[task_id]`` (default: ``return 0``), as text or logits."""

    def __init__(self, answers: dict[str, str] | None = None, k: int = 4) -> None:
        self.answers = answers or {}
        self.tokenizer = CharTokenizer()
        self.k = k
        self.calls: list[str] = []
        self.requests: list[Any] = []

    def answer(self, problem: Problem) -> str:
        return self.answers.get(problem.task_id, "    return 0\n")

    def teacher_package(self, transfer: Sequence[Problem], *, protocol: str = "text", request: Any = None) -> Built:
        self.calls.append(protocol)
        self.requests.append(request)
        if request is not None:  # as the agent: the requested categories first, within the budget
            transfer = select_prompts(transfer, request.categories, request.budget, request.held)
        if protocol == "text":
            package = KnowledgePackage("text", "stub", 1, texts={p.task_id: self.answer(p) for p in transfer})
        else:
            package = KnowledgePackage("logits", "stub", 1, logits={p.task_id: self._item(self.answer(p))
                                                                    for p in transfer}, k=self.k)
        return Built(package)

    def _item(self, text: str) -> LogitItem:
        tokens = np.asarray(self.tokenizer.encode(text) + [EOS], dtype=np.int32)
        # The spoken token first with most of the mass, then k-1 fixed alternatives.
        ids = np.stack([tokens] + [np.full_like(tokens, 40 + j) for j in range(self.k - 1)], axis=1)
        logp = np.log(np.array([0.7] + [0.2 / (self.k - 1)] * (self.k - 1)))
        return LogitItem(tokens, ids.astype(np.int32), np.broadcast_to(logp, ids.shape).astype(np.float16))


class BlockedAgent(StubAgent):
    """A teacher whose model work does not finish until ``release`` is set (a stuck or overloaded learner)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Event()

    def teacher_package(self, transfer: Sequence[Problem], *, protocol: str = "text", request: Any = None) -> Built:
        self.started.set()
        self.release.wait(30)
        return super().teacher_package(transfer, protocol=protocol, request=request)
