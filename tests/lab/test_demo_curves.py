"""The demo's learning-curves PNG: when comparing, a panel of the policies' means comes first."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from knexa_lab.orchestrate import DemoResult
from knexa_lab.plan import DemoSettings
from knexa_lab.report import plot_curves, policy_means


def _node(name: str, points: list[tuple[str, int, float]]) -> dict:
    return {"name": name, "model": "embedded:llama-tiny",
            "curve": [{"phase": phase, "round": round_, "pass1": pass1, "dev_loss": 1.0} for phase, round_, pass1 in points]}


def _result(policy: str, gain: float) -> DemoResult:
    nodes = [
        _node("node-0", [("start", 0, 0.2), ("after-local", 1, 0.2), ("after-exchange", 1, 0.9), ("final", 1, 0.2 + gain)]),
        _node("node-1", [("start", 0, 0.4), ("after-local", 1, 0.4), ("final", 1, 0.4)]),
    ]
    return DemoResult(DemoSettings(nodes=2, rounds=1, policy=policy), Path("."), "", {}, nodes=nodes)


def test_policy_means_average_the_points_every_node_has_and_skip_a_students_extra_point() -> None:
    means = policy_means(_result("knexa", 0.2))
    assert [x for x, _ in means] == [0, 1, 2]  # start, round 1's local phase, final
    assert [round(y, 6) for _, y in means] == [0.3, 0.3, 0.4]  # 0.9 after node-0's exchange is not a mean's point


def test_comparing_draws_the_means_panel_beside_the_per_node_ones(tmp_path: Path) -> None:
    one = plot_curves([_result("knexa", 0.2)], tmp_path / "one.png")
    two = plot_curves([_result("knexa", 0.2), _result("random", 0.0)], tmp_path / "two.png")
    width_one, width_two = Image.open(one).size[0], Image.open(two).size[0]
    assert width_two > 1.4 * width_one  # three panels instead of two
