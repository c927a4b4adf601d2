"""Greedy batched decoding with a static KV cache of our own and a decode step replayable as one CUDA graph.

Why not ``model.generate``: at batch 128 on an H100 plain ``generate`` spends ~18 ms a step for ~1 ms of
GPU work (Python per step, a host sync per step for stopping, a dynamic cache that grows by ``torch.cat``).
transformers' static cache is faster, but with a padding mask its SDPA path repeats every KV head to all
query heads over the whole static length in every layer and step (``repeat_kv``: ~8 GB of copies a step for
Qwen2-0.5B at batch 128, more than the model's weights), and its stopping checks still sync the host.

What this module does instead, for any causal LM whose attention goes through transformers'
``AttentionInterface`` (Llama, Qwen2, GPT-2, GPT-NeoX, ... and PEFT wrappers of them):

- the model runs with ``use_cache=False`` and a registered attention function (``knexa_static_kv``) that
  writes each layer's keys/values into preallocated buffers at a device-side write index and attends over
  them, grouped-query style (the query heads of one KV head become extra query rows: no repeat);
- masks are ours and 4-D (transformers passes 4-D masks through untouched): causal plus padding for the
  prefill of left-padded prompts, and a ``(batch, 1, 1, cache_len)`` row mask for decoding;
- all per-step state (next input token, positions, write index, output column, finished rows) lives in
  device tensors updated inside the step, so the step has fixed shapes and addresses and no host sync: on
  CUDA it is captured once with ``torch.cuda.CUDAGraph`` and replayed (optionally after ``torch.compile``
  fused its kernels); on CPU the very same step function runs eagerly;
- the prompts are prefilled once in one batched forward that keeps only the last position's logits.

Greedy only, top-1 per step; end-of-sequence rows are padded like ``generate`` pads them. The result
equals plain greedy ``generate`` token for token up to floating-point ties (tests/learn/test_fast_decode.py
checks fp32 tiny models of several families). ``teacher_forced`` feeds given tokens instead of the
argmax, so that agreement with another decoder can be measured step by step without one early near-tie
making every later token differ.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel

ATTENTION_NAME = "knexa_static_kv"
KV_KWARG = "knexa_kv"


class FastDecodeError(RuntimeError):
    """The model or the request does not fit the fast decoder (callers fall back to ``generate``)."""


@dataclass
class StaticKV:
    """Per-layer key/value buffers of one decoder; reached by the attention function through the forward kwargs."""

    cache_len: int
    write_pos: torch.Tensor  # (1,) long: the cache index the current step's key/value go to
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)


def _static_kv_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                         **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: cache this call's key/value, attend over what the mask allows.

    ``query`` is (B, H, Q, D), ``key``/``value`` are (B, Hkv, Q, D) for the Q new tokens only (the model runs
    without transformers' cache). Q > 1 is the prefill (attends over the new tokens themselves); Q == 1 is a
    decode step (attends over the whole static buffer, the mask hides what is not written yet).
    """
    kv: StaticKV | None = kwargs.get(KV_KWARG)
    if kv is None or attention_mask is None or attention_mask.dim() != 4:
        raise FastDecodeError(f"{ATTENTION_NAME} is only usable inside FastDecoder (static KV and a 4-D mask)")
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise FastDecodeError("sliding-window or soft-capped attention is not supported by the fast decoder")
    layer = module.layer_idx
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if layer not in kv.keys:  # first call is the (eager) prefill: allocate once, addresses then stay fixed
        kv.keys[layer] = torch.zeros((batch, kv_heads, kv.cache_len, dim), dtype=key.dtype, device=key.device)
        kv.values[layer] = torch.zeros((batch, kv_heads, kv.cache_len, value.shape[-1]), dtype=value.dtype,
                                       device=value.device)
    keys, values = kv.keys[layer], kv.values[layer]
    index = kv.write_pos if q_len == 1 else kv.write_pos + torch.arange(q_len, device=key.device)
    keys.index_copy_(2, index, key.to(keys.dtype))
    values.index_copy_(2, index, value.to(values.dtype))
    if q_len == 1:
        key, value = keys, values
    groups = heads // kv_heads
    # Head h uses KV head h // groups (transformers' repeat_kv order): fold the groups into query rows.
    grouped = query.reshape(batch, kv_heads, groups * q_len, dim)
    mask = attention_mask
    if q_len > 1 and groups > 1:
        mask = mask.unsqueeze(2).expand(batch, 1, groups, q_len, mask.shape[-1]).reshape(batch, 1, groups * q_len, -1)
    out = F.scaled_dot_product_attention(grouped, key.to(grouped.dtype), value.to(grouped.dtype), attn_mask=mask,
                                         scale=scaling)
    return out.reshape(batch, heads, q_len, -1).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, _static_kv_attention)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supports(model: torch.nn.Module) -> bool:
    """Whether ``model`` routes attention through transformers' AttentionInterface (what the decoder hooks)."""
    base = _base_model(model)
    if not isinstance(base, PreTrainedModel) or not getattr(base, "_supports_attention_backend", False):
        return False
    if getattr(base.config, "sliding_window", None) and getattr(base.config, "use_sliding_window", True):
        return False
    return any(hasattr(m, "layer_idx") for m in base.modules())


