"""What a study says about its exchanges and baselines, on hand-made run records small enough to check by hand:
reward validity (correlation with the next round's test gain), collapse after distillation, and the
central-kd / pooled rows with the gap closed and the paired ratios per seed."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from knexa_lab.plan import DemoSettings
from knexa_lab import study_report
from knexa_lab.study import StudySpec, exchange_outcomes, node_curve, run_record
from knexa_lab.study_report import collapse, correlation, study_document, study_table


def point(round_: int, phase: str, pass1: float) -> dict[str, Any]:
    return {"round": round_, "phase": phase, "pass1": pass1}


def reward(round_: int, teacher: str, student: str, eq3: float | None, covered: float | None) -> dict[str, Any]:
    return {"round": round_, "teacher": teacher, "student": student, "reward": covered, "reward_eq3": eq3,
            "reward_covered": covered, "items_used": 5}


# node-1, 3 rounds: student of two teachers in round 1 (measured right after that distillation) and of one in round 3.
POINTS = [point(0, "warm-up", 0.10), point(1, "after-local", 0.30), point(1, "after-exchange", 0.20),
          point(2, "after-local", 0.35), point(3, "after-local", 0.40), point(3, "final", 0.45)]
REWARDS = [reward(1, "node-0", "node-1", -0.2, 0.1), reward(1, "node-2", "node-1", -0.1, 0.3),
           reward(3, "node-0", "node-1", 0.05, 0.2)]


# --- correlation ---------------------------------------------------------------------------------------


def test_correlation_by_hand() -> None:
    # x = 1..5, y = (2, 4, 5, 4, 5): deviations (-2,-1,0,1,2) and (-2,0,1,0,1); sxy = 6, sxx = 10, syy = 6:
    # r = 6 / sqrt(60) = 0.774597. Ranks of y with ties at their mean: (1, 2.5, 4.5, 2.5, 4.5);
    # sxy = 7, syy = 9: rho = 7 / sqrt(90) = 0.737865. Fisher z, n = 5: tanh(atanh(r) -+ 1.96 sqrt(1/2))
    # = [-0.340082, 0.984236]; for rho with sqrt(1.06/2): [-0.447124, 0.982765].
    result = correlation([1, 2, 3, 4, 5], [2, 4, 5, 4, 5])
    assert result["n"] == 5
    assert result["pearson"] == pytest.approx(0.774597, abs=1e-6)
    assert result["spearman"] == pytest.approx(0.737865, abs=1e-6)
    assert result["pearson_ci95"] == pytest.approx([-0.340082, 0.984236], abs=1e-6)
    assert result["spearman_ci95"] == pytest.approx([-0.447124, 0.982765], abs=1e-6)


def test_spearman_sees_a_monotone_curve_pearson_does_not_and_signs_follow() -> None:
    x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    grows = correlation(x, [v ** 4 for v in x])
    assert grows["spearman"] == pytest.approx(1.0) and 0.8 < grows["pearson"] < 1.0
    assert grows["spearman_ci95"] == [1.0, 1.0]
    falls = correlation(x, [-v for v in x])
    assert falls["pearson"] == pytest.approx(-1.0) and falls["spearman"] == pytest.approx(-1.0)


def test_correlation_is_undefined_for_a_constant_side_and_has_no_interval_below_four_pairs() -> None:
    flat = correlation([1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5])
    assert flat["pearson"] is None and flat["spearman"] is None and flat["pearson_ci95"] is None
    three = correlation([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert three["pearson"] == pytest.approx(0.5) and three["pearson_ci95"] is None
    assert correlation([], [])["n"] == 0 and correlation([], [])["pearson"] is None
    with pytest.raises(ValueError):
        correlation([1.0, 2.0], [1.0])


# --- one run's exchanges -------------------------------------------------------------------------------


def test_exchange_outcomes_measure_before_after_and_one_round_later() -> None:
    first, second, last = exchange_outcomes("node-1", POINTS, REWARDS, rounds=3)
    for outcome in (first, second):  # two teachers in one distillation share the student's figures
        assert outcome["pass1_before"] == 0.30 and outcome["pass1_after"] == 0.20
        assert outcome["after_basis"] == "after-exchange"
        assert outcome["pass1_next"] == 0.35 and outcome["gain_next"] == pytest.approx(0.05)
    assert (first["teacher"], second["teacher"]) == ("node-0", "node-2")
    assert (first["reward_eq3"], first["reward_covered"]) == (-0.2, 0.1)
    # The last round has no next local phase: no gain; after its distillation comes the final measurement.
    assert last["pass1_before"] == 0.40 and last["pass1_after"] == 0.45 and last["after_basis"] == "final"
    assert last["gain_next"] is None and last["pass1_next"] is None


def test_without_an_after_exchange_point_the_next_local_phase_stands_in_and_says_so() -> None:
    points = [p for p in POINTS if p["phase"] != "after-exchange"]
    first, _, _ = exchange_outcomes("node-1", points, REWARDS, rounds=3)
    assert first["pass1_after"] == 0.35 and first["after_basis"] == "next-local"


def test_an_after_exchange_point_is_not_a_curve_point() -> None:
    assert node_curve(POINTS, 3) == [0.10, 0.30, 0.35, 0.40, 0.45]


def test_run_record_keeps_every_students_exchange_outcomes() -> None:
    settings = DemoSettings(nodes=2, rounds=3, policy="random", seed=4)
    teacher_points = [point(0, "warm-up", 0.2), *(point(r, "after-local", 0.2 + r / 100) for r in (1, 2, 3)),
                      point(3, "final", 0.25)]
    nodes = [{"name": "node-0", "model": "m", "pass1_before": 0.2, "pass1_after": 0.25, "curve": teacher_points,
              "rewards": [], "exchanges_as_student": 0},
             {"name": "node-1", "model": "m", "pass1_before": 0.1, "pass1_after": 0.45, "curve": POINTS,
              "rewards": REWARDS, "exchanges_as_student": 3}]
    record = run_record("random", 4, settings, nodes, wall_s=6.0, cpu_s=5.0)
    assert [(o["student"], o["round"], o["teacher"]) for o in record["exchange_outcomes"]] == [
        ("node-1", 1, "node-0"), ("node-1", 1, "node-2"), ("node-1", 3, "node-0")]
    assert record["nodes"][1]["curve"] == [0.10, 0.30, 0.35, 0.40, 0.45]
    assert record["curve"][2] == pytest.approx((0.22 + 0.35) / 2)  # round 2's after-local points, not after-exchange


# --- collapse ------------------------------------------------------------------------------------------


def outcome(seed: int, student: str, round_: int, before: float, after: float, teacher: str = "t",
            basis: str = "after-exchange") -> dict[str, Any]:
    return {"seed": seed, "student": student, "round": round_, "teacher": teacher, "pass1_before": before,
            "pass1_after": after, "after_basis": basis}


def test_collapse_counts_each_distillation_once_and_averages_the_drops() -> None:
    outcomes = [outcome(0, "a", 1, 0.30, 0.20, "t1"), outcome(0, "a", 1, 0.30, 0.20, "t2"),  # one drop, 2 teachers
                outcome(0, "b", 1, 0.10, 0.25), {**outcome(0, "a", 2, 0.30, 0.30), "kept": False},  # a gain; undone
                outcome(1, "a", 1, 0.40, 0.35, basis="final"),  # another seed: another distillation
                {**outcome(1, "b", 1, 0.2, 0.2), "pass1_after": None}]  # not measured: left out
    result = collapse(outcomes)
    assert result["distillations"] == 4 and result["worse"] == 2
    assert result["share_worse"] == pytest.approx(0.5)
    assert result["mean_drop"] == pytest.approx((0.10 + 0.05) / 2)
    assert result["mean_change"] == pytest.approx((-0.10 + 0.15 + 0.0 - 0.05) / 4)
    assert result["basis"] == {"after-exchange": 3, "final": 1}
    assert result["undone"] == 1


def test_no_drop_and_no_distillation() -> None:
    assert collapse([outcome(0, "a", 1, 0.2, 0.3)])["mean_drop"] is None
    empty = collapse([])
    assert empty["distillations"] == 0 and empty["share_worse"] is None and empty["basis"] == {}


# --- the document --------------------------------------------------------------------------------------

FINALS = {"local-only": (0.10, 0.20, 0.10), "pooled": (0.50, 0.40, 0.30), "knexa": (0.30, 0.25, 0.20),
          "random": (0.20, 0.25, 0.10), "central-kd": (0.20, 0.20, 0.15)}


def record(policy: str, seed: int, outcomes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    final = FINALS[policy][seed]
    made = {"policy": policy, "seed": seed, "final_pass1": final, "curve": [0.05, final, final],
            "headroom": 0.6, "exchanges": len(outcomes or []), "wall_s": 10.0, "node_seconds_per_round": 1.0,
            "node_cpu_seconds_per_round": 0.9}
    if outcomes is not None:
        made["exchange_outcomes"] = outcomes
    return made


def gain(student: str, round_: int, eq3: float, covered: float, gain_next: float, before: float = 0.3,
         after: float = 0.3) -> dict[str, Any]:
    return {"round": round_, "student": student, "teacher": "t", "reward_eq3": eq3, "reward_covered": covered,
            "pass1_before": before, "pass1_after": after, "after_basis": "after-exchange", "gain_next": gain_next}


def study() -> dict[str, Any]:
    spec = StudySpec(nodes=2, rounds=1, seeds=(0, 1, 2), policies=tuple(FINALS))
    knexa = {0: [gain("a", 1, 1.0, 2.0, 0.02, after=0.2), gain("b", 1, 2.0, 4.0, 0.04)],
             1: [gain("a", 1, 3.0, 5.0, 0.05), gain("b", 1, 4.0, 4.0, 0.04)], 2: []}
    random = {0: [gain("a", 1, 2.0, None, 0.01, after=0.1)], 1: [gain("a", 1, 1.0, 1.0, -0.01)], 2: []}
    records = [record(p, s, knexa[s] if p == "knexa" else random[s] if p == "random" else None)
               for p in FINALS for s in (0, 1, 2)]
    return study_document(spec, records, workers=2, wall_s=30.0)


def test_reward_validity_per_policy_and_over_all_exchanges() -> None:
    document = study()
    knexa = document["policies"]["knexa"]["reward_validity"]
    # eq3 (1, 2, 3, 4) against gains (0.02, 0.04, 0.05, 0.04): ranks of the gains (1, 2.5, 4, 2.5).
    assert knexa["eq3"]["n"] == 4
    assert knexa["eq3"] == correlation([1, 2, 3, 4], [0.02, 0.04, 0.05, 0.04])
    assert knexa["covered"] == correlation([2, 4, 5, 4], [0.02, 0.04, 0.05, 0.04])
    assert knexa["covered"]["spearman"] == pytest.approx(1.0)  # the same order, ties included
    # Over all: knexa's four and random's two; random's covered reward is missing once.
    overall = document["reward_validity"]
    assert overall["eq3"] == correlation([1, 2, 3, 4, 2, 1], [0.02, 0.04, 0.05, 0.04, 0.01, -0.01])
    assert overall["covered"]["n"] == 5
    assert document["policies"]["local-only"]["reward_validity"]["eq3"]["n"] == 0  # records without the field


def test_collapse_per_policy_in_the_document_and_the_table() -> None:
    document = study()
    assert document["policies"]["knexa"]["collapse"]["worse"] == 1
    assert document["policies"]["knexa"]["collapse"]["share_worse"] == pytest.approx(0.25)
    assert document["policies"]["knexa"]["collapse"]["mean_drop"] == pytest.approx(0.1)
    assert document["policies"]["random"]["collapse"]["share_worse"] == pytest.approx(0.5)
    assert document["policies"]["random"]["collapse"]["mean_drop"] == pytest.approx(0.2)
    assert document["policies"]["central-kd"]["collapse"]["distillations"] == 0
    text = render(document)
    assert "1/4 (25.0%), mean drop 10.0 pp" in text and "1/2 (50.0%), mean drop 20.0 pp" in text


def render(document: dict[str, Any]) -> str:
    out = io.StringIO()
    Console(file=out, width=400).print(study_table(document))
    return out.getvalue()


def test_central_kd_and_pooled_stand_beside_the_lockstep_policies() -> None:
    document = study()
    policies = document["policies"]
    assert set(policies) == set(FINALS)
    for name in ("central-kd", "pooled"):
        assert policies[name]["final_pass1_by_seed"] == {str(s): FINALS[name][s] for s in (0, 1, 2)}
        assert policies[name]["curve"]["mean"][1] == pytest.approx(sum(FINALS[name]) / 3)
        assert policies[name]["vs_local_only"]["n"] == 3 and policies[name]["vs_random"]["n"] == 3
    assert policies["pooled"]["gap_closed"] is None and policies["local-only"]["gap_closed"] is None
    assert policies["central-kd"]["gap_closed"]["by_seed"] == pytest.approx({"0": 0.25, "1": 0.0, "2": 0.25})
    text = render(document)
    for name in FINALS:
        assert f"│ {name} " in text  # a row of the policies' table


def test_gap_closed_and_ratios_per_seed_with_intervals() -> None:
    knexa = study()["policies"]["knexa"]
    # Gains over local-only (0.2, 0.05, 0.1) of gaps (0.4, 0.2, 0.2): per seed 0.5, 0.25, 0.5; R = 0.35 / 0.8.
    # Residuals (0.025, -0.0375, 0.0125): sd = 0.0330719; se = sd / sqrt(3) / (0.8 / 3) = 0.0716027;
    # t(0.975, 2 df) = 4.303: half = 0.308107.
    gap = knexa["gap_closed"]
    assert gap["by_seed"] == pytest.approx({"0": 0.5, "1": 0.25, "2": 0.5})
    assert gap["ratio"] == pytest.approx(0.4375)
    assert gap["ci95"] == pytest.approx([0.4375 - 0.308107, 0.4375 + 0.308107], abs=1e-5)
    assert gap["seeds"] == [0, 1, 2]
    assert knexa["vs_local_only"]["by_seed"] == pytest.approx({"0": 3.0, "1": 1.25, "2": 2.0})
    assert knexa["vs_local_only"]["ratio"] == pytest.approx(0.75 / 0.4)
    assert knexa["vs_random"]["by_seed"] == pytest.approx({"0": 1.5, "1": 1.0, "2": 2.0})
    assert knexa["vs_random"]["ci95"][0] < knexa["vs_random"]["ratio"] < knexa["vs_random"]["ci95"][1]


def test_the_plot_draws_central_kd_and_pooled_like_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[str] = []

    def keep_labels(figure: Any, path: Path) -> Path:
        drawn.extend(line.get_label() for axis in figure.axes for line in axis.get_lines())
        return path

    monkeypatch.setattr(study_report, "save_figure", keep_labels)
    study_report.plot_study(study(), tmp_path / "s.png")
    assert set(FINALS) <= set(drawn)
