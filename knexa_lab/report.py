"""What the demo shows at the end: a table per node, a JSON summary, and learning curves as a PNG."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from knexa_cpm.plot import save_figure  # noqa: E402
from knexa_lab.orchestrate import DemoResult, Snapshot, served_as_teacher  # noqa: E402


def summary(result: DemoResult) -> dict[str, Any]:
    cpm = result.cpm_status
    return {
        "policy": result.settings.policy,
        "nodes": result.nodes,
        "rounds": result.settings.rounds,
        "seed": result.settings.seed,
        "workdir": str(result.workdir),
        "cpm": {
            "peer_id": result.cpm_peer,
            "rounds_closed": cpm.get("rounds_closed"),
            "bandit_updates": cpm.get("bandit_updates"),
            "feedback": cpm.get("counters", {}).get("feedback"),
            "proposals": cpm.get("counters", {}).get("proposals"),
            "failed_exchanges": cpm.get("counters", {}).get("failed_exchanges", 0),
            "mean_reward": cpm.get("mean_reward"),
            "history": cpm.get("history"),
        },
        "mean_pass1_before": _mean([n["pass1_before"] for n in result.nodes]),
        "mean_pass1_after": _mean([n["pass1_after"] for n in result.nodes]),
        "audit_ok": all(n["audit"]["ok"] is not False for n in result.nodes),
        "wall_s": round(result.wall_s, 1),
        "phases_s": {k: round(v, 1) for k, v in result.phases_s.items()},
        "settings": asdict(result.settings),
    }


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(numbers) / len(numbers) if numbers else None


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def node_table(result: DemoResult) -> Table:
    table = Table(title=f"knexa demo: {len(result.nodes)} nodes, {result.settings.rounds} rounds, policy {result.settings.policy}")
    for column in ("node", "model", "Pass@1 before", "Pass@1 after", "val loss before", "val loss after",
                   "taught", "learned", "bytes in", "epsilon", "audit"):
        table.add_column(column, justify="right" if column not in ("node", "model", "audit") else "left")
    for node in result.nodes:
        audit = node["audit"]
        table.add_row(
            f"{node['name']} {node['peer_id'][-6:]}", str(node["model"]).replace("embedded:", ""),
            _pct(node["pass1_before"]), _pct(node["pass1_after"]),
            _num(node["val_loss_before"]), _num(node["val_loss_after"]),
            str(node["exchanges_as_teacher"]), str(node["exchanges_as_student"]),
            f"{node['bytes_received']:,}", _num(node["epsilon_spent"], 2),
            "n/a" if audit["ok"] is None else
            f"[green]verified[/] ({audit['entries']})" if audit["ok"] else f"[red]FAILED[/] {audit['problem']}",
        )
    return table


def live_table(snapshot: Snapshot, rounds: int) -> Table:
    cpm = snapshot.cpm
    current = cpm.get("round") or {}
    title = (f"{snapshot.elapsed_s:5.0f} s  round {current.get('round', 0)}/{rounds} ({current.get('phase', '-')}), "
             f"pairs {cpm.get('counters', {}).get('proposals', 0)}, feedback {cpm.get('counters', {}).get('feedback', 0)}, "
             f"bandit updates {cpm.get('bandit_updates', 0)}")
    table = Table(title=title)
    for column in ("node", "round", "doing", "Pass@1", "taught", "learned", "last reward"):
        table.add_column(column)
    for i, status in enumerate(snapshot.nodes):
        learner = status.get("learner") or {}
        inner = learner.get("learner") or {}
        metrics = learner.get("last_metrics") or {}
        rewards = learner.get("rewards") or []
        exchanges = status.get("exchanges") or {}
        doing = inner.get("busy") if inner.get("busy") not in (None, "idle") else learner.get("phase", status.get("error", "-"))
        table.add_row(f"node-{i}", str(learner.get("round", "-")), str(doing)[:40], _pct(metrics.get("pass1")),
                      str(served_as_teacher(exchanges)),
                      str((learner.get("counts") or {}).get("as_student", 0)),
                      _num(rewards[-1]["reward"], 4) if rewards else "-")
    return table


def _curve_x(point: dict[str, Any], rounds: int) -> float:
    # A measurement right after a round's distillation sits half a round after its local phase.
    if point["phase"] == "final":
        return rounds + 1
    return point["round"] + 0.5 * (point["phase"] == "after-exchange")


def policy_means(result: DemoResult) -> list[tuple[float, float]]:
    """(x, mean Pass@1 over the nodes) at each point every node measures: start, each local phase, final."""
    sums: dict[float, list[float]] = {}
    for node in result.nodes:
        for point in node["curve"]:
            if point.get("pass1") is not None and point["phase"] != "after-exchange":
                sums.setdefault(_curve_x(point, result.settings.rounds), []).append(point["pass1"])
    return [(x, sum(values) / len(values)) for x, values in sorted(sums.items())]


def plot_curves(results: list[DemoResult], path: Path) -> Path:
    """Pass@1 and dev loss per round, one line per node; when comparing, first the policies' means.

    Comparing, a node keeps its colour in every policy and a policy its line style,
    so the first panel says which policy ends highest and the others say for whom.
    """
    comparing = len(results) > 1
    figure, axes = plt.subplots(1, 3 if comparing else 2, figsize=(16, 4.4) if comparing else (11, 4.2))
    *means, left, right = axes
    styles = ["-", "--", ":", "-."]
    for r_index, result in enumerate(results):
        style = styles[r_index % len(styles)]
        rounds = result.settings.rounds
        for n_index, node in enumerate(result.nodes):
            points = [c for c in node["curve"] if c.get("pass1") is not None]
            xs = [_curve_x(c, rounds) for c in points]
            label = f"{node['name']} {str(node['model']).replace('embedded:', '')}"
            if comparing:
                label = f"{result.settings.policy}: {label}"
            colour = f"C{n_index % 10}"
            left.plot(xs, [100 * c["pass1"] for c in points], style, color=colour, marker="o", label=label)
            right.plot(xs, [c["dev_loss"] for c in points], style, color=colour, marker="o", label=label)
        mean_points = policy_means(result)
        for axis in means:
            xs, ys = zip(*mean_points) if mean_points else ((), ())
            axis.plot(xs, [100 * y for y in ys], style, color=f"C{r_index % 10}", marker="o", linewidth=2.5,
                      label=f"{result.settings.policy}: {100 * ys[-1]:.1f}%" if ys else result.settings.policy)
    rounds = max((r.settings.rounds for r in results), default=1)
    ticks = list(range(rounds + 2))
    labels = ["start"] + [str(t) for t in range(1, rounds + 1)] + ["final"]
    phase = "after local phase of round (final: after the last distillation)"
    for axis in axes:
        axis.set_xticks(ticks, labels)
        axis.set(xlabel=phase)
    for axis in means:
        axis.set(ylabel="mean Pass@1 over the nodes (%)", title="policies (mean over nodes; final in the legend)")
        axis.legend(fontsize=8)
    left.set(ylabel="Pass@1 on the local test set (%)", title="Pass@1 per node")
    right.set(ylabel="mean token CE on the public dev set", title="dev loss per node")
    left.legend(fontsize=6 if comparing else 7)
    return save_figure(figure, path)


def compare_table(results: list[DemoResult]) -> Table:
    table = Table(title="policies side by side (mean over nodes)")
    for column in ("policy", "Pass@1 before", "Pass@1 after", "gain (pp)", "exchanges", "mean reward", "audit", "wall s"):
        table.add_column(column)
    for result in results:
        s = summary(result)
        before, after = s["mean_pass1_before"], s["mean_pass1_after"]
        gain = f"{100 * (after - before):+.1f}" if before is not None and after is not None else "-"
        table.add_row(result.settings.policy, _pct(before), _pct(after), gain,
                      str(sum(n["exchanges_as_student"] for n in result.nodes)), _num(s["cpm"]["mean_reward"], 4),
                      "ok" if s["audit_ok"] else "FAILED", f"{result.wall_s:.0f}")
    return table


def print_report(console: Console, result: DemoResult) -> None:
    console.print(node_table(result))
    s = summary(result)
    console.print(f"CPM {result.cpm_peer}: {s['cpm']['rounds_closed']} rounds, {s['cpm']['proposals']} proposals, "
                  f"{s['cpm']['feedback']} rewards, {s['cpm']['bandit_updates']} bandit updates; "
                  f"wall {result.wall_s:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in result.phases_s.items())})")
    console.print(f"homes kept under {result.workdir} (audit: knexa-node audit verify --home {result.workdir}/node-0)")
