"""The memory guard sizes weights from safetensors headers and refuses what does not fit."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, LlamaConfig

from knexa_node.learn.memory import GIB, MemoryGuardError, check_model_memory, estimate_weights


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    out = tmp_path_factory.mktemp("mem") / "m"
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


def test_estimate_matches_the_model(model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    parameters, nbytes = estimate_weights(model_dir)
    assert parameters == sum(p.numel() for p in model.parameters())
    assert nbytes == sum(p.numel() * p.element_size() for p in model.parameters())


def test_guard_refuses_and_accepts(model_dir: Path) -> None:
    _, nbytes = estimate_weights(model_dir)
    fits = nbytes / GIB * 1.5
    assert check_model_memory(model_dir, fits).needed_bytes == nbytes
    assert check_model_memory(model_dir, 0).needed_bytes == nbytes  # 0: no limit
    with pytest.raises(MemoryGuardError, match="max_memory_gb"):
        check_model_memory(model_dir, nbytes / GIB * 0.5)
    # Full training keeps gradients and two AdamW moments: what fits for LoRA does not.
    with pytest.raises(MemoryGuardError, match="full training"):
        check_model_memory(model_dir, fits, train_mode="full")


def test_unreadable_weights_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(MemoryGuardError, match="no safetensors"):
        estimate_weights(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40))
    with pytest.raises(MemoryGuardError, match="too large"):
        estimate_weights(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(MemoryGuardError, match="cannot read"):
        estimate_weights(tmp_path)
    body = b'{"w": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}'
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(MemoryGuardError, match="malformed"):
        estimate_weights(tmp_path)
    with pytest.raises(MemoryGuardError, match="train mode"):
        check_model_memory(tmp_path, 1.0, train_mode="bogus")
