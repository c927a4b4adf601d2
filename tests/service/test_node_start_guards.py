"""`knexa-node start` refuses, before it listens, a model that does not fit or data that is broken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "knexa-node"), *args], capture_output=True, text=True, timeout=180,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_model_over_the_memory_limit_is_refused(tmp_path: Path) -> None:
    config = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    home = tmp_path / "home"
    assert node("init", "--home", str(home), "--model", str(tmp_path / "model"), "--listen", "/ip4/127.0.0.1/tcp/0").returncode == 0
    text = (home / "config.toml").read_text().replace("max_memory_gb = 0.0", "max_memory_gb = 0.001")
    (home / "config.toml").write_text(text)
    result = node("start", "--home", str(home))
    assert result.returncode == 1
    assert "more than model.max_memory_gb = 0.001" in result.stderr and "Traceback" not in result.stderr
    assert "ready" not in result.stdout


def test_broken_private_data_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert node("init", "--home", str(home), "--model", "embedded:llama-tiny", "--listen", "/ip4/127.0.0.1/tcp/0").returncode == 0
    (tmp_path / "train.jsonl").write_text('{"prompt": "def f():\\n", "tests": "assert f()"}\nnot json\n')
    text = (home / "config.toml").read_text().replace('train = ""', f'train = "{tmp_path / "train.jsonl"}"')
    (home / "config.toml").write_text(text)
    result = node("start", "--home", str(home))
    assert result.returncode == 1
    assert "train.jsonl" in result.stderr and "Traceback" not in result.stderr
