"""The fast decoder against transformers on CPU: same greedy tokens as ``generate`` (fp32 tiny models),
teacher forcing against a full forward, end-of-sequence padding, PEFT models, and clear refusals.

The CUDA-graph replay itself needs a GPU (bench/learn_gpu.py); on CPU the same step function runs eagerly.
"""

from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from knexa_node.learn import generation
from knexa_node.learn.fast_decode import (
    ATTENTION_NAME,
    FastDecodeError,
    FastDecoder,
    plain_argmax_generation,
    supports,
)
from knexa_node.learn.problems import generate_problems
from knexa_node.profile import CATEGORIES

torch.set_num_threads(1)
VOCAB = 300


def tiny_config(family: str) -> transformers.PretrainedConfig:
    common = {"vocab_size": VOCAB}
    if family == "qwen2":  # grouped-query attention: 4 query heads over 2 KV heads
        return transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, **common)
    if family == "llama":  # multi-query: 4 heads over 1 KV head
        return transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1, **common)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=1,
                                       eos_token_id=2, **common)
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, **common)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation="sdpa").eval()


def left_padded(batch: int, seed: int, low: int = 2, high: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (batch,), generator=generator)
    lengths[0] = high  # one full row, the rest padded on the left
    ids = torch.zeros((batch, high), dtype=torch.long)
    mask = torch.zeros((batch, high), dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        ids[row, high - n:] = torch.randint(3, VOCAB, (n,), generator=generator)
        mask[row, high - n:] = 1
    return ids, mask


def plain(model, ids, mask, new_tokens: int, eos: int | None = None) -> torch.Tensor:
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                         min_new_tokens=None if eos is not None else new_tokens, do_sample=False, pad_token_id=0,
                         eos_token_id=eos)
    return out[:, ids.shape[1]:]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "llama", "gpt2", "gpt_neox"])
def test_greedy_tokens_equal_generate(family: str) -> None:
    model = tiny_model(family)
    decoder = FastDecoder(model, batch=6, cache_len=12 + 24, max_new_tokens=24)
    for seed in (1, 2):  # the second call reuses the decoder's buffers with other prompts
        ids, mask = left_padded(6, seed)
        reference = plain(model, ids, mask, 24)
        assert torch.equal(decoder(ids, mask), reference)
    assert model.config._attn_implementation == "sdpa"  # restored after decoding


def test_shorter_prompts_and_fewer_tokens_fit_one_decoder() -> None:
    model = tiny_model("qwen2")
    decoder = FastDecoder(model, batch=4, cache_len=40, max_new_tokens=20)
    ids, mask = left_padded(4, seed=3, high=7)
    assert torch.equal(decoder(ids, mask, 9), plain(model, ids, mask, 9))


def test_teacher_forcing_matches_a_full_forward() -> None:
    """Fed arbitrary tokens, step s predicts what one uncached forward over prompt + forced tokens predicts."""
    model = tiny_model("qwen2", seed=4)
    ids, mask = left_padded(5, seed=5)
    new_tokens = 16
    forced = torch.randint(3, VOCAB, (5, new_tokens), generator=torch.Generator().manual_seed(6))
    decoder = FastDecoder(model, batch=5, cache_len=ids.shape[1] + new_tokens, max_new_tokens=new_tokens)
    predicted = decoder(ids, mask, teacher_forced=forced)
    full = torch.cat([ids, forced], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(forced)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=full_mask,
                       position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits
    expected = logits[:, ids.shape[1] - 1:-1].argmax(-1)
    assert torch.equal(predicted, expected)
    assert not torch.equal(predicted, forced)  # the predictions are the model's, not the fed tokens
    # Forcing plain's own tokens reproduces them, and a free run afterwards is not left in forcing mode.
    reference = plain(model, ids, mask, new_tokens)
    assert torch.equal(decoder(ids, mask, teacher_forced=reference), reference)
    assert torch.equal(decoder(ids, mask), reference)


def test_rows_past_end_of_sequence_are_padded_like_generate() -> None:
    model = tiny_model("llama", seed=7)
    ids, mask = left_padded(6, seed=8)
    free = plain(model, ids, mask, 20)
    eos = int(free[0, 3])  # row 0 ends at its 4th token at the latest; others may end too, or not
    reference = plain(model, ids, mask, 20, eos=eos)
    decoder = FastDecoder(model, batch=6, cache_len=ids.shape[1] + 20, max_new_tokens=20, eos_token_id=eos,
                          eos_check_every=4)
    out = decoder(ids, mask)
    width = reference.shape[1]
    assert torch.equal(out[:, :width], reference)
    assert bool((out[:, width:] == 0).all())
    assert int((out[0] == eos).nonzero()[0]) <= 3


def test_everyone_ending_early_stops_the_loop_and_pads() -> None:
    model = tiny_model("qwen2", seed=9)
    ids, mask = left_padded(3, seed=10)
    first = plain(model, ids, mask, 1)
    ids, mask = ids[:1].repeat(3, 1), mask[:1].repeat(3, 1)  # equal rows: all end on the same token
    eos = int(first[0, 0])
    decoder = FastDecoder(model, batch=3, cache_len=ids.shape[1] + 40, max_new_tokens=40, eos_token_id=eos,
                          eos_check_every=2)
    out = decoder(ids, mask)
    assert out.shape == (3, 40)
    assert bool((out[:, 0] == eos).all()) and bool((out[:, 1:] == 0).all())
    assert int(decoder.step_index) <= 3  # stopped at the first check instead of running 39 steps


@pytest.mark.slow
def test_peft_lora_model_equals_its_generate() -> None:
    model = tiny_model("qwen2", seed=11)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM")).eval()
    ids, mask = left_padded(4, seed=12)
    with torch.no_grad():
        reference = lora.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12,
                                  do_sample=False, pad_token_id=0, eos_token_id=None)[:, ids.shape[1]:]
    assert supports(lora)
    assert torch.equal(FastDecoder(lora, batch=4, cache_len=30, max_new_tokens=12)(ids, mask), reference)


