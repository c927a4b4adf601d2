"""The embedded task generator, JSONL I/O and the splits (no torch, fast)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from knexa_node.learn.data import (DataError, assert_disjoint, category_counts, dirichlet_split, embedded_task,
                                   embedded_task_with_transfer, load_jsonl, split_validation, write_jsonl)
from knexa_node.learn.problems import Problem, generate_problems, template_count
from knexa_node.profile import CATEGORIES


def test_generator_is_seeded_and_covers_every_category() -> None:
    first = generate_problems(3, {c: 5 for c in CATEGORIES})
    again = generate_problems(3, {c: 5 for c in CATEGORIES})
    other = generate_problems(4, {c: 5 for c in CATEGORIES})
    assert first == again
    assert first != other
    assert Counter(p.category for p in first) == {c: 5 for c in CATEGORIES}
    assert all(template_count(c) >= 5 for c in CATEGORIES)


def test_reference_solutions_pass_and_wrong_ones_fail() -> None:
    for problem in generate_problems(11, {c: 6 for c in CATEGORIES}):
        namespace: dict = {}
        exec(problem.prompt + problem.solution + problem.tests, namespace)
        broken: dict = {}
        with pytest.raises(Exception):
            exec(problem.prompt + "    return object()\n" + problem.tests, broken)


def test_names_and_constants_vary_within_a_template() -> None:
    problems = generate_problems(5, {"string": 60})
    by_template = Counter(p.task_id.split("/")[2] for p in problems)
    assert len(by_template) >= 5
    assert len({p.entry_point for p in problems}) > 30
    assert len({p.prompt.split('"""')[1] for p in problems}) > 30  # docstrings differ (constants)


def test_embedded_task_parts_are_disjoint() -> None:
    task = embedded_task(0, train_per_category=20, transfer_per_category=4, dev_per_category=2, test_per_category=3)
    assert len(task.train_pool) == 240 and len(task.transfer) == 48 and len(task.dev) == 24 and len(task.test) == 36
    assert_disjoint(task.train_pool, task.transfer, task.dev, task.test)
    assert category_counts(task.dev) == [2] * len(CATEGORIES)
    with pytest.raises(DataError):
        assert_disjoint(task.train_pool, task.train_pool[:1])


@pytest.mark.parametrize("per_category", [5, 40])
def test_a_resized_transfer_set_leaves_the_other_parts_as_they_are(per_category: int) -> None:
    task, resized = embedded_task(3), embedded_task_with_transfer(3, per_category)
    assert (resized.train_pool, resized.dev, resized.test) == (task.train_pool, task.dev, task.test)
    assert category_counts(resized.transfer) == [per_category] * len(CATEGORIES)
    first = {c: [p for p in task.transfer if p.category == c][:per_category] for c in CATEGORIES}
    assert all([p for p in resized.transfer if p.category == c][:16] == first[c][:16] for c in CATEGORIES)
    assert len({p.task_id for p in resized.transfer}) == len(resized.transfer)
    assert_disjoint(resized.train_pool, resized.transfer, resized.dev, resized.test)
    with pytest.raises(ValueError):
        embedded_task_with_transfer(3, -1)


def _max_share(shards: list[list[Problem]]) -> float:
    return float(np.mean([max(category_counts(s)) / len(s) for s in shards]))


def test_dirichlet_split_is_skewed_per_client_and_disjoint() -> None:
    pool = generate_problems(1, {c: 60 for c in CATEGORIES})
    skewed = dirichlet_split(pool, 8, 0.1, seed=2, per_client=60)
    even = dirichlet_split(pool, 8, 100.0, seed=2, per_client=60)
    assert all(len(s) == 60 for s in skewed)
    ids = [p.task_id for s in skewed for p in s]
    assert len(ids) == len(set(ids))
    assert _max_share(skewed) > 0.5  # few categories per client
    assert _max_share(even) < 0.25  # near-uniform
    assert dirichlet_split(pool, 8, 0.1, seed=2, per_client=60) == skewed


def test_split_validation() -> None:
    pool = generate_problems(1, {"list": 20})
    train, val = split_validation(pool, 0.2, seed=1)
    assert len(val) == 4 and len(train) == 16 and not set(p.task_id for p in val) & set(p.task_id for p in train)


def test_jsonl_round_trip_and_humaneval_fields(tmp_path) -> None:
    problems = generate_problems(2, {"math": 3, "set": 2})
    write_jsonl(tmp_path / "p.jsonl", problems)
    assert load_jsonl(tmp_path / "p.jsonl") == problems
    record = {"task_id": "HumanEval/0", "prompt": "def f(x):\n", "canonical_solution": "    return x\n",
              "test": "def check(candidate):\n    assert candidate(1) == 1\n", "entry_point": "f", "category": "math"}
    (tmp_path / "he.jsonl").write_text(json.dumps(record) + "\n")
    (loaded,) = load_jsonl(tmp_path / "he.jsonl")
    assert loaded.tests.startswith("def check") and loaded.solution == "    return x\n"


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ('{"prompt": "x", "tests": "", "entry_point": "f"}', "category"),
    ('{"prompt": "x", "tests": "", "entry_point": "f", "category": "poetry"}', "unknown category"),
    ('{"prompt": "x", "tests": "", "entry_point": "f()", "category": "math"}', "identifier"),
    ('{"prompt": 3, "tests": "", "entry_point": "f", "category": "math"}', "must be a string"),
    ('[1, 2]', "JSON object"),
])
def test_bad_jsonl_raises_data_error_with_location(tmp_path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "tests": "", "entry_point": "g", "category": "math"}\n' + line + "\n")
    with pytest.raises(DataError, match=message) as info:
        load_jsonl(path)
    assert ":2:" in str(info.value)


def test_duplicate_ids_and_missing_file(tmp_path) -> None:
    record = json.dumps({"task_id": "a", "prompt": "p", "tests": "", "entry_point": "g", "category": "math"})
    (tmp_path / "dup.jsonl").write_text(record + "\n" + record + "\n")
    with pytest.raises(DataError, match="duplicate"):
        load_jsonl(tmp_path / "dup.jsonl")
    with pytest.raises(DataError, match="cannot read"):
        load_jsonl(tmp_path / "missing.jsonl")
