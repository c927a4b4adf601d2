"""GPU figures for a 0.5B-class model (Qwen2-0.5B-shaped config, random weights, bf16). Self-contained.

Measures, side by side in one run on the same GPU:

1. teacher package: 128 prompts x 256 new tokens, greedy, every variant after a warm-up call and forced
   to 256 new tokens (random weights may emit EOS early), best of two timed runs —
   ``plain``: batched ``model.generate`` (dynamic cache), the reference;
   ``fast_graph``: knexa_node/learn/fast_decode.py (our static KV cache written by a registered attention
   function, grouped-query attention without ``repeat_kv``, 4-D masks, all step state in device buffers),
   the decode step captured once as a CUDA graph and replayed (eager kernels inside the graph);
   ``fast_compiled``: the same step fused by ``torch.compile`` (no cudagraph trees) and then captured;
   ``hf_static``: ``generate(cache_implementation="static")`` (transformers compiles the decode step);
   ``loop_graph``: the earlier loop over transformers' StaticCache with ``torch.compile(mode="reduce-overhead")``;
2. a LoRA epoch (r=16 on q/k/v/o) over 348 samples x 512 tokens, bf16 autocast, AdamW.

Agreement is measured so that one early bf16 near-tie does not hide everything after it:
``first_token_equal_to_plain`` (the prefill alone), ``teacher_forced_agreement`` (our argmax at each step
when fed plain's tokens, against plain's tokens), and a float32 referee: an fp32 copy of the model reads
plain's sequences for a few rows and its argmax at each generated position is compared with plain's
tokens and with ours (``fp32_referee``): a correct bf16 decoder agrees with fp32 about as often as plain.

Prints JSON (and writes it to ``--json-out``); a progress line per variant goes to stderr. Each variant
runs in its own try/except with its own time limit, and variants still waiting are skipped once
``--budget-s`` is spent. Reference (issue 5, one H100, bf16): plain generate 6.7 s (~4,900 new tokens/s);
LoRA epoch 5.5 s (~32,000 tokens/s, peak 13 GiB).

    python3 bench/learn_gpu.py --json-out $OUT/learn_gpu.json   # GPU machine (~3-4 min, compilation included)
    python3 bench/learn_gpu.py --tiny                          # a tiny config on CPU: checks the script
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Qwen2Config, StaticCache


def load_fast_decode():
    """knexa_node/learn/fast_decode.py loaded by path: it needs only torch and transformers, not the knexa package."""
    path = Path(__file__).resolve().parents[1] / "knexa_node" / "learn" / "fast_decode.py"
    spec = importlib.util.spec_from_file_location("knexa_fast_decode", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


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


class VariantTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Interrupt Python code (compilation, a stuck loop) after ``seconds`` (SIGALRM: main thread only)."""
    def expire(signum, frame):
        raise VariantTimeout(f"over its {seconds:.1f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed(fn, device: torch.device, repeats: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - started)
    return best, result


def agreement(tokens: torch.Tensor, reference: torch.Tensor) -> dict:
    equal = tokens == reference
    return {"rows_equal_to_plain": round(float(equal.all(-1).float().mean()), 3),
            "tokens_equal_to_plain": round(float(equal.float().mean()), 3),
            "first_token_equal_to_plain": round(float(equal[:, 0].float().mean()), 3)}


@torch.no_grad()
def fp32_argmax(model, ids: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor, rows: int) -> torch.Tensor:
    """Argmax of an fp32 copy of ``model`` at each generated position of ``reference`` (teacher-forced), first rows."""
    referee = copy.deepcopy(model).float()
    width, out = ids.shape[1], []
    for start in range(0, rows, 4):
        end = min(rows, start + 4)
        full = torch.cat([ids[start:end], reference[start:end]], dim=1)
        full_mask = torch.cat([mask[start:end], torch.ones_like(reference[start:end])], dim=1)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        logits = referee(input_ids=full, attention_mask=full_mask, position_ids=positions, use_cache=False).logits
        out.append(logits[:, width - 1:-1].argmax(-1))
        del logits
    del referee
    if ids.device.type == "cuda":
        torch.cuda.empty_cache()
    return torch.cat(out)


def bench_package(model, config, device, batch: int, new_tokens: int, *, fast_decode, compile_ok: bool,
                  deadline: float, variant_limit_s: float, referee_rows: int, progress=lambda figures: None) -> dict:
    ids, mask = make_prompts(batch, config.vocab_size, device)
    figures: dict = {"prompts": batch, "new_tokens": new_tokens, "prompt_width": ids.shape[1]}
    state: dict = {}

    def fast(name: str, compile_step: bool):
        def build():
            if name not in state:
                state[name] = fast_decode.FastDecoder(model, batch=batch, cache_len=ids.shape[1] + new_tokens,
                                                      max_new_tokens=new_tokens, cuda_graph=device.type == "cuda",
                                                      compile_step=compile_step)
            return state[name]
        return lambda: build()(ids, mask)

    def loop_graph():
        if "loop_graph" not in state:
            state["loop_graph"] = GraphDecoder(model, batch, ids.shape[1] + new_tokens, device, compile_ok)
        return state["loop_graph"](ids, mask, new_tokens)

    variants = {"plain": lambda: plain_generate(model, ids, mask, new_tokens),
                "fast_graph": fast("fast_graph", False)}
    if compile_ok:
        variants["fast_compiled"] = fast("fast_compiled", True)
    variants["hf_static"] = lambda: plain_generate(model, ids, mask, new_tokens, cache_implementation="static")
    variants["loop_graph"] = loop_graph
    reference = None
    for name, run in variants.items():
        if time.monotonic() > deadline:
            figures[name] = {"skipped": "time budget spent"}
            continue
        try:
            with time_limit(max(1.0, min(variant_limit_s, deadline + 60 - time.monotonic()))):
                started = time.perf_counter()
                run()  # warm-up (and graph capture / compilation)
                sync(device)
                warmup_s = time.perf_counter() - started
                seconds, tokens = timed(run, device, repeats=2)
                row = {"seconds": round(seconds, 3), "new_tokens_per_s": round(batch * new_tokens / seconds, 1),
                       "warmup_s": round(warmup_s, 1)}
                figures[name] = row
                if name == "plain":
                    reference = tokens
                    try:
                        state["fp32"] = fp32_argmax(model, ids, mask, reference, min(referee_rows, batch))
                        figures["fp32_referee"] = {"rows": int(state["fp32"].shape[0]), "plain_agreement": round(
                            float((reference[:referee_rows] == state["fp32"]).float().mean()), 3)}
                    except Exception as exc:  # noqa: BLE001 - the referee is a check, not a figure the others need
                        figures["fp32_referee"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
                elif reference is not None:
                    row.update(agreement(tokens, reference))
                if name in state and isinstance(state[name], fast_decode.FastDecoder):
                    prefill_s, _ = timed(lambda: state[name](ids, mask, 1), device, repeats=2)  # noqa: B023
                    row["prefill_s"] = round(prefill_s, 4)
                    row["decode_ms_per_step"] = round((seconds - prefill_s) / (new_tokens - 1) * 1000, 3)
                if name in state and isinstance(state[name], fast_decode.FastDecoder) and reference is not None:
                    predicted = state[name](ids, mask, teacher_forced=reference)
                    row["teacher_forced_agreement"] = round(float((predicted == reference).float().mean()), 3)
                    if "fp32" in state:
                        rows = state["fp32"].shape[0]
                        row["teacher_forced_fp32_agreement"] = round(
                            float((predicted[:rows] == state["fp32"]).float().mean()), 3)
        except Exception as exc:  # noqa: BLE001 - one variant failing must not hide the others' figures
            figures[name] = {**figures.get(name, {}), "error": f"{type(exc).__name__}: {exc}"[:400],
                             "trace": traceback.format_exc()[-1200:]}
        finally:
            state.pop(name, None)  # free its cache and graph pool before the next variant
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"[learn_gpu] {name}: {json.dumps(figures[name])[:300]}", file=sys.stderr, flush=True)
        progress(figures)  # what is measured so far survives a kill
    plain_s = figures.get("plain", {}).get("seconds")
    for name in variants:
        if plain_s and name != "plain" and "seconds" in figures.get(name, {}):
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
    started = time.monotonic()
    parser = argparse.ArgumentParser(description="knexa learning-engine GPU figures")
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (checks the script)")
    parser.add_argument("--skip-lora", action="store_true")
    parser.add_argument("--skip-package", action="store_true")
    parser.add_argument("--compile-cpu", action="store_true", help="with --tiny: also try the compiled variants")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="start no variant (or the LoRA epoch) after this many seconds")
    parser.add_argument("--variant-limit-s", type=float, default=180.0, help="time limit of one variant")
    parser.add_argument("--referee-rows", type=int, default=16, help="rows checked against an fp32 copy")
    parser.add_argument("--json-out", type=Path, help="also write the JSON figures here")
    args = parser.parse_args()
    deadline = started + args.budget_s
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    config = qwen2_config(args.tiny)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    figures: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(dtype),
                     "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}

    def emit() -> str:
        text = json.dumps(figures, indent=1)
        if args.json_out is not None:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(text + "\n")
        return text

    if not args.skip_package:
        batch, new_tokens = (8, 16) if args.tiny else (128, 256)
        try:
            fast_decode = load_fast_decode()
            figures["teacher_package"] = bench_package(
                model, config, device, batch, new_tokens, fast_decode=fast_decode,
                compile_ok=device.type == "cuda" or args.compile_cpu, deadline=deadline,
                variant_limit_s=args.variant_limit_s, referee_rows=args.referee_rows,
                progress=lambda package: (figures.__setitem__("teacher_package", package), emit()))
        except Exception as exc:  # noqa: BLE001 - the LoRA figures still follow
            figures["teacher_package"] = {"error": f"{type(exc).__name__}: {exc}"[:400],
                                          "trace": traceback.format_exc()[-1200:]}
        emit()  # the package figures survive a LoRA failure or a kill
    if not args.skip_lora:
        if time.monotonic() > deadline:
            figures["lora_epoch"] = {"skipped": "time budget spent"}
        else:
            samples, length, batch = (12, 64, 4) if args.tiny else (348, 512, 12)
            try:
                with time_limit(args.variant_limit_s):
                    figures["lora_epoch"] = bench_lora(model, config, device, samples, length, batch)
            except Exception as exc:  # noqa: BLE001 - the package figures are already out
                figures["lora_epoch"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    figures["total_s"] = round(time.monotonic() - started, 1)
    print(emit())


if __name__ == "__main__":
    main()
