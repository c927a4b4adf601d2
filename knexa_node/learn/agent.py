"""The node's learner: one HF causal LM (+ LoRA adapter, or fully trainable) and everything done with it.

All methods are synchronous and blocking; the trio daemon calls them through
``trio.to_thread.run_sync``. One :class:`Agent` per node; not thread-safe.

Training modes: ``"lora"`` trains a PEFT LoRA adapter of the configured rank
(pretrained models); ``"full"`` trains every weight, which is what models
built from random init (the embedded ones) need to learn at all — a LoRA
adapter on a random network has nothing to adapt. ``embedded:`` models
default to ``"full"`` (see :func:`default_train_mode`). What is saved after
each round is exactly the trainable part: the adapter, or the whole (small)
model.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from knexa_node.learn.data import category_counts
from knexa_node.learn.dialect import RAW, answer_body, model_answer, model_prompt, pick_dialect
from knexa_node.learn.distill import sparse_kl
from knexa_node.learn.embedded import resolve_model_path
from knexa_node.learn.encoding import Example, collate, encode_pair, encode_prompt, encode_with_ids
from knexa_node.learn.evaluate import check_completions
from knexa_node.learn.generation import STOP_SEQUENCES, Generation, generate, truncate_at_stop
from knexa_node.learn.lora import attach_lora
from knexa_node.learn.package import KnowledgePackage, LogitItem, PackageError, PackageLimits, decode_package, encode_package
from knexa_node.learn.passk import PassAtK, summarize
from knexa_node.learn.problems import Problem
from knexa_node.learn.sandbox import SandboxLimits, check_program, detect_backend, run_programs
from knexa_node.learn.schedule import eq3_reward, linear_schedule, warmup_factor
from knexa_node.learn.targeting import covered_gain, select_prompts, teachable_order, weak_categories
from knexa_node.learn.state import StateError, load_state, save_state
from knexa_node.models import EMBEDDED_PREFIX
from knexa_node.profile import CATEGORIES, WEAK_PASS1, ProfileInputs, build_profile, squash_loss

hf_logging.disable_progress_bar()

_ENCODED_CACHE = 200_000  # tokenized examples kept per agent (a few hundred bytes each)
VERIFY_MODES = ("off", "tests")
GUARD_MODES = ("off", "dev")
UNTESTED_MODES = ("confidence", "keep", "drop")

Progress = Callable[[int, int, float], None]  # (step, total_steps, loss)


@dataclass
class AgentConfig:
    train_mode: str = "lora"  # "lora" or "full"
    lora_rank: int = 8
    lora_alpha: float | None = None  # default 2 * rank
    lora_targets: tuple[str, ...] | None = None  # default per family (lora.LORA_TARGETS)
    lr: float = 3e-5  # paper; tiny from-scratch models need ~1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.0
    warmup_fraction: float = 0.02
    batch_size: int = 8
    grad_accumulation: int = 1
    max_length: int = 256
    device: str = "auto"  # auto, cpu, cuda
    total_rounds: int = 10  # schedule length of Eq. 2's alpha and temperature
    alpha_start: float = 0.2
    alpha_end: float = 0.5
    temperature_start: float = 1.5
    temperature_end: float = 2.5
    kd_filter: str = "all"  # "all", or "weak": keep teacher answers only in categories the student lacks
    weak_share: float = 0.5 / len(CATEGORIES)  # a category is weak below this share of the local data
    reward_gamma: float = 1.0
    reward_delta: float = 1e-6  # per kilobyte
    max_new_tokens: int = 64
    prompt_format: str = "auto"  # raw, chat, or auto: chat when the tokenizer has a template (learn.dialect)
    chat_max_new_tokens: int = 192  # a chat answer holds the whole function in a code block, then prose
    generation_batch_size: int = 32
    top_k_logits: int = 16
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)
    sandbox_workers: int = 1  # sandbox processes checking answers at once
    seed: int = 0
    # Verified exchange (issue 14). The defaults are the paper's behaviour: every greedy answer is sent.
    verify: str = "off"  # "tests": the teacher sends only answers that pass the public tests; "off": all greedy
    teacher_samples: int = 0  # sampled candidates per tested prompt whose greedy answer failed (or all when m > 1)
    teacher_temperature: float = 0.8
    answers_per_prompt: int = 1  # m: verified answers sent per prompt at most
    untested: str = "confidence"  # prompts without tests: "confidence" (mean token log-prob filter), "keep", "drop"
    min_mean_logprob: float = -0.35  # the confidence filter's floor (nats per token, greedy answer)
    check_received: bool = False  # the student re-runs the tests of every item before training on it
    exchange_budget: int = 0  # transfer prompts a teacher answers at most (0: all it selects)
    weak_pass1: float = WEAK_PASS1  # a category is weak (asked for) below this public dev-set Pass@1
    distill_epochs: int = 1  # passes over the received items in one distillation phase
    received_memory: int = 0  # verified received answers kept and replayed in later local epochs (0: none)
    replay_after: float = 0.0  # steps on the node's own training data after a distillation phase, per phase step
    skip_held: bool = False  # requests name the transfer prompts already held (verified), so teachers skip them
    distill_guard: str = "off"  # "dev": undo a distillation phase after which public dev-set Pass@1 fell


@dataclass(frozen=True)
class TrainReport:
    steps: int
    samples: int
    mean_loss: float
    seconds: float


@dataclass(frozen=True)
class EvalReport:
    pass_at: dict[int, PassAtK]  # k -> value with 95% interval
    per_category: dict[str, float]  # mean Pass@1 estimate per category present
    problems: int
    samples_per_problem: int
    sandbox_backend: str
    seconds: float


@dataclass(frozen=True)
class ExchangeRequest:
    """What a student asks of a teacher: its weak categories, weakest first, and an item budget.

    The categories come from the student's Pass@1 on the *public* dev set
    (:meth:`Agent.exchange_request`), never from its private data.
    """

    categories: tuple[str, ...] = ()
    budget: int = 0  # transfer prompts to answer at most (0: the teacher's own budget)
    held: tuple[str, ...] = ()  # transfer task ids of those categories it holds a verified answer to, oldest first


@dataclass(frozen=True)
class BuiltPackage:
    package: KnowledgePackage  # the object: the daemon filters and noises it, then encodes it once
    protocol: str
    items: int
    seconds: float
    prompts: int = 0  # transfer prompts answered (after the request's categories and budget)
    verified: int = 0  # items whose answer passed the public tests
    unverified: int = 0  # items without tests, kept by the confidence filter (or "keep")
    candidates: int = 0  # answers decoded (greedy + samples)
    categories: tuple[str, ...] = ()  # the categories the items cover

    @cached_property
    def payload(self) -> bytes:
        """``encode_package(package)``, msgpack (see knexa_node.learn.package), encoded on first use."""
        return encode_package(self.package)

    @property
    def nbytes(self) -> int:
        return len(self.payload)


@dataclass(frozen=True)
class DistillReport:
    protocol: str
    items_received: int
    items_used: int
    steps: int
    alpha: float
    temperature: float
    loss_pre: float  # validation loss on the private split, before
    loss_post: float
    reward: float  # Eq. 3 on the private validation split
    dev_loss_pre: float | None  # the same on the public dev set, when given
    dev_loss_post: float | None
    reward_dev: float | None
    package_bytes: int
    seconds: float
    teacher: str = ""
    items_failed: int = 0  # items with tests that failed here: dropped before training
    claims_failed: int = 0  # of those, items the teacher marked verified (a sign against its trust)
    items_known: int = 0  # passing items for prompts the student already held an answer to: not used, not credited
    covered: tuple[str, ...] = ()  # categories of the items used
    reward_covered: float | None = None  # dev-set Pass@1 gain on the covered categories (schedule.covered_gain)
    dev_pass1_pre: float | None = None  # public dev-set Pass@1 of the whole phase, before and after
    dev_pass1_post: float | None = None
    kept: bool = True  # False: the guard undid the phase (dev Pass@1 fell); its verified answers stay in replay


@dataclass(frozen=True)
class MultiDistillReport:
    """One distillation phase from several packages; one :class:`DistillReport` per teacher, in input order."""

    teachers: list[DistillReport]
    steps: int
    dev_competence_pre: dict[str, float]
    dev_competence_post: dict[str, float]  # measured at the end of the phase, before the guard's decision
    seconds: float
    replay_steps: int = 0  # steps on the node's own data that ended the phase (``replay_after``)
    kept: bool = True  # False: the guard restored the weights from before the phase (``distill_guard``)


def _mean_logprob(generation: Generation) -> float:
    """Mean log-probability of a greedy answer's tokens (its top-1 entries): the confidence filter's measure."""
    if generation.topk_logp is None or len(generation.topk_logp) == 0:
        return float("-inf")
    return float(np.mean(generation.topk_logp[:, 0].astype(np.float64)))


def _mean_pass1(competence: Mapping[str, float], counts: Mapping[str, int]) -> float | None:
    total = sum(counts.get(c, 0) for c in competence)
    return sum(v * counts.get(c, 0) for c, v in competence.items()) / total if total else None


def default_train_mode(model_path: str) -> str:
    return "full" if model_path.startswith(EMBEDDED_PREFIX) else "lora"


def _pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class Agent:
    """A node's model, its private data, and its persisted training state."""

    def __init__(self, model_path: str, state_dir: Path, config: AgentConfig, *, train: Sequence[Problem],
                 validation: Sequence[Problem], model_cache: Path | None = None) -> None:
        if config.train_mode not in ("lora", "full"):
            raise ValueError(f"train_mode must be 'lora' or 'full', got {config.train_mode!r}")
        if config.verify not in VERIFY_MODES or config.untested not in UNTESTED_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES} and untested one of {UNTESTED_MODES}")
        if config.distill_guard not in GUARD_MODES or config.replay_after < 0:
            raise ValueError(f"distill_guard must be one of {GUARD_MODES} and replay_after >= 0")
        self.config = config
        self.state_dir = Path(state_dir)
        self.train_set, self.validation_set = list(train), list(validation)
        self.model_dir = resolve_model_path(model_path, model_cache)
        self.device = _pick_device(config.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.dialect = pick_dialect(self.tokenizer, config.prompt_format)
        base = AutoModelForCausalLM.from_pretrained(self.model_dir)
        self.model_type: str = base.config.model_type
        self.model = (attach_lora(base, config.lora_rank, alpha=config.lora_alpha, targets=config.lora_targets)
                      if config.train_mode == "lora" else base)
        self.model.to(self.device)
        self.total_parameters = sum(p.numel() for p in base.parameters())
        self.optimizer = torch.optim.AdamW(self._trainable().values(), lr=config.lr, betas=config.betas,
                                           eps=config.eps, weight_decay=config.weight_decay)
        self.round = 0
        self.optimizer_steps = 0
        self.last_metrics: dict[str, float] | None = None
        self._encoded: dict[tuple[str, str], Example] = {}
        # Verified answers received from teachers, by task id (the newest wins), replayed in local epochs.
        self.received: dict[str, tuple[Problem, str]] = {}
        self._answers: dict[str, tuple[list[Generation], bool]] = {}  # a teacher's answers for one model state
        self._answers_state: tuple[int, int, int] | None = None
        # The last public dev-set measurement of this model (competence()): a teacher answers its strengths first.
        self.own_competence: dict[str, float] = {}
        self._restore()

    # --- identity and state ------------------------------------------------------------------

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        # named_parameters() lists a tied embedding once, so the saved file holds it once.
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def tokenizer_fingerprint(self) -> str:
        """sha256 of the tokenizer's vocabulary: equal fingerprints allow the logit path."""
        vocab = sorted(self.tokenizer.get_vocab().items())
        return hashlib.sha256(repr(vocab).encode("utf-8")).hexdigest()

    def _restore(self) -> None:
        loaded = load_state(self.state_dir)
        if loaded is None:
            return
        weights, optimizer_state, meta = loaded
        mine = self._trainable()
        if set(weights) != set(mine) or meta.get("train_mode") != self.config.train_mode:
            raise StateError(f"{self.state_dir}: saved state does not match this model and training mode")
        with torch.no_grad():
            for name, tensor in weights.items():
                if tensor.shape != mine[name].shape:
                    raise StateError(f"{self.state_dir}: shape of {name} differs from the model's")
                mine[name].copy_(tensor.to(mine[name].device))
        self.optimizer.load_state_dict(optimizer_state)
        self.round = int(meta["round"])
        self.optimizer_steps = int(meta.get("optimizer_steps", 0))
        self.last_metrics = meta.get("last_metrics")
        for record in meta.get("received", []):
            problem = Problem(**record["problem"])
            self.received[problem.task_id] = (problem, str(record["body"]))

    def save(self) -> Path:
        """Persist trainable weights, optimizer state and metadata atomically (after each round)."""
        meta = {"round": self.round, "optimizer_steps": self.optimizer_steps, "train_mode": self.config.train_mode,
                "model_type": self.model_type, "last_metrics": self.last_metrics,
                "received": [{"problem": asdict(p), "body": body} for p, body in self.received.values()]}
        return save_state(self.state_dir, self.round, dict(self._trainable()), self.optimizer.state_dict(), meta)

    # --- training ----------------------------------------------------------------------------

    def _autocast(self) -> torch.autocast:
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def _examples(self, problems: Sequence[Problem]) -> list[Example]:
        return [self._pair(p, p.solution) for p in problems if p.solution]

    def _pair(self, problem: Problem, body: str) -> Example:
        """A training example: the problem as this model reads it, the body as this model writes it.

        Cached: the private sets are fixed and tokenizing them again every epoch cost as much as a step.
        """
        key = (problem.prompt, body)
        example = self._encoded.get(key)
        if example is None:
            example = encode_pair(self.tokenizer, model_prompt(self.tokenizer, problem, self.dialect),
                                  model_answer(problem, body, self.dialect), self.config.max_length)
            if len(self._encoded) < _ENCODED_CACHE:
                self._encoded[key] = example
        return example

    def _training_examples(self) -> list[Example]:
        """The private training split, plus the verified answers received earlier (``received_memory``)."""
        return self._examples(self.train_set) + [self._pair(p, body) for p, body in self.received.values()]

    def _loss(self, examples: Sequence[Example]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in collate(examples, self.tokenizer.pad_token_id).items()}
        with self._autocast():
            return self.model(**batch).loss

    def _step(self, loss: torch.Tensor, *, accumulate: int, update: bool) -> None:
        (loss / accumulate).backward()
        if update:
            torch.nn.utils.clip_grad_norm_(self._trainable().values(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer_steps += 1

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def local_epoch(self, progress: Progress | None = None) -> TrainReport:
        """One epoch over the private training split (Eq. 2's L_i), with warm-up and accumulation."""
        started = time.monotonic()
        examples = self._training_examples()
        random.Random(self.config.seed * 1_000_003 + self.round).shuffle(examples)
        batches = [examples[i:i + self.config.batch_size] for i in range(0, len(examples), self.config.batch_size)]
        total_updates = math.ceil(len(batches) / self.config.grad_accumulation)
        self.model.train()
        losses = []
        for micro, batch in enumerate(batches):
            update = micro // self.config.grad_accumulation
            self._set_lr(self.config.lr * warmup_factor(update, total_updates, self.config.warmup_fraction))
            loss = self._loss(batch)
            accumulate = self.config.grad_accumulation
            self._step(loss, accumulate=accumulate,
                       update=(micro + 1) % accumulate == 0 or micro + 1 == len(batches))
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(micro + 1, len(batches), losses[-1])
        self._set_lr(self.config.lr)
        return TrainReport(len(batches), len(examples), float(np.mean(losses)) if losses else float("nan"),
                           time.monotonic() - started)

    @torch.no_grad()
    def validation_loss(self, problems: Sequence[Problem] | None = None) -> float:
        """Token-weighted mean CE of the reference completions (default: the private validation split)."""
        examples = self._examples(self.validation_set if problems is None else problems)
        if not examples:
            return float("nan")
        self.model.eval()
        total, count = 0.0, 0
        for start in range(0, len(examples), 32):
            chunk = examples[start:start + 32]
            tokens = sum(sum(1 for t in e.labels if t != -100) for e in chunk)
            total += float(self._loss(chunk)) * tokens
            count += tokens
        return total / max(count, 1)

    # --- evaluation --------------------------------------------------------------------------

    def generate(self, problems: Sequence[Problem], *, temperature: float = 0.0, top_k_logits: int = 0,
                 seed: int = 0) -> list[Generation]:
        """Answers to ``problems`` in this model's dialect; each ``text`` is the canonical body."""
        raw = self.dialect == RAW
        # In the weights' dtype, not under autocast: the CUDA-graph decoder cannot capture autocast's casts
        # (it fell back to generate every call), and a small model's decode step is launch-bound anyway.
        outputs = generate(self.model, self.tokenizer, [model_prompt(self.tokenizer, p, self.dialect) for p in problems],
                           max_new_tokens=self.config.max_new_tokens if raw else self.config.chat_max_new_tokens,
                           batch_size=self.config.generation_batch_size, temperature=temperature,
                           top_k_logits=top_k_logits, max_prompt_tokens=self.config.max_length, device=self.device,
                           seed=seed, stop_sequences=STOP_SEQUENCES if raw else (), stop_at_closed_block=not raw)
        return [replace(g, text=answer_body(g.text, p, self.dialect)) for p, g in zip(problems, outputs)]

    def evaluate(self, problems: Sequence[Problem], *, samples: int = 1, temperature: float = 0.8,
                 ks: Sequence[int] = (1, 5, 10), backend: str = "auto") -> EvalReport:
        """Pass@k (Chen et al.) over the whole set; one greedy sample when ``samples`` is 1."""
        started = time.monotonic()
        completions = self.generate([p for p in problems for _ in range(samples)], temperature=0.0 if samples == 1 else temperature, seed=self.round)
        programs = [check_program(problems[i // samples].prompt, g.text, problems[i // samples].tests,
                                  problems[i // samples].entry_point) for i, g in enumerate(completions)]
        results = run_programs(programs, self.config.sandbox, backend=backend)
        correct = [sum(r.passed for r in results[i * samples:(i + 1) * samples]) for i in range(len(problems))]
        by_category: dict[str, list[float]] = {}
        for problem, c in zip(problems, correct):
            by_category.setdefault(problem.category, []).append(c / samples)
        return EvalReport(summarize([samples] * len(problems), correct, ks),
                          {c: float(np.mean(v)) for c, v in by_category.items()}, len(problems), samples,
                          detect_backend() if backend == "auto" else backend, time.monotonic() - started)

    # --- teaching ----------------------------------------------------------------------------

    def competence(self, dev: Sequence[Problem]) -> dict[str, float]:
        """Greedy Pass@1 per category on the public dev set (what a request and the profile may reveal)."""
        report = self.evaluate(dev, samples=1)
        self.own_competence = {c: float(report.per_category[c]) for c in CATEGORIES if c in report.per_category}
        return dict(self.own_competence)

    def exchange_request(self, competence: Mapping[str, float]) -> ExchangeRequest:
        """The categories to ask teachers for (dev-set Pass@1 below ``weak_pass1``), weakest first, and the prompts held."""
        categories = weak_categories(competence, self.config.weak_pass1)
        wanted = set(categories)
        held = tuple(task_id for task_id, (problem, _) in self.received.items()
                     if problem.category in wanted) if self.config.skip_held else ()
        return ExchangeRequest(categories, self.config.exchange_budget, held)

    def _check(self, problems: Sequence[Problem], bodies: Sequence[str]) -> list[bool]:
        """Each body run against its problem's public tests in the sandbox."""
        if not problems:
            return []
        results = check_completions(problems, bodies, self.config.sandbox, workers=self.config.sandbox_workers)
        return [r.passed for r in results]

    def _candidates(self, prompts: Sequence[Problem], k: int) -> tuple[list[list[Generation]], list[bool], int]:
        """Per prompt the answers to send, whether they passed tests, and how many were decoded.

        ``verify == "off"``: the greedy answer, always. ``"tests"``: greedy, then
        ``teacher_samples`` samples where greedy failed (or everywhere when
        ``answers_per_prompt`` > 1); only passing answers, at most m, distinct.
        Prompts without tests follow ``untested``.
        """
        config = self.config
        greedy = self.generate(prompts, top_k_logits=k)
        if config.verify == "off":
            return [[g] for g in greedy], [False] * len(prompts), len(prompts)
        tested = [i for i, p in enumerate(prompts) if p.tests.strip()]
        passed = dict(zip(tested, self._check([prompts[i] for i in tested], [greedy[i].text for i in tested])))
        chosen: list[list[Generation]] = [[greedy[i]] if passed.get(i) else [] for i in range(len(prompts))]
        decoded = len(prompts)
        m = max(1, config.answers_per_prompt)
        again = [i for i in tested if m > 1 or not passed[i]]
        if config.teacher_samples > 0 and again:
            n = config.teacher_samples
            asked = [prompts[i] for i in again for _ in range(n)]
            samples = self.generate(asked, temperature=config.teacher_temperature, top_k_logits=k,
                                    seed=config.seed * 7919 + self.round * 31 + 1)
            decoded += len(samples)
            ok = self._check(asked, [g.text for g in samples])
            for j, (g, good) in enumerate(zip(samples, ok)):
                mine = chosen[again[j // n]]
                if good and len(mine) < m and all(g.text != c.text for c in mine):
                    mine.append(g)
        untested = [i for i, p in enumerate(prompts) if not p.tests.strip()]
        if config.untested == "keep":
            for i in untested:
                chosen[i] = [greedy[i]]
        elif config.untested == "confidence" and untested:
            # The greedy tokens' own log-probabilities (top-1 of each step), decoded again only for these prompts.
            scored = greedy if k > 0 else self.generate([prompts[i] for i in untested], top_k_logits=1)
            for n, i in enumerate(untested):
                if _mean_logprob(scored[i] if k > 0 else scored[n]) >= config.min_mean_logprob:
                    chosen[i] = [greedy[i]]
        return chosen, [bool(p.tests.strip()) for p in prompts], decoded

    def _cached_candidates(self, prompts: Sequence[Problem], k: int) -> tuple[list[list[Generation]], list[bool], int]:
        """:meth:`_candidates`, reusing this model state's answers: one teacher serves several students a round."""
        if self._answers_state != (self.optimizer_steps, self.round, k):
            self._answers_state, self._answers = (self.optimizer_steps, self.round, k), {}
        missing = [p for p in prompts if p.task_id not in self._answers]
        answers, tested, decoded = self._candidates(missing, k) if missing else ([], [], 0)
        for problem, mine, has_tests in zip(missing, answers, tested):
            self._answers[problem.task_id] = (mine, has_tests)
        return ([self._answers[p.task_id][0] for p in prompts], [self._answers[p.task_id][1] for p in prompts],
                decoded)

    def teacher_package(self, transfer: Sequence[Problem], *, protocol: str = "text",
                        request: ExchangeRequest | None = None) -> BuiltPackage:
        """Answers to the public transfer set (the requested categories it knows best first), as text or top-k logits.

        With ``verify == "tests"`` only answers that pass the public tests are
        sent, each marked verified; a logit item is sent only when its decoded
        answer passed. An item id is the task id, ``"<task id>#<j>"`` for a
        further answer to the same prompt.
        """
        started = time.monotonic()
        if protocol not in ("text", "logits"):
            raise ValueError(f"unknown protocol {protocol!r}")
        request = request or ExchangeRequest()
        categories = teachable_order(request.categories, self.own_competence)
        prompts = select_prompts(transfer, categories, request.budget or self.config.exchange_budget, request.held)
        k = self.config.top_k_logits if protocol == "logits" else 0
        answers, tested, decoded = self._cached_candidates(prompts, k)
        eos = self.tokenizer.eos_token_id
        texts: dict[str, str] = {}
        logits: dict[str, LogitItem] = {}
        verified: set[str] = set()
        for problem, mine, has_tests in zip(prompts, answers, tested):
            for j, g in enumerate(mine):
                key = problem.task_id if j == 0 else f"{problem.task_id}#{j}"
                if has_tests and self.config.verify == "tests":
                    verified.add(key)
                if protocol == "text":
                    texts[key] = g.text
                else:
                    n = len(g.tokens) + int(g.ended)
                    logits[key] = LogitItem(np.asarray(g.tokens + ([eos] if g.ended else []), dtype=np.int32),
                                            g.topk_ids[:n, :k], g.topk_logp[:n, :k])
        package = KnowledgePackage(protocol, self.tokenizer_fingerprint(), self.round, texts=texts, logits=logits,
                                   k=k, verified=frozenset(verified))
        covered = tuple(c for c in CATEGORIES if any(p.category == c and a for p, a in zip(prompts, answers)))
        return BuiltPackage(package, protocol, len(package), time.monotonic() - started,
                            prompts=len(prompts), verified=len(verified), unverified=len(package) - len(verified),
                            candidates=decoded, categories=covered)

    # --- learning from a teacher -------------------------------------------------------------

    def weak_categories(self) -> set[str]:
        counts = np.asarray(category_counts(self.train_set), dtype=np.float64)
        shares = counts / counts.sum() if counts.sum() > 0 else np.zeros_like(counts)
        return {c for c, s in zip(CATEGORIES, shares) if s < self.config.weak_share}

    def _item_body(self, problem: Problem, value: object) -> str:
        """The canonical body an item teaches (a logit item's tokens decoded in this model's dialect)."""
        if isinstance(value, LogitItem):
            eos = self.tokenizer.eos_token_id
            tokens = [int(t) for t in value.tokens if int(t) != eos]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if self.dialect == RAW:
                text = truncate_at_stop(text, STOP_SEQUENCES)
            return answer_body(text, problem, self.dialect)
        return str(value)

    def _kd_items(self, package: KnowledgePackage, transfer: Sequence[Problem]) -> list[tuple[str, Problem, object]]:
        """(item id, transfer problem, value) of the items this student may learn from."""
        by_id = {p.task_id: p for p in transfer}
        source = package.texts if package.kind == "text" else package.logits
        items = []
        for key, value in source.items():
            problem = by_id.get(key) or by_id.get(key.rsplit("#", 1)[0])  # "<task id>#<j>": a further answer
            if problem is not None:
                items.append((key, problem, value))
        if self.config.kd_filter == "weak":
            weak = self.weak_categories()
            items = [item for item in items if item[1].category in weak]
        return items

    def _open(self, payload: bytes, max_package_bytes: int, transfer_size: int) -> KnowledgePackage:
        # Sized to this transfer set: the teacher answers these problems with the consortium's generation
        # settings and at most answers_per_prompt answers each (a consortium-wide setting, like the lengths).
        limits = PackageLimits.for_transfer(transfer_size * max(1, self.config.answers_per_prompt),
                                            max(self.config.max_new_tokens, self.config.chat_max_new_tokens))
        package = decode_package(payload, max_size=max_package_bytes, limits=limits)
        if package.kind == "logits" and package.tokenizer != self.tokenizer_fingerprint():
            raise PackageError("logit package from a different tokenizer; use the text protocol")
        vocab = len(self.tokenizer)
        if package.kind == "logits" and any(int(v.topk_ids.max(initial=0)) >= vocab or int(v.tokens.max(initial=0)) >= vocab
                                            for v in package.logits.values()):
            raise PackageError("logit package names token ids outside this vocabulary")
        return package

    def _screen(self, package: KnowledgePackage, items: list[tuple[str, Problem, object]]
                ) -> tuple[list[tuple[Problem, object, str]], int, int]:
        """Re-run the tests of every item that has them: (kept items with their bodies, failed, failed claims)."""
        bodies = [self._item_body(p, v) for _, p, v in items]
        if not self.config.check_received:
            return [(p, v, b) for (_, p, v), b in zip(items, bodies)], 0, 0
        tested = [i for i, (_, p, _) in enumerate(items) if p.tests.strip()]
        ok = dict(zip(tested, self._check([items[i][1] for i in tested], [bodies[i] for i in tested])))
        kept, failed, claims = [], 0, 0
        for i, ((key, problem, value), body) in enumerate(zip(items, bodies)):
            if i in ok and not ok[i]:
                failed += 1
                claims += key in package.verified
            elif i in ok or self.config.untested != "drop":
                kept.append((problem, value, body))
        return kept, failed, claims

    def distill(self, payload: bytes, transfer: Sequence[Problem], *, dev: Sequence[Problem] | None = None,
                max_package_bytes: int = 256 << 20, progress: Progress | None = None,
                dev_competence: Mapping[str, float] | None = None) -> DistillReport:
        """Eq. 2 adaptive KD from one package, then Eq. 3's reward (on the validation split and the dev set)."""
        return self.distill_many([("", payload)], transfer, dev=dev, max_package_bytes=max_package_bytes,
                                 progress=progress, dev_competence=dev_competence).teachers[0]

    def distill_many(self, packages: Sequence[tuple[str, bytes]], transfer: Sequence[Problem], *,
                     dev: Sequence[Problem] | None = None, max_package_bytes: int = 256 << 20,
                     progress: Progress | None = None,
                     dev_competence: Mapping[str, float] | None = None) -> MultiDistillReport:
        """One distillation phase from every package of the round (Eq. 2), and a reward per teacher.

        Items whose public tests fail here are dropped and counted
        (``check_received``); items for prompts the student already holds a
        verified answer to (:attr:`received`) are counted as known and left
        out: a second package from the same teacher brings little new, and
        its reward says so. Rewards per teacher, over the new items: Eq. 3 of the whole phase,
        shared in proportion to the items each teacher's package gave; and
        ``reward_covered``, the dev-set Pass@1 gain on the categories each
        package covered (:func:`~knexa_node.learn.targeting.covered_gain`),
        measured only when ``dev`` is given (``dev_competence``: the
        measurement before, when the caller already has it). Verified items
        used join :attr:`received` (``received_memory``).

        The phase ends with ``replay_after`` steps per distillation step on the
        node's own data and held answers (:meth:`_replay`). With
        ``distill_guard == "dev"`` (and ``dev`` given), a phase after which
        the dev-set Pass@1 fell is undone: weights and optimizer state as
        before it (``kept`` False); its verified answers stay in the replay memory.
        """
        started = time.monotonic()
        opened = [(teacher, self._open(payload, max_package_bytes, len(transfer)), len(payload)) for teacher, payload in packages]
        screened, known = [], []
        for teacher, package, nbytes in opened:
            kept, failed, claims = self._screen(package, self._kd_items(package, transfer))
            # A prompt this student already holds a verified answer to (received earlier, replayed in every local
            # epoch) teaches nothing new: not trained on again, and not credited to this teacher.
            fresh = [item for item in kept if item[0].task_id not in self.received]
            known.append(len(kept) - len(fresh))
            screened.append((teacher, package, nbytes, fresh, failed, claims))
        alpha = linear_schedule(self.config.alpha_start, self.config.alpha_end, self.round, self.config.total_rounds)
        temperature = linear_schedule(self.config.temperature_start, self.config.temperature_end, self.round,
                                      self.config.total_rounds)
        loss_pre = self.validation_loss()
        dev_pre = self.validation_loss(dev) if dev else None
        used = sum(len(kept) for *_, kept, _, _ in screened)
        competence_pre = dict(dev_competence) if dev_competence is not None else (
            self.competence(dev) if dev and used else {})
        rng = random.Random(self.config.seed * 7919 + self.round)
        size = self.config.batch_size
        batches: list[tuple[str, list[tuple[Problem, object, str]]]] = []
        for _ in range(max(1, self.config.distill_epochs)):
            for kind in ("text", "logits"):
                pool = [item for _, package, _, kept, _, _ in screened if package.kind == kind for item in kept]
                rng.shuffle(pool)
                batches.extend((kind, pool[i:i + size]) for i in range(0, len(pool), size))
        rng.shuffle(batches)
        replay_steps = round(len(batches) * self.config.replay_after)
        guarded = self.config.distill_guard == "dev" and bool(dev) and bool(batches)
        before = self._snapshot() if guarded else None
        local = self._training_examples()
        self.model.train()
        for step, (kind, batch) in enumerate(batches):
            loss = alpha * self._kd_loss(kind, [(p, v if kind == "logits" else b) for p, v, b in batch], temperature)
            if local and alpha < 1:
                loss = loss + (1 - alpha) * self._loss(rng.sample(local, min(size, len(local))))
            self._step(loss, accumulate=1, update=True)
            if progress is not None:
                progress(step + 1, len(batches) + replay_steps, float(loss.detach()))
        # Verified answers used join the replay memory first, so that the replay below rehearses them too.
        self._remember([item for *_, kept, _, _ in screened for item in kept])
        replay_steps = self._replay(replay_steps, rng, progress, done=len(batches))
        loss_post = self.validation_loss()
        dev_post = self.validation_loss(dev) if dev else None
        competence_post = self.competence(dev) if dev and used else dict(competence_pre)
        dev_counts = {c: n for c, n in zip(CATEGORIES, category_counts(dev or []))}
        pass1_pre, pass1_post = _mean_pass1(competence_pre, dev_counts), _mean_pass1(competence_post, dev_counts)
        kept_phase = not (before is not None and pass1_pre is not None and pass1_post is not None
                          and pass1_post < pass1_pre)
        if not kept_phase:
            # The phase left the node worse on the public dev set: back to the weights from before it. The
            # verified answers stay in the replay memory, so local epochs still teach them, among its own data.
            self._roll_back(before)
            self.own_competence = dict(competence_pre)
        total_bytes = sum(nbytes for _, _, nbytes, *_ in screened)
        kw = {"gamma": self.config.reward_gamma, "delta_per_kb": self.config.reward_delta}
        all_items = {c: sum(1 for *_, kept, _, _ in screened for p, _, _ in kept if p.category == c) for c in CATEGORIES}
        reports = []
        for (teacher, package, nbytes, kept, failed, claims), held in zip(screened, known):
            share = len(kept) / used if used else 1.0 / len(screened)
            mine = {c: sum(1 for p, _, _ in kept if p.category == c) for c in CATEGORIES}
            reward = share * eq3_reward(loss_pre, loss_post, total_bytes, **kw)
            reward_dev = share * eq3_reward(dev_pre, dev_post, total_bytes, **kw) if dev_pre is not None else None
            covered = tuple(c for c in CATEGORIES if mine[c])
            # Measured before the guard's decision: what the package taught, whether or not the phase was kept.
            reward_covered = covered_gain(competence_pre, competence_post, dev_counts, mine, all_items) if dev else None
            reports.append(DistillReport(
                package.kind, len(package), len(kept), len(batches), alpha, temperature, loss_pre, loss_post, reward,
                dev_pre, dev_post, reward_dev, nbytes, time.monotonic() - started, teacher=teacher,
                items_failed=failed, claims_failed=claims, items_known=held, covered=covered, reward_covered=reward_covered,
                dev_pass1_pre=pass1_pre, dev_pass1_post=pass1_post, kept=kept_phase))
        return MultiDistillReport(reports, len(batches), competence_pre, competence_post, time.monotonic() - started,
                                  replay_steps=replay_steps, kept=kept_phase)

    def _replay(self, steps: int, rng: random.Random, progress: Progress | None, *, done: int) -> int:
        """``steps`` steps on the private training split and the held answers: the phase ends on the node's own data.
        Returns the steps taken (none without any training example).

        Measured (issue 14): after a phase of steps on foreign answers alone, the student's test Pass@1 was
        lower in 59-71% of distillations, by ~2.5 points on average; the next local epoch recovered it.
        """
        examples = self._training_examples()
        if not examples:
            return 0
        for step in range(steps):
            loss = self._loss(rng.sample(examples, min(self.config.batch_size, len(examples))))
            self._step(loss, accumulate=1, update=True)
            if progress is not None:
                progress(done + step + 1, done + steps, float(loss.detach()))
        return steps

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The trainable weights and the optimizer's state, copied: what :meth:`_roll_back` restores."""
        weights = {name: p.detach().clone() for name, p in self._trainable().items()}
        return weights, copy.deepcopy(self.optimizer.state_dict())

    def _roll_back(self, snapshot: tuple[dict[str, torch.Tensor], dict]) -> None:
        weights, optimizer_state = snapshot
        with torch.no_grad():
            for name, p in self._trainable().items():
                p.copy_(weights[name])
        self.optimizer.load_state_dict(optimizer_state)

    def _remember(self, items: Sequence[tuple[Problem, object, str]]) -> None:
        """Keep verified answers (their tests passed here) for later local epochs, newest last, at most the cap."""
        if self.config.received_memory <= 0 or not self.config.check_received:
            return
        for problem, _, body in items:
            if problem.tests.strip():
                self.received.pop(problem.task_id, None)
                self.received[problem.task_id] = (problem, body)
        while len(self.received) > self.config.received_memory:
            self.received.pop(next(iter(self.received)))

    def _kd_loss(self, kind: str, batch: Sequence[tuple[Problem, object]], temperature: float) -> torch.Tensor:
        if kind == "text":
            # Re-tokenize the teacher's answer with our own tokenizer (works across families).
            examples = [self._pair(p, str(text)) for p, text in batch]
            return self._loss(examples)
        examples, targets = [], []
        for problem, item in batch:
            if not isinstance(item, LogitItem):  # decode_package builds a logits package of LogitItems only
                raise PackageError(f"a logits package holds a {type(item).__name__}")
            # Same tokenizer, so the same dialect: the teacher's tokens follow the prompt as this model reads it.
            prompt_ids = encode_prompt(self.tokenizer, model_prompt(self.tokenizer, problem, self.dialect),
                                       self.config.max_length)
            example = encode_with_ids(prompt_ids, item.tokens.tolist(), self.config.max_length)
            kept = sum(1 for t in example.labels if t != -100)
            examples.append(example)
            targets.append((len(example.input_ids) - kept, kept, item))
        batch_t = {k: v.to(self.device) for k, v in collate(examples, self.tokenizer.pad_token_id).items()}
        with self._autocast():
            logits = self.model(input_ids=batch_t["input_ids"], attention_mask=batch_t["attention_mask"]).logits
        rows, ids, logp = [], [], []
        for row, (prompt_len, kept, item) in enumerate(targets):
            if kept == 0:
                continue
            # Position t predicts token t + 1: the first generated token comes from the last prompt position.
            rows.append(logits[row, prompt_len - 1:prompt_len - 1 + kept])
            ids.append(torch.from_numpy(item.topk_ids[:kept].astype(np.int64)))
            logp.append(torch.from_numpy(item.topk_logp[:kept].astype(np.float32)))
        if not rows:
            return logits.sum() * 0.0
        return sparse_kl(torch.cat(rows), torch.cat(ids).to(self.device), torch.cat(logp).to(self.device), temperature)

    # --- round bookkeeping and profile ---------------------------------------------------------

    def finish_round(self) -> Path:
        """Advance the round counter (schedules) and persist everything."""
        self.round += 1
        return self.save()

    def profile(self, *, pass1: float, pass5: float, val_loss: float, dev_loss: float) -> np.ndarray:
        """The 32-dim profile; deltas are against the metrics of the previous call (persisted)."""
        metrics = {"pass1": pass1, "pass5": pass5, "val_loss": squash_loss(val_loss), "dev_loss": squash_loss(dev_loss),
                   "capacity": math.log10(max(self.total_parameters, 1)) / 12,
                   "data_size": math.log10(max(len(self.train_set), 1)) / 6}
        vector = build_profile(ProfileInputs(self.model_type, metrics, self.last_metrics,
                                             category_counts(self.train_set)))
        self.last_metrics = metrics
        return vector

    def describe(self) -> Mapping[str, object]:
        trainable = sum(p.numel() for p in self._trainable().values())
        return {"model_dir": str(self.model_dir), "model_type": self.model_type, "device": str(self.device),
                "train_mode": self.config.train_mode, "parameters": self.total_parameters, "trainable": trainable,
                "round": self.round, "config": {k: v for k, v in asdict(self.config).items() if k != "sandbox"}}
