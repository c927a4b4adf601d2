"""Turning problems into token ids: prompt and completion tokenized apart, then concatenated.

Tokenizing ``prompt + completion`` as one string lets BPE merge tokens
across the boundary, and a model trained that way learns to stop at once
(DESIGN.md: 0% Pass@1). So the ids are always concatenated, and the loss
covers only the completion and its end-of-sequence token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, max_length: int) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids[-max_length:]  # keep the end: the signature and docstring sit there


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, max_length: int) -> Example:
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    completion_ids = completion_ids[: max_length // 2] if len(completion_ids) > max_length // 2 else completion_ids
    prompt_ids = encode_prompt(tokenizer, prompt, max_length - len(completion_ids))
    return Example(prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids)


def encode_with_ids(prompt_ids: list[int], completion_ids: Sequence[int], max_length: int) -> Example:
    """For teacher token sequences (logit path): ids are already the shared tokenizer's."""
    completion = list(completion_ids)[: max_length // 2]
    prompt = prompt_ids[-(max_length - len(completion)):]
    return Example(prompt + completion, [IGNORE] * len(prompt) + completion)


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch for training and loss (positions then need no adjusting)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
