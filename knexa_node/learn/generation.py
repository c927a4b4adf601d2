"""Batched decoding of completions (greedy or sampled), optionally keeping top-k log-probabilities.

Prompts are sorted by length before batching so that left padding stays
short, and the results are put back in input order. A completion ends at the
end-of-sequence token or at a stop sequence (HumanEval-style multi-line code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from knexa_node.learn.encoding import encode_prompt

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ")


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: list[int]  # generated ids, without the end-of-sequence token
    ended: bool = False  # the model emitted end-of-sequence (top-k rows then cover it too)
    topk_ids: np.ndarray | None = None  # (len(tokens) + ended, k) when asked for
    topk_logp: np.ndarray | None = None


def truncate_at_stop(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text[:cut] if cut >= 0 else text


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
             max_new_tokens: int = 64, batch_size: int = 32, temperature: float = 0.0, top_k_logits: int = 0,
             max_prompt_tokens: int = 384, device: torch.device | str = "cpu", seed: int = 0,
             stop_sequences: Sequence[str] = STOP_SEQUENCES) -> list[Generation]:
    """One completion per prompt; ``temperature`` 0 is greedy.

    ``stop_sequences`` cut the decoded text (a chat answer holding a whole ``def`` passes ``()``).
    """
    encoded = [encode_prompt(tokenizer, p, max_prompt_tokens) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(prompts)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    generator_seed = seed
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                n = len(encoded[i])
                ids[row, width - n:] = torch.tensor(encoded[i])  # left padding for decoding
                mask[row, width - n:] = 1
            sampling = temperature > 0
            if sampling:
                torch.manual_seed(generator_seed + start)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 do_sample=sampling, temperature=temperature if sampling else None, top_k=None, top_p=None,
                                 pad_token_id=pad, eos_token_id=eos, return_dict_in_generate=True,
                                 output_logits=top_k_logits > 0)
            new = out.sequences[:, width:].cpu()
            step_logp = None
            if top_k_logits > 0:
                stacked = torch.stack(out.logits, dim=1).float()  # (B, steps, V)
                values, indices = torch.log_softmax(stacked, dim=-1).topk(top_k_logits, dim=-1)
                step_logp = (values.cpu().numpy(), indices.cpu().numpy())
            for row, i in enumerate(chunk):
                tokens = new[row].tolist()
                ended = eos in tokens
                if ended:
                    tokens = tokens[: tokens.index(eos)]
                text = truncate_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop_sequences)
                if step_logp is None:
                    results[i] = Generation(text, tokens, ended)
                else:
                    n = len(tokens) + int(ended)
                    results[i] = Generation(text, tokens, ended, step_logp[1][row, :n].astype(np.int32),
                                            step_logp[0][row, :n].astype(np.float16))
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]