# generation_config fields that would make ``generate``'s greedy choice differ from a plain argmax.
_PROCESSOR_FIELDS = ("repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens",
                     "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id", "sequence_bias",
                     "min_new_tokens", "min_length", "encoder_repetition_penalty", "exponential_decay_length_penalty")


def plain_argmax_generation(model: torch.nn.Module) -> bool:
    """Whether ``model.generate``'s greedy search is a plain argmax (no processors from its generation_config)."""
    config = getattr(_base_model(model), "generation_config", None)
    if config is None:
        return True
    neutral = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "min_length": 0}
    return all(getattr(config, name, None) in (None, neutral.get(name), 0 if name.startswith("min_") else None)
               for name in _PROCESSOR_FIELDS)


def prefill_mask(prompt_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, W, W) bool: causal over real tokens of left-padded prompts; each position also sees itself.

    The diagonal keeps padded rows from being fully masked, whose softmax would give NaN keys/values that
    poison real rows through 0 * NaN.
    """
    width = prompt_mask.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool, device=prompt_mask.device).tril()
    eye = torch.eye(width, dtype=torch.bool, device=prompt_mask.device)
    return ((causal & prompt_mask.bool()[:, None, None, :]) | eye).contiguous()


def prompt_positions(prompt_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded prompts: 0 at each row's first real token (as ``generate`` numbers them)."""
    return (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)


