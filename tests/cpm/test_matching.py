"""Choosing a round's pairings: greedy (the paper) against the best total, checked by brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knexa_cpm import matching
from knexa_cpm.matching import best_capped, best_disjoint, greedy_capped, greedy_disjoint, select_best
from knexa_cpm.policies import PolicyError, all_directed, make_policy


def candidates(n: int, values: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, s = all_directed(n)
    return np.array(values[: len(t)], dtype=np.float64), t, s


def disjoint(t: np.ndarray, s: np.ndarray, taken: list[int]) -> bool:
    agents = [a for k in taken for a in (int(t[k]), int(s[k]))]
    return len(agents) == len(set(agents))


def within_caps(t: np.ndarray, s: np.ndarray, taken: list[int], cap: int) -> bool:
    teach = np.bincount(t[taken], minlength=1) if taken else np.zeros(1)
    learn = np.bincount(s[taken], minlength=1) if taken else np.zeros(1)
    pairs = {(int(t[k]), int(s[k])) for k in taken}
    return teach.max() <= cap and learn.max() <= cap and len(pairs) == len(taken)


def brute_force(scores: np.ndarray, t: np.ndarray, s: np.ndarray, budget: int, ok) -> tuple[int, float]:
    """(most pairings, best total among those) over every subset of candidates that ``ok`` accepts."""
    best = (0, 0.0)
    for size in range(1, budget + 1):
        found = [float(scores[list(c)].sum()) for c in itertools.combinations(range(len(scores)), size) if ok(list(c))]
        if found:
            best = (size, max(found))
    return best


def test_best_total_beats_greedy_where_the_best_pair_uses_up_a_teacher():
    # Agents 0 and 2 teach, 1 and 3 learn. Greedy takes 0->1 (10), which leaves 2->3 (0):
    # 10 in all. The best total is 0->3 and 2->1: 18.
    t = np.array([0, 0, 2, 2])
    s = np.array([1, 3, 1, 3])
    scores = np.array([10.0, 9.0, 9.0, 0.0])
    assert sorted(greedy_disjoint(scores, t, s, 2)) == [0, 3]
    assert sorted(best_disjoint(scores, t, s, 2)) == [1, 2]
    assert sorted(best_capped(scores, t, s, 2, cap=1)) == [1, 2]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 5), values=st.lists(st.floats(-3, 3, allow_nan=False), min_size=20, max_size=20))
def test_best_disjoint_is_the_brute_force_optimum(n, values):
    scores, t, s = candidates(n, values)
    budget = n // 2
    taken = best_disjoint(scores, t, s, budget)
    assert disjoint(t, s, taken) and len(taken) <= budget
    size, total = brute_force(scores, t, s, budget, lambda c: disjoint(t, s, c))
    assert len(taken) == size
    assert scores[taken].sum() == pytest.approx(total, abs=1e-9)
    assert scores[taken].sum() >= scores[greedy_disjoint(scores, t, s, budget)].sum() - 1e-9


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 4), cap=st.integers(2, 3), budget=st.integers(1, 6),
       values=st.lists(st.floats(-3, 3, allow_nan=False), min_size=12, max_size=12))
def test_best_capped_is_the_brute_force_optimum(n, cap, budget, values):
    scores, t, s = candidates(n, values)
    taken = best_capped(scores, t, s, budget, cap)
    assert within_caps(t, s, taken, cap) and len(taken) <= budget
    size, total = brute_force(scores, t, s, budget, lambda c: within_caps(t, s, c, cap))
    assert len(taken) == size
    # Flow costs are rounded to 1e-6 of a score unit per pairing.
    assert scores[taken].sum() == pytest.approx(total, abs=1e-5 * max(size, 1))


def test_one_pair_offered_twice_is_taken_once_by_its_best_candidate():
    # Two protocols of the same pair, and the reverse direction: one pairing, the best of the three.
    t, s = np.array([0, 0, 1]), np.array([1, 1, 0])
    scores = np.array([1.0, 3.0, 2.0])
    assert best_disjoint(scores, t, s, 1) == [1]
    assert best_capped(scores, t, s, 5, cap=2) == [1, 2]


def test_a_budget_below_what_can_be_paired_falls_back_to_greedy():
    scores, t, s = candidates(6, list(np.linspace(1.0, 2.0, 30)))
    assert best_disjoint(scores, t, s, 1) == greedy_disjoint(scores, t, s, 1)
    assert len(best_capped(scores, t, s, 2, cap=2)) == 2


def test_non_finite_scores_and_large_federations_fall_back_to_greedy(monkeypatch):
    scores, t, s = candidates(4, [1.0, -np.inf, 3.0, 2.0, 5.0, 0.5, 1.5, 2.5, 4.0, 0.1, 0.2, 0.3])
    assert best_disjoint(scores, t, s, 2) == greedy_disjoint(scores, t, s, 2)
    assert best_capped(scores, t, s, 4, 2) == greedy_capped(scores, t, s, 4, 2)
    monkeypatch.setattr(matching, "EXACT_MAX_AGENTS", 3)
    finite, t, s = candidates(4, [1.0, 9.0, 3.0, 2.0, 5.0, 0.5, 1.5, 2.5, 4.0, 0.1, 0.2, 0.3])
    assert best_disjoint(finite, t, s, 2) == greedy_disjoint(finite, t, s, 2)


def test_select_best_follows_the_per_node_rule_and_empty_input_takes_nothing():
    scores, t, s = candidates(4, list(np.arange(12.0)))
    assert disjoint(t, s, select_best(scores, t, s, 2, per_node=1))
    assert len(select_best(scores, t, s, 8, per_node=2)) == 8
    empty = np.zeros(0)
    assert best_disjoint(empty, empty.astype(int), empty.astype(int), 3) == []
    assert best_capped(scores, t, s, 0, 2) == []


def test_knexa_takes_a_matching_option_and_refuses_an_unknown_one():
    assert make_policy("knexa").config()["matching"] == "best"
    assert make_policy("knexa", matching="greedy").config()["matching"] == "greedy"
    with pytest.raises(PolicyError, match="matching must be one of best, greedy"):
        make_policy("knexa", matching="hungarian")
