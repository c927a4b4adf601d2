"""Embedded models: small causal LMs and byte-level BPE tokenizers built offline, cached as HF directories.

Nothing is downloaded. A tokenizer is trained with ``tokenizers`` on the
embedded task's text (a corpus seed disjoint from the task's own seeds), and
a model of the given family is built from a config with seeded random
weights. Each is saved as an ordinary Hugging Face directory (config,
tokenizer, safetensors) under the cache dir (``$KNEXA_MODEL_CACHE`` or
``~/.cache/knexa/models``), so every node of a demo loads the very same
files by path. :func:`resolve_model_path` turns any model path (:mod:`knexa_node.models`) into a
directory: it builds ``embedded:<name>`` here and imports ``pretrained:<name>`` through
:mod:`.pretrained`, which sits below this module.

Two tokenizers (1,024 and 768 tokens) and four families give real
heterogeneity: llama-tiny and qwen2-tiny share a tokenizer (the logit path
works between them), neox-tiny and gpt2-tiny share the other.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, BloomConfig, GPT2Config, GPTNeoXConfig, LlamaConfig,
                          PretrainedConfig, PreTrainedTokenizerFast, Qwen2Config)

from knexa_node.learn.embedded_catalog import (  # noqa: F401 (the catalog is part of this module's interface)
    EMBEDDED, EOS, MARKER, PAD, TOKENIZER_1K, TOKENIZER_768, ModelSpec, TokenizerSpec, embedded_dir,
)
from knexa_node.learn.gguf_import import GGUFImportError
from knexa_node.learn.pretrained import PretrainedError, ensure_pretrained
from knexa_node.learn.problems import generate_problems
from knexa_node.models import ModelPathError, parse_model_path
from knexa_node.profile import CATEGORIES


def train_tokenizer(spec: TokenizerSpec) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer over the embedded task's text (about a second)."""
    problems = generate_problems(spec.corpus_seed, {c: spec.corpus_per_category for c in CATEGORIES})
    corpus = [p.prompt + p.solution + p.tests for p in problems]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                   padding_side="left", clean_up_tokenization_spaces=False)


def make_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if spec.model_type == "llama":
        return LlamaConfig(hidden_size=spec.hidden, intermediate_size=spec.intermediate, num_hidden_layers=spec.layers,
                           num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
                           max_position_embeddings=spec.max_positions, tie_word_embeddings=True, **ids)
    if spec.model_type == "qwen2":
        return Qwen2Config(hidden_size=spec.hidden, intermediate_size=spec.intermediate, num_hidden_layers=spec.layers,
                           num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
                           max_position_embeddings=spec.max_positions, tie_word_embeddings=True, **ids)
    if spec.model_type == "gpt_neox":
        return GPTNeoXConfig(hidden_size=spec.hidden, intermediate_size=spec.intermediate, num_hidden_layers=spec.layers,
                             num_attention_heads=spec.heads, max_position_embeddings=spec.max_positions,
                             tie_word_embeddings=False, **ids)
    if spec.model_type == "gpt2":
        return GPT2Config(n_embd=spec.hidden, n_inner=spec.intermediate, n_layer=spec.layers, n_head=spec.heads,
                          n_positions=spec.max_positions, **ids)
    if spec.model_type == "bloom":
        return BloomConfig(hidden_size=spec.hidden, n_layer=spec.layers, n_head=spec.heads, **ids)
    raise ModelPathError(f"no embedded builder for model type {spec.model_type!r}")


def build_model_dir(spec: ModelSpec, out_dir: Path, tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
    """Build ``spec`` from scratch into ``out_dir`` (config, tokenizer, safetensors)."""
    tokenizer = tokenizer if tokenizer is not None else train_tokenizer(spec.tokenizer)
    config = make_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / MARKER).write_text(repr(spec) + "\n", encoding="utf-8")
    return out_dir


def ensure_embedded(name: str, cache_dir: Path | None = None) -> Path:
    """The directory of embedded model ``name``, built on first use (safe if several nodes race)."""
    if name not in EMBEDDED:
        raise ModelPathError(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED)})")
    final = embedded_dir(name, torch.__version__, cache_dir)
    if (final / MARKER).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".build-{final.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    build_model_dir(EMBEDDED[name], staging)
    try:
        os.rename(staging, final)  # atomic: another node that won the race keeps its copy
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (final / MARKER).exists():
            raise
    return final


def resolve_model_path(path: str, cache_dir: Path | None = None) -> Path:
    """``embedded:<name>``, ``pretrained:<name>`` (imported into the cache on first use) or a local HF directory."""
    ref = parse_model_path(path)
    if ref.kind == "embedded":
        return ensure_embedded(ref.name, cache_dir)
    if ref.kind == "pretrained":
        try:
            return ensure_pretrained(ref.name, cache_dir)
        except (PretrainedError, GGUFImportError) as exc:
            raise ModelPathError(str(exc)) from None
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise ModelPathError(f"{directory}: not a Hugging Face model directory (no config.json)")
    return directory
