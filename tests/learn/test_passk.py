"""Pass@k estimator against brute-force enumeration, and the intervals."""

from __future__ import annotations

import itertools

import pytest

from knexa_node.learn.passk import mean_confidence_interval, pass_at_k, summarize, wilson_interval


@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 3, 5), (4, 4, 2), (7, 1, 7)])
def test_pass_at_k_equals_enumeration(n: int, c: int, k: int) -> None:
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    expected = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)


def test_intervals_contain_the_estimate_and_shrink_with_data() -> None:
    low, high = wilson_interval(10, 40)
    assert low < 0.25 < high
    narrow = wilson_interval(100, 400)
    assert narrow[1] - narrow[0] < high - low
    assert wilson_interval(0, 20)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(0, 20)[1] > 0.05
    mean, lo, hi = mean_confidence_interval([0.0, 1.0, 0.5, 0.5])
    assert lo < mean == 0.5 < hi


def test_summarize_reports_only_ks_the_samples_allow() -> None:
    report = summarize([10, 10, 10], [0, 5, 10], ks=(1, 5, 10, 20))
    assert set(report) == {1, 5, 10}
    assert report[1].value == pytest.approx(0.5)
    assert report[10].value == pytest.approx(2 / 3)
    greedy = summarize([1] * 4, [1, 0, 0, 1], ks=(1, 5))
    assert set(greedy) == {1} and greedy[1].value == 0.5 and greedy[1].low < 0.5 < greedy[1].high
