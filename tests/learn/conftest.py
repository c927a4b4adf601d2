"""Tiny real models for the learning-engine tests, built offline once per session (a few hundred K params)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from knexa_node.learn.embedded import ModelSpec, TokenizerSpec, build_model_dir, train_tokenizer  # noqa: E402

torch.set_num_threads(1)

SMALL_TOKENIZER = TokenizerSpec(vocab_size=384, corpus_per_category=30)
OTHER_TOKENIZER = TokenizerSpec(vocab_size=320, corpus_seed=7, corpus_per_category=30)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """llama and qwen2 share a tokenizer; gpt2, gpt_neox and bloom use another one."""
    root = tmp_path_factory.mktemp("models")
    first, second = train_tokenizer(SMALL_TOKENIZER), train_tokenizer(OTHER_TOKENIZER)
    out = {}
    for name, tokenizer_spec, tokenizer in (("llama", SMALL_TOKENIZER, first), ("qwen2", SMALL_TOKENIZER, first),
                                            ("gpt2", OTHER_TOKENIZER, second), ("gpt_neox", OTHER_TOKENIZER, second),
                                            ("bloom", OTHER_TOKENIZER, second)):
        spec = ModelSpec(name, tokenizer_spec, hidden=64, layers=2, heads=2, intermediate=128, max_positions=256)
        out[name] = build_model_dir(spec, root / name, tokenizer)
    return out