class FastDecoder:
    """Greedy decoding of batches of ``batch`` left-padded prompts of up to ``cache_len - max_new_tokens`` tokens.

    Build once, call many times with new prompts (the CUDA graph is captured on the first call). Use it
    from one thread at a time; while it runs, the model's attention implementation is switched to
    ``knexa_static_kv`` and restored afterwards.
    """

    def __init__(self, model: torch.nn.Module, *, batch: int, cache_len: int, max_new_tokens: int,
                 eos_token_id: int | None = None, pad_token_id: int = 0, cuda_graph: bool | None = None,
                 compile_step: bool = False, warmup_steps: int = 3, eos_check_every: int = 16) -> None:
        if not supports(model):
            raise FastDecodeError(f"{type(_base_model(model)).__name__} does not use transformers' AttentionInterface")
        if batch < 1 or max_new_tokens < 1 or cache_len <= max_new_tokens:
            raise FastDecodeError(f"bad sizes: batch={batch}, cache_len={cache_len}, max_new_tokens={max_new_tokens}")
        self.model = model
        self.config = _base_model(model).config
        forward = inspect.signature(_base_model(model).forward).parameters
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        device = next(model.parameters()).device
        self.device, self.batch, self.cache_len, self.max_new_tokens = device, batch, cache_len, max_new_tokens
        self.eos, self.eos_check_every = eos_token_id, max(1, eos_check_every)
        self.cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.cuda_graph and device.type != "cuda":
            raise FastDecodeError("CUDA graphs need the model on a CUDA device")
        self.warmup_steps = warmup_steps
        long = {"dtype": torch.long, "device": device}
        self.kv = StaticKV(cache_len, torch.zeros(1, **long))
        self.token = torch.zeros((batch, 1), **long)  # the next step's input token
        self.position = torch.zeros((batch, 1), **long)
        self.step_index = torch.zeros(1, **long)  # output column this step writes
        self.step_mask = torch.zeros((batch, 1, 1, cache_len), dtype=torch.bool, device=device)
        self.out = torch.zeros((batch, max_new_tokens), **long)
        self.forced = torch.zeros((batch, max_new_tokens), **long)
        self.use_forced = torch.zeros((), dtype=torch.bool, device=device)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.pad = torch.tensor(pad_token_id, **long)
        self._step_fn = torch.compile(self._step, dynamic=False) if compile_step else self._step
        self._graph: torch.cuda.CUDAGraph | None = None

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, **extra) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                          **{KV_KWARG: self.kv}, **extra).logits[:, -1]

    def _step(self) -> None:
        """One decode step; every input and output is a fixed device buffer (so it can be graph-captured)."""
        self.step_mask.index_fill_(3, self.kv.write_pos, True)  # the input token sees itself
        nxt = self._forward(self.token, self.step_mask, self.position).argmax(-1)
        if self.eos is not None:
            nxt = torch.where(self.finished, self.pad, nxt)
            self.finished.logical_or_(nxt == self.eos)
        self.out.index_copy_(1, self.step_index, nxt[:, None])
        forced = self.forced.index_select(1, self.step_index)
        self.token.copy_(torch.where(self.use_forced, forced, nxt[:, None]))
        self.position.add_(1)
        self.kv.write_pos.add_(1)
        self.step_index.add_(1)

    def _prefill(self, ids: torch.Tensor, prompt_mask: torch.Tensor, forced: torch.Tensor | None) -> None:
        width = ids.shape[1]
        positions = prompt_positions(prompt_mask)
        self.kv.write_pos.zero_()
        first = self._forward(ids, prefill_mask(prompt_mask), positions, **self._keep_last).argmax(-1)
        self.finished.copy_(first == self.eos if self.eos is not None else torch.zeros_like(self.finished))
        self.out[:, 0] = first
        self.use_forced.fill_(forced is not None)
        if forced is not None:
            self.forced[:, :forced.shape[1]].copy_(forced)
        self.token.copy_(forced[:, :1] if forced is not None else first[:, None])
        self.position.copy_(positions[:, -1:] + 1)
        self.kv.write_pos.fill_(width)
        self.step_index.fill_(1)
        self.step_mask.zero_()
        self.step_mask[:, 0, 0, :width] = prompt_mask.bool()

    def _capture(self) -> None:
        """Warm up (compiles, if asked) on a side stream, then record one step; leaves the state dirty."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_steps):
                self._step_fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step_fn()
        self._graph = graph

    def _validate(self, ids: torch.Tensor, prompt_mask: torch.Tensor, new_tokens: int,
                  forced: torch.Tensor | None) -> None:
        if ids.dim() != 2 or ids.shape != prompt_mask.shape or not 1 <= ids.shape[0] <= self.batch:
            raise FastDecodeError(f"prompts must be (1..{self.batch}, width) with a mask of the same shape")
        if not 1 <= new_tokens <= self.max_new_tokens or ids.shape[1] + new_tokens > self.cache_len:
            raise FastDecodeError(f"{ids.shape[1]} + {new_tokens} tokens do not fit a cache of {self.cache_len}")
        if forced is not None and (forced.shape[0] != ids.shape[0] or forced.shape[1] < new_tokens - 1):
            raise FastDecodeError("teacher_forced must hold (rows, new_tokens - 1) tokens at least")

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Inside an autocast region, keep autocasting but without its weight-cast cache.

        A graph captured with cached casts would replay reads of cast copies that autocast frees when its region
        ends (and that would not follow later weight updates); uncached, the casts are part of every step.
        """
        kind = self.device.type
        if not torch.is_autocast_enabled(kind):
            return contextlib.nullcontext()
        return torch.autocast(kind, dtype=torch.get_autocast_dtype(kind), cache_enabled=False)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, prompt_mask: torch.Tensor, new_tokens: int | None = None, *,
                 teacher_forced: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, new_tokens) greedy tokens (rows past end-of-sequence hold the pad id); rows <= ``batch``.

        Fewer rows than ``batch`` are filled up with copies of the first one (the graph has a fixed batch).
        With ``teacher_forced`` (rows, >= new_tokens - 1), step s + 1 is fed ``teacher_forced[:, s]`` instead of
        the argmax of step s, and the result holds the argmax predictions.
        """
        new_tokens = self.max_new_tokens if new_tokens is None else new_tokens
        ids, prompt_mask = ids.to(self.device), prompt_mask.to(self.device)
        if teacher_forced is not None:
            teacher_forced = teacher_forced[:, :self.max_new_tokens].to(self.device)
        self._validate(ids, prompt_mask, new_tokens, teacher_forced)
        rows = ids.shape[0]
        if rows < self.batch:
            ids, prompt_mask = _fill_rows(ids, self.batch), _fill_rows(prompt_mask, self.batch)
            teacher_forced = None if teacher_forced is None else _fill_rows(teacher_forced, self.batch)
        config, previous = self.config, self.config._attn_implementation
        config._attn_implementation = ATTENTION_NAME
        try:
            with self._autocast():
                self._decode(ids, prompt_mask, new_tokens, teacher_forced)
        finally:
            config._attn_implementation = previous
        return self.out[:rows, :new_tokens].clone()

    def _decode(self, ids: torch.Tensor, prompt_mask: torch.Tensor, new_tokens: int,
                forced: torch.Tensor | None) -> None:
        self._prefill(ids, prompt_mask, forced)
        if self.cuda_graph and self._graph is None and new_tokens > 1:
            self._capture()
            self._prefill(ids, prompt_mask, forced)  # the capture's warm-up steps moved the state on
        done = 1
        while done < new_tokens:
            if self._graph is not None:
                self._graph.replay()
            else:
                self._step_fn()
            done += 1
            # A host sync now and then (not every step) to stop once every row has ended.
            if self.eos is not None and done % self.eos_check_every == 0 and bool(self.finished.all()):
                self.out[:, done:new_tokens] = self.pad
                break


def _fill_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([tensor, tensor[:1].expand(rows - tensor.shape[0], *tensor.shape[1:])])
