"""GPU figures for a 0.5B-class model (Qwen2-0.5B-shaped config, random weights, bf16). Self-contained.

Measures, side by side in one run on the same GPU:

1. teacher package: 128 prompts x 256 new tokens, greedy —
   ``plain``: batched ``model.generate`` (dynamic cache);
   ``hf_static``: ``generate(cache_implementation="static")`` (transformers compiles the decode step);
   ``loop_graph``: our decode loop over a StaticCache with the one-token step captured
   by ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), greedy argmax on the GPU,
   no host sync per token;
   each after a warm-up call, every run forced to 256 new tokens (random weights may emit
   EOS early), and the share of rows whose tokens equal the plain path's;
2. a LoRA epoch (r=16 on q/k/v/o) over 348 samples x 512 tokens, bf16 autocast, AdamW.

Prints JSON. Reference (issue 5, one H100, bf16): plain generate 6.7 s (~4,900 new tokens/s);
LoRA epoch 5.5 s (~32,000 tokens/s, peak 13 GiB).

    python bench/learn_gpu.py            # on the GPU machine (about 2-4 minutes with compilation)
    python bench/learn_gpu.py --tiny     # a tiny config on CPU: checks that the script works
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, Qwen2Config, StaticCache  # noqa: E402


def qwen2_config(tiny: bool) -> Qwen2Config:
    if tiny:
        return Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                           tie_word_embeddings=True)
    # Qwen2-0.5B's published shape: 24 layers, hidden 896, 14 heads / 2 KV heads, 151,936 tokens.
    return Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_theta=1000000.0, tie_word_embeddings=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_prompts(batch: int, vocab: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts of 48-128 tokens (pad id 0, masked)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(48, 129, (batch,), generator=generator)
    width = int(lengths.max())
    ids = torch.zeros((batch, width), dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        ids[row, width - n:] = torch.randint(1, vocab, (n,), generator=generator)
        mask[row, width - n:] = 1
    return ids.to(device), mask.to(device)


def plain_generate(model, ids, mask, new_tokens: int, **extra) -> torch.Tensor:
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=0, eos_token_id=None, **extra)
    return out[:, ids.shape[1]:]


class GraphDecoder:
    """Greedy decoding over a StaticCache; the one-token step is compiled (CUDA graphs on a GPU)."""

    def __init__(self, model, batch: int, max_len: int, device: torch.device, compile_step: bool) -> None:
        self.model, self.max_len, self.device = model, max_len, device
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.mask = torch.zeros((batch, max_len), dtype=torch.long, device=device)
        self.step = torch.compile(self._step, mode="reduce-overhead", fullgraph=False) if compile_step else self._step

    def _step(self, token, position, cache_position, mask):
        logits = self.model(input_ids=token, position_ids=position, cache_position=cache_position,
                            attention_mask=mask, past_key_values=self.cache, use_cache=True).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, prompt_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
        batch, width = ids.shape
        self.cache.reset()
        self.mask.zero_()
        self.mask[:, :width] = prompt_mask
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=self.mask[:, :width], position_ids=positions,
                            past_key_values=self.cache, cache_position=torch.arange(width, device=self.device),
                            use_cache=True).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        position = positions[:, -1:] + 1
        out = torch.empty((batch, new_tokens), dtype=torch.long, device=self.device)
        out[:, 0:1] = token
        for step in range(1, new_tokens):
            index = width + step - 1
            self.mask[:, index] = 1
            cache_position = torch.tensor([index], device=self.device)
            token = self.step(token.clone(), position.clone(), cache_position, self.mask)
            out[:, step:step + 1] = token
            position = position + 1
        return out


def timed(fn, device: torch.device, repeats: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - started)
    return best, result


def bench_package(model, config, device, batch: int, new_tokens: int, compile_ok: bool) -> dict:
    ids, mask = make_prompts(batch, config.vocab_size, device)
    figures: dict = {"prompts": batch, "new_tokens": new_tokens, "prompt_width": ids.shape[1]}
    reference = None
    variants = {
        "plain": lambda: plain_generate(model, ids, mask, new_tokens),
        "hf_static": lambda: plain_generate(model, ids, mask, new_tokens, cache_implementation="static"),
    }
    decoder_holder: dict = {}

    def loop_graph():
        if "decoder" not in decoder_holder:
            decoder_holder["decoder"] = GraphDecoder(model, batch, ids.shape[1] + new_tokens, device, compile_ok)
        return decoder_holder["decoder"](ids, mask, new_tokens)

    variants["loop_graph"] = loop_graph
    for name, run in variants.items():
        try:
            started = time.perf_counter()
            run()  # warm-up (and compilation)
            sync(device)
            warmup_s = time.perf_counter() - started
            seconds, tokens = timed(run, device, repeats=2)
            row = {"seconds": round(seconds, 3), "new_tokens_per_s": round(batch * new_tokens / seconds, 1),
                   "warmup_s": round(warmup_s, 1)}
            if reference is None:
                reference = tokens
            else:
                row["rows_equal_to_plain"] = round(float((tokens == reference).all(-1).float().mean()), 3)
                row["tokens_equal_to_plain"] = round(float((tokens == reference).float().mean()), 3)
            figures[name] = row
        except Exception as exc:  # one variant failing must not hide the others' figures
            figures[name] = {"error": f"{type(exc).__name__}: {exc}"[:400], "trace": traceback.format_exc()[-800:]}
    plain_s = figures.get("plain", {}).get("seconds")
    for name in ("hf_static", "loop_graph"):
        if plain_s and "seconds" in figures.get(name, {}):
            figures[name]["speedup_vs_plain"] = round(plain_s / figures[name]["seconds"], 2)
    return figures


def bench_lora(model, config, device, samples: int, length: int, batch: int) -> dict:
    lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                            task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=3e-5, betas=(0.9, 0.98), eps=1e-6)
    generator = torch.Generator().manual_seed(1)
    data = torch.randint(1, config.vocab_size, (samples, length), generator=generator)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def epoch(limit: int | None = None) -> None:
        lora.train()
        for start in range(0, samples if limit is None else limit, batch):
            chunk = data[start:start + batch].to(device)
            with autocast:
                loss = lora(input_ids=chunk, labels=chunk).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    epoch(limit=batch)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, _ = timed(epoch, device)
    figures = {"samples": samples, "length": length, "batch": batch, "seconds": round(seconds, 3),
               "tokens_per_s": round(samples * length / seconds, 1)}
    if device.type == "cuda":
        figures["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="knexa learning-engine GPU figures")
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (checks the script)")
    parser.add_argument("--skip-lora", action="store_true")
    parser.add_argument("--skip-package", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    config = qwen2_config(args.tiny)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    figures: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "dtype": str(dtype),
                     "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    if not args.skip_package:
        batch, new_tokens = (8, 16) if args.tiny else (128, 256)
        figures["teacher_package"] = bench_package(model, config, device, batch, new_tokens, compile_ok=device.type == "cuda")
    if not args.skip_lora:
        samples, length, batch = (12, 64, 4) if args.tiny else (348, 512, 12)
        try:
            figures["lora_epoch"] = bench_lora(model, config, device, samples, length, batch)
        except Exception as exc:
            figures["lora_epoch"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
