"""Batched decoding of completions (greedy or sampled), optionally keeping top-k log-probabilities.

Prompts are sorted by length before batching so that left padding stays
short, and the results are put back in input order. A completion ends at the
end-of-sequence token or at a stop sequence (HumanEval-style multi-line code).

On CUDA, greedy decoding without top-k goes through :mod:`.fast_decode` (a static
KV cache and one CUDA graph per step, several times faster than ``generate``),
with the same tokens; anything it cannot take falls back to ``generate``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from knexa_node.learn import fast_decode
from knexa_node.learn.encoding import encode_prompt

log = logging.getLogger(__name__)

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ")
FENCE = "```"


class BlockClosed(StoppingCriteria):
    """Ends a row once its new text holds a closed code block: a chat answer's function is complete.

    An instruct model goes on explaining its code until end-of-sequence; what follows the block is
    never used, and on a CPU it is most of the decoding time.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_width: int) -> None:
        self.tokenizer, self.prompt_width = tokenizer, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([text.count(FENCE) >= 2 for text in texts], dtype=torch.bool, device=input_ids.device)


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
             stop_sequences: Sequence[str] = STOP_SEQUENCES, stop_at_closed_block: bool = False,
             fast: bool | None = None) -> list[Generation]:
    """One completion per prompt; ``temperature`` 0 is greedy.

    ``stop_sequences`` cut the decoded text (a chat answer holding a whole ``def`` passes ``()``).
    ``stop_at_closed_block`` ends a row early once its code block is closed (:class:`BlockClosed`;
    not with ``top_k_logits``, whose rows must end at end-of-sequence or the cap).
    ``fast`` uses :mod:`.fast_decode` for greedy decoding without top-k (None: only on CUDA).
    """
    encoded = [encode_prompt(tokenizer, p, max_prompt_tokens) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(prompts)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    generator_seed = seed
    was_training = model.training
    model.eval()
    decoder = _fast_decoder(model, device, fast, temperature, top_k_logits, min(batch_size, len(prompts)),
                            max((len(e) for e in encoded), default=0) + max_new_tokens, max_new_tokens, pad, eos)
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
            new = _fast_chunk(decoder, ids, mask) if decoder is not None else None
            if new is None:
                decoder = None  # a failure is not retried on later chunks
                stopping = (StoppingCriteriaList([BlockClosed(tokenizer, width)])
                            if stop_at_closed_block and top_k_logits == 0 else None)
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=max_new_tokens, do_sample=sampling, stopping_criteria=stopping,
                                     temperature=temperature if sampling else None, top_k=None, top_p=None,
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
                elif pad is not None:
                    while tokens and tokens[-1] == pad:  # a row stopped early is padded to the chunk's length
                        tokens.pop()
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


# --- the fast greedy path (fast_decode); CPU decoding never takes it unless asked ----------------------------

def _fast_decoder(model: PreTrainedModel, device: torch.device | str, fast: bool | None, temperature: float,
                  top_k_logits: int, batch: int, cache_len: int, max_new_tokens: int, pad: int | None,
                  eos: int | None) -> fast_decode.FastDecoder | None:
    wanted = torch.device(device).type == "cuda" if fast is None else fast
    if not wanted or temperature > 0 or top_k_logits > 0 or batch < 1 or max_new_tokens < 1:
        return None
    if not fast_decode.supports(model) or not fast_decode.plain_argmax_generation(model):
        return None
    try:
        return fast_decode.FastDecoder(model, batch=batch, cache_len=cache_len, max_new_tokens=max_new_tokens,
                                       eos_token_id=eos, pad_token_id=pad if pad is not None else 0)
    except fast_decode.FastDecodeError as exc:
        log.info("fast decoding not used: %s", exc)
        return None


def _fast_chunk(decoder: fast_decode.FastDecoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """The chunk's new tokens on the CPU, or None (logged) when the fast path fails: ``generate`` takes over."""
    try:
        return decoder(ids, mask).cpu()
    except Exception as exc:  # noqa: BLE001 - a teacher package must not fail because of an optimisation
        log.warning("fast decoding failed, falling back to generate: %s: %s", type(exc).__name__, exc)
        return None