def test_refusals_are_typed() -> None:
    bloom = AutoModelForCausalLM.from_config(transformers.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2,
                                                                      n_head=4), attn_implementation="eager")
    assert not supports(bloom)  # ALiBi attention of its own, outside transformers' AttentionInterface
    with pytest.raises(FastDecodeError):
        FastDecoder(bloom, batch=2, cache_len=20, max_new_tokens=4)
    model = tiny_model("qwen2")
    with pytest.raises(FastDecodeError):
        FastDecoder(model, batch=2, cache_len=4, max_new_tokens=4)
    with pytest.raises(FastDecodeError):
        FastDecoder(model, batch=2, cache_len=20, max_new_tokens=4, cuda_graph=True)  # model on the CPU
    decoder = FastDecoder(model, batch=2, cache_len=20, max_new_tokens=8)
    ids, mask = left_padded(2, seed=13, high=14)
    with pytest.raises(FastDecodeError):
        decoder(ids, mask)  # 14 + 8 > 20
    with pytest.raises(FastDecodeError):
        decoder(ids[:, :4].repeat(2, 1), mask[:, :4].repeat(2, 1))  # more rows than the decoder holds
    # The registered attention refuses to run outside the decoder instead of silently attending to nothing.
    model.config._attn_implementation = ATTENTION_NAME
    try:
        with pytest.raises(FastDecodeError), torch.no_grad():
            model(input_ids=ids[:, :4])
    finally:
        model.config._attn_implementation = "sdpa"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_generation_hook_gives_the_same_completions(tiny_models, family: str, caplog) -> None:
    """generation.generate(fast=True) (what CUDA takes by default) equals its generate() path, chunks and EOS included."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models[family]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[family])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    problems = generate_problems(3, {c: 1 for c in CATEGORIES[:11]})
    prompts = [p.prompt for p in problems]  # 11 = 4 + 4 + 3: the last chunk is filled up
    kwargs = {"max_new_tokens": 24, "batch_size": 4, "device": "cpu"}
    assert generation._fast_decoder(model, "cpu", True, 0.0, 0, 4, 64, 24, tokenizer.pad_token_id,
                                    tokenizer.eos_token_id) is not None
    with caplog.at_level(logging.WARNING, logger=generation.__name__):
        fast = generation.generate(model, tokenizer, prompts, fast=True, **kwargs)
    assert not caplog.records  # no fallback happened
    slow = generation.generate(model, tokenizer, prompts, fast=False, **kwargs)
    assert [(g.tokens, g.ended, g.text) for g in fast] == [(g.tokens, g.ended, g.text) for g in slow]


def test_generation_hook_is_off_on_cpu_sampling_top_k_and_processors() -> None:
    model = tiny_model("qwen2")
    args = (4, 40, 8, 0, 2)
    assert generation._fast_decoder(model, "cpu", None, 0.0, 0, *args) is None  # CPU behaviour unchanged
    assert generation._fast_decoder(model, "cpu", True, 0.7, 0, *args) is None  # sampling
    assert generation._fast_decoder(model, "cpu", True, 0.0, 5, *args) is None  # top-k log-probabilities
    assert generation._fast_decoder(model, "cpu", True, 0.0, 0, *args) is not None
    model.generation_config.repetition_penalty = 1.3  # generate would not take the plain argmax
    assert not plain_argmax_generation(model)
    assert generation._fast_decoder(model, "cpu", True, 0.0, 0, *args) is None
