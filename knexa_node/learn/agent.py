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
from knexa_node.learn.generation import STOP_SEQUENCES, Generation, generate
from knexa_node.learn.lora import attach_lora
from knexa_node.learn.package import KnowledgePackage, LogitItem, PackageError, PackageLimits, decode_package, encode_package
from knexa_node.learn.passk import PassAtK, summarize
from knexa_node.learn.problems import Problem
from knexa_node.learn.sandbox import SandboxLimits, check_program, detect_backend, run_programs
from knexa_node.learn.schedule import eq3_reward, linear_schedule, warmup_factor
from knexa_node.learn.state import StateError, load_state, save_state
from knexa_node.models import EMBEDDED_PREFIX
from knexa_node.profile import CATEGORIES, ProfileInputs, build_profile, squash_loss

hf_logging.disable_progress_bar()

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
    seed: int = 0


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
class BuiltPackage:
    package: KnowledgePackage  # the object: the daemon filters and noises it, then encodes it once
    protocol: str
    items: int
    seconds: float

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

    def save(self) -> Path:
        """Persist trainable weights, optimizer state and metadata atomically (after each round)."""
        meta = {"round": self.round, "optimizer_steps": self.optimizer_steps, "train_mode": self.config.train_mode,
                "model_type": self.model_type, "last_metrics": self.last_metrics}
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
        """A training example: the problem as this model reads it, the body as this model writes it."""
        return encode_pair(self.tokenizer, model_prompt(self.tokenizer, problem, self.dialect),
                           model_answer(problem, body, self.dialect), self.config.max_length)

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
        examples = self._examples(self.train_set)
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

    def teacher_package(self, transfer: Sequence[Problem], *, protocol: str = "text") -> BuiltPackage:
        """Greedy answers to the public transfer set, as text or top-k log-probabilities."""
        started = time.monotonic()
        if protocol not in ("text", "logits"):
            raise ValueError(f"unknown protocol {protocol!r}")
        k = self.config.top_k_logits if protocol == "logits" else 0
        outputs = self.generate(transfer, top_k_logits=k)
        eos = self.tokenizer.eos_token_id
        if protocol == "text":
            package = KnowledgePackage("text", self.tokenizer_fingerprint(), self.round,
                                       texts={p.task_id: g.text for p, g in zip(transfer, outputs)})
        else:
            logits = {p.task_id: LogitItem(np.asarray(g.tokens + ([eos] if g.ended else []), dtype=np.int32),
                                           g.topk_ids, g.topk_logp) for p, g in zip(transfer, outputs)}
            package = KnowledgePackage("logits", self.tokenizer_fingerprint(), self.round, logits=logits, k=k)
        return BuiltPackage(package, protocol, len(transfer), time.monotonic() - started)

    # --- learning from a teacher -------------------------------------------------------------

    def weak_categories(self) -> set[str]:
        counts = np.asarray(category_counts(self.train_set), dtype=np.float64)
        shares = counts / counts.sum() if counts.sum() > 0 else np.zeros_like(counts)
        return {c for c, s in zip(CATEGORIES, shares) if s < self.config.weak_share}

    def _kd_items(self, package: KnowledgePackage, transfer: Sequence[Problem]) -> list[tuple[Problem, object]]:
        by_id = {p.task_id: p for p in transfer}
        source = package.texts if package.kind == "text" else package.logits
        items = [(by_id[key], value) for key, value in source.items() if key in by_id]
        if self.config.kd_filter == "weak":
            weak = self.weak_categories()
            items = [(p, v) for p, v in items if p.category in weak]
        return items

    def distill(self, payload: bytes, transfer: Sequence[Problem], *, dev: Sequence[Problem] | None = None,
                max_package_bytes: int = 256 << 20, progress: Progress | None = None) -> DistillReport:
        """Eq. 2 adaptive KD from one package, then Eq. 3's reward (on the validation split and the dev set)."""
        started = time.monotonic()
        # Sized to this transfer set: the teacher answers these problems with the consortium's generation settings.
        limits = PackageLimits.for_transfer(len(transfer), max(self.config.max_new_tokens, self.config.chat_max_new_tokens))
        package = decode_package(payload, max_size=max_package_bytes, limits=limits)
        if package.kind == "logits" and package.tokenizer != self.tokenizer_fingerprint():
            raise PackageError("logit package from a different tokenizer; use the text protocol")
        vocab = len(self.tokenizer)
        if package.kind == "logits" and any(int(v.topk_ids.max(initial=0)) >= vocab or int(v.tokens.max(initial=0)) >= vocab
                                            for v in package.logits.values()):
            raise PackageError("logit package names token ids outside this vocabulary")
        items = self._kd_items(package, transfer)
        alpha = linear_schedule(self.config.alpha_start, self.config.alpha_end, self.round, self.config.total_rounds)
        temperature = linear_schedule(self.config.temperature_start, self.config.temperature_end, self.round,
                                      self.config.total_rounds)
        loss_pre = self.validation_loss()
        dev_pre = self.validation_loss(dev) if dev else None
        local = self._examples(self.train_set)
        rng = random.Random(self.config.seed * 7919 + self.round)
        rng.shuffle(items)
        size = self.config.batch_size
        batches = [items[i:i + size] for i in range(0, len(items), size)]
        self.model.train()
        for step, batch in enumerate(batches):
            kd_loss = self._kd_loss(package.kind, batch, temperature)
            loss = alpha * kd_loss
            if local and alpha < 1:
                loss = loss + (1 - alpha) * self._loss(rng.sample(local, min(size, len(local))))
            self._step(loss, accumulate=1, update=True)
            if progress is not None:
                progress(step + 1, len(batches), float(loss.detach()))
        loss_post = self.validation_loss()
        dev_post = self.validation_loss(dev) if dev else None
        kw = {"gamma": self.config.reward_gamma, "delta_per_kb": self.config.reward_delta}
        reward = eq3_reward(loss_pre, loss_post, len(payload), **kw)
        reward_dev = eq3_reward(dev_pre, dev_post, len(payload), **kw) if dev_pre is not None else None
        return DistillReport(package.kind, len(package), len(items), len(batches), alpha, temperature, loss_pre,
                             loss_post, reward, dev_pre, dev_post, reward_dev, len(payload), time.monotonic() - started)

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
