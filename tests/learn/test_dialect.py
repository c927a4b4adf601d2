"""The chat dialect's round trip: a body put into a chat answer comes back out as the same body."""

from __future__ import annotations

import textwrap

import pytest
import torch

from knexa_node.learn.data import embedded_task
from knexa_node.learn.dialect import CHAT, RAW, answer_body, chat_answer, function_body
from knexa_node.learn.embedded import TokenizerSpec, train_tokenizer
from knexa_node.learn.evaluate import extract_completion
from knexa_node.learn.generation import BlockClosed
from knexa_node.learn.problems import Problem
from knexa_node.learn.sandbox import check_program, run_programs

TASK = embedded_task(0)


def _normal(body: str) -> str:
    return "\n".join(line.rstrip() for line in textwrap.dedent(body).strip().splitlines())


def test_every_embedded_solution_survives_the_round_trip() -> None:
    problems = [p for p in [*TASK.train_pool, *TASK.test] if p.solution]
    assert len(problems) > 500
    for problem in problems:
        back = answer_body(chat_answer(problem, problem.solution), problem, CHAT)
        assert _normal(back) == _normal(problem.solution), problem.task_id


def test_answer_with_prose_around_the_block_gives_a_body_that_passes() -> None:
    problem = next(p for p in TASK.test if p.solution)
    answer = f"Sure! Here it is:\n\n{chat_answer(problem, problem.solution)}\n\nThis works because..."
    body = answer_body(answer, problem, CHAT)
    assert body.startswith("    ") and "def " not in body
    result = run_programs([check_program(problem.prompt, body, problem.tests, problem.entry_point)])[0]
    assert result.passed


def test_raw_is_untouched() -> None:
    assert answer_body("    return 1\n```", TASK.test[0], RAW) == "    return 1\n```"


@pytest.mark.parametrize("code", [
    "import math\ndef f(x):\n    return math.sqrt(x)\n",  # an import would be lost in a body
    "def helper(x):\n    return x\n\ndef f(x):\n    return helper(x)\n",  # a helper too
    "def g(x):\n    return x\n",  # not the entry point
    "def f(x):\n    return (\n",  # does not parse
    'def f(x):\n    """only a docstring"""\n',
])
def test_answers_that_are_not_one_plain_function_stay_whole(code: str) -> None:
    assert function_body(code, "f") is None
    problem = Problem("t/0", "def f(x):\n", "assert f(4) == 2.0", "f", "math")
    answer = f"```python\n{code}```"
    assert answer_body(answer, problem, CHAT) == extract_completion(answer, problem, CHAT)


def test_body_keeps_nested_indentation() -> None:
    code = 'def f(xs):\n    """Sum."""\n    total = 0\n    for x in xs:\n        total += x\n    return total\n'
    assert function_body(code, "f") == "    total = 0\n    for x in xs:\n        total += x\n    return total\n"


def test_block_closed_stops_only_rows_whose_block_is_complete() -> None:
    tokenizer = train_tokenizer(TokenizerSpec(vocab_size=384, corpus_per_category=30))
    prompt = tokenizer("def f(x):\n", add_special_tokens=False)["input_ids"]
    answers = ["```python\ndef f(x):\n    return x\n```\nThis returns x.", "```python\ndef f(x):\n    return", "no code yet"]
    rows = [prompt + tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    done = BlockClosed(tokenizer, len(prompt))(ids, torch.zeros(1))
    assert done.tolist() == [True, False, False]
