"""The study's statistics on inputs small enough to check by hand, and its reduction of a run to a record."""

from __future__ import annotations

import math

import pytest

from knexa_lab.study import StudyError, StudySpec, check, curve_labels, headroom, node_curve, parse_policies, parse_seeds
from knexa_lab.study_report import mean_ci, paired_ratio, pairing_spread


def test_paired_ratio_is_the_ratio_of_means_with_the_delta_method_interval() -> None:
    # a = (2, 4, 6), b = (1, 2, 2): R = 4 / (5/3) = 2.4.
    # Residuals a - R b = (-0.4, -0.8, 1.2); their sample variance (0.16 + 0.64 + 1.44) / 2 = 1.12.
    # se = sqrt(1.12 / 3) / (5/3) = 0.611010 / 1.666667 = 0.366606; t(0.975, 2 df) = 4.303; half = 1.577506.
    result = paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert result["ratio"] == pytest.approx(2.4)
    assert result["ci95"] == pytest.approx([2.4 - 1.577506, 2.4 + 1.577506], abs=1e-5)
    assert result["n"] == 3


def test_a_policy_that_doubles_every_seed_has_a_ratio_of_two_and_no_spread() -> None:
    result = paired_ratio([0.2, 0.4, 0.1, 0.3], [0.1, 0.2, 0.05, 0.15])
    assert result["ratio"] == pytest.approx(2.0)
    assert result["ci95"] == pytest.approx([2.0, 2.0])


def test_gap_closed_is_the_same_estimator_on_differences() -> None:
    # Gains over local-only (0.1, 0.3) against gaps to pooled (0.2, 0.4): 0.2 / 0.3 = 2/3.
    # Residuals 0.1 - 2/3 * 0.2 = -1/30 and 0.3 - 2/3 * 0.4 = 1/30; sd = sqrt(2 / 900) = 0.047140;
    # se = 0.047140 / sqrt(2) / 0.3 = 0.111111; t(0.975, 1 df) = 12.706; half = 1.411778.
    result = paired_ratio([0.1, 0.3], [0.2, 0.4])
    assert result["ratio"] == pytest.approx(2 / 3)
    assert result["ci95"] == pytest.approx([2 / 3 - 1.411778, 2 / 3 + 1.411778], abs=1e-5)


def test_ratio_to_a_zero_baseline_is_undefined_and_one_seed_has_no_interval() -> None:
    assert paired_ratio([0.1, 0.2], [0.0, 0.0])["ratio"] is None
    one = paired_ratio([0.3], [0.2])
    assert one["ratio"] == pytest.approx(1.5) and one["ci95"] is None
    with pytest.raises(ValueError):
        paired_ratio([0.1, 0.2], [0.1])


def test_mean_ci_by_hand() -> None:
    # (0.1, 0.2, 0.3, 0.4, 0.5): mean 0.3, sd = sqrt(0.1 / 4) = 0.158114, se = 0.070711, t(4 df) = 2.776.
    result = mean_ci([0.1, 0.2, 0.3, 0.4, 0.5])
    assert result["mean"] == pytest.approx(0.3)
    half = 2.776 * math.sqrt(0.025) / math.sqrt(5)
    assert half == pytest.approx(0.196293, abs=1e-6)
    assert result["ci95"] == pytest.approx([0.3 - half, 0.3 + half])
    assert mean_ci([0.4]) == {"mean": 0.4, "ci95": None, "n": 1}


def test_headroom_is_the_mean_over_categories_of_the_best_node() -> None:
    nodes = [{"lists": 0.5, "strings": 0.0, "math": 0.25}, {"lists": 0.25, "strings": 0.75, "math": 0.0}]
    assert headroom(nodes) == pytest.approx((0.5 + 0.75 + 0.25) / 3)
    assert headroom([]) is None


def test_node_curve_points() -> None:
    lockstep = [{"round": 0, "phase": "warm-up", "pass1": 0.1}, {"round": 1, "phase": "after-local", "pass1": 0.2},
                {"round": 2, "phase": "after-local", "pass1": 0.3}, {"round": 2, "phase": "final", "pass1": 0.4}]
    assert curve_labels(2) == ["start", "1", "2", "final"]
    assert node_curve(lockstep, 2) == [0.1, 0.2, 0.3, 0.4]
    # Central-KD and pooled measure the last round once, as "final".
    central = [lockstep[0], {"round": 1, "phase": "after-round", "pass1": 0.25}, lockstep[3]]
    assert node_curve(central, 2) == [0.1, 0.25, 0.4, 0.4]


@pytest.mark.parametrize("text, message", [("0,x", "integers"), ("0,0", "listed twice"), ("", "comma-separated"),
                                           ("1,,2", "comma-separated"), ("-1", "non-negative")])
def test_bad_seeds(text: str, message: str) -> None:
    with pytest.raises(StudyError, match=message):
        parse_seeds(text)


def test_policies_and_settings_checks() -> None:
    assert parse_policies("pooled,knexa") == ("pooled", "knexa")
    with pytest.raises(StudyError, match="unknown policy 'oracle'"):
        parse_policies("knexa,oracle")
    with pytest.raises(StudyError, match="between 1 and nodes - 1 = 3"):
        check(StudySpec(nodes=4, teachers_per_student=4))
    with pytest.raises(StudyError, match="positive"):
        check(StudySpec(dirichlet_alpha=0.0))
    spec = check(StudySpec(nodes=3, seeds=(0, 1), policies=("local-only", "pooled"), teachers_per_student=2))
    assert spec.runs() == [("pooled", 0), ("pooled", 1), ("local-only", 0), ("local-only", 1)]
    assert spec.settings("pooled", 1).teachers_per_student == 2


def test_pairing_spread_counts_who_learned_and_the_repeated_pairs() -> None:
    record = {"nodes": [{"name": n} for n in ("a", "b", "c")],
              "history": [{"round": 1, "pairs": ["a->b"]}, {"round": 2, "pairs": ["a->b", "b->a"]},
                          {"round": 3, "pairs": ["a->b"]}]}
    spread = pairing_spread(record)
    assert spread["least_learned"] == 0 and spread["most_learned"] == 3  # c never learned, b three times
    assert spread["repeated_pairs"] == pytest.approx(2 / 4)
    assert pairing_spread({"nodes": [{"name": "a"}], "history": None}) == {
        "least_learned": 0, "most_learned": 0, "repeated_pairs": None}
