"""Learning curves and cumulative regret of a :func:`knexa_cpm.runner.simulate` result, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")  # headless: the CPM and CI have no display

import matplotlib.pyplot as plt  # noqa: E402


def plot_results(results: Mapping[str, Any], path: Path) -> Path:
    """Write a two-panel figure (Pass@1-proxy per round; cumulative regret) to ``path``."""
    config = results["config"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, summary in results["policies"].items():
        left.plot([100.0 * v for v in summary["curve"]], label=name)
        right.plot(summary["regret_curve"], label=name)
    left.set_xlabel("round")
    left.set_ylabel("mean Pass@1-proxy (%)")
    left.set_title("learning curves")
    right.set_xlabel("round")
    right.set_ylabel("cumulative regret (pp)")
    right.set_title("regret vs greedy oracle")
    left.legend()
    fig.suptitle(f"{config['clients']} clients, {config['setting']}, {config['heterogeneity']} heterogeneity, "
                 f"{config['seeds']} seeds")
    return save_figure(fig, path)


def save_figure(figure: Any, path: Path | str) -> Path:
    """Lay out, write as PNG (creating the folder) and close ``figure``; the one way our plots are saved."""
    path = Path(path)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
