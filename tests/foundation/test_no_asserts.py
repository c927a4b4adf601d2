"""Product code holds no `assert` (``python -O`` removes them), and the table invariants they guarded hold.

Validation and state checks raise typed errors; a check that only told the
type checker what it could not see is a ``typing.cast``. The layout checks
that used to run at import time (profile slices, problem templates) live here.
"""

from __future__ import annotations

import ast
from pathlib import Path

from knexa_node.learn.humaneval import _RULES
from knexa_node.learn.problems import _TEMPLATES
from knexa_node.profile import CATEGORIES, FAMILIES, FAMILY_SLICE, HISTOGRAM_SLICE, METRIC_SLICE, METRICS

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("knexa_node", "knexa_cpm", "knexa_lab", "cli")


def asserts_in(source: str, filename: str) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(source, filename)) if isinstance(node, ast.Assert)]


def test_the_walk_finds_an_assert_wherever_it_hides():
    source = "def f(x):\n    if x:\n        class C:\n            def g(self):\n                assert x\n"
    assert asserts_in(source, "probe.py") == [5]


def test_product_code_has_no_assert():
    found = []
    for package in PRODUCT:
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, package
        for path in files:
            found += [f"{path.relative_to(ROOT)}:{line}" for line in asserts_in(path.read_text(encoding="utf-8"), str(path))]
    assert not found, "raise a typed error (or typing.cast for the checker) instead of assert: " + ", ".join(found)


def test_profile_slices_hold_their_tables_exactly():
    assert FAMILY_SLICE.stop - FAMILY_SLICE.start == len(FAMILIES)
    assert METRIC_SLICE.stop - METRIC_SLICE.start == 2 * len(METRICS)
    assert HISTOGRAM_SLICE.stop - HISTOGRAM_SLICE.start == len(CATEGORIES)
    assert FAMILY_SLICE.stop == METRIC_SLICE.start and METRIC_SLICE.stop == HISTOGRAM_SLICE.start


def test_every_category_has_problem_templates_and_humaneval_rules_name_only_categories():
    assert set(_TEMPLATES) == set(CATEGORIES)
    assert {category for category, _ in _RULES} <= set(CATEGORIES)
