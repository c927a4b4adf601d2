"""A study's figures: intervals over seeds, ratios paired by seed, the JSON document, the table and the PNG.

Statistics (all 95%, Student t with n - 1 degrees of freedom, n = seeds):

- :func:`mean_ci`: the mean of per-seed values and its t interval;
- :func:`paired_ratio`: mean(a) / mean(b) over the seeds both have, with the
  delta-method interval of a ratio of paired means: the standard error is
  sd(a_i - R b_i) / (sqrt(n) |mean(b)|). ``knexa`` vs ``local-only`` is
  ``paired_ratio(knexa, local-only)``; the share of the gap from local-only to
  pooled that a policy closes is ``paired_ratio(policy - local-only,
  pooled - local-only)``, the same estimator on per-seed differences. Both
  also list the per-seed values (``by_seed``).

Over the exchanges of the lock-step runs (``exchange_outcomes`` of each run record):

- :func:`correlation`: Pearson's r and Spearman's rho (ties ranked by their mean
  rank) of each reward with the student's test Pass@1 gain one round later,
  with Fisher-z 95% intervals (standard error 1/sqrt(n - 3) for r, Fieller's
  sqrt(1.06/(n - 3)) for rho; approximate: one student's exchanges are not
  independent);
- :func:`collapse`: per distillation (a student in a round, whatever its number
  of teachers), whether its test Pass@1 right after the distillation fell below
  its Pass@1 before the exchange, and by how much.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Group  # noqa: E402
from rich.table import Table  # noqa: E402

from knexa_cpm.plot import save_figure  # noqa: E402
from knexa_cpm.runner import t95  # noqa: E402
from knexa_lab.study import StudySpec, curve_labels  # noqa: E402


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean and 95% t interval ([low, high]; None for fewer than two values)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """mean(a) / mean(b) for values paired by seed, with the delta-method 95% interval; None where mean(b) is 0."""
    if len(a) != len(b):
        raise ValueError("paired values: both sides need one value per seed")
    n = len(a)
    if n == 0:
        return {"ratio": None, "ci95": None, "n": 0}
    mean_b = sum(b) / n
    if mean_b == 0:
        return {"ratio": None, "ci95": None, "n": n}
    ratio = (sum(a) / n) / mean_b
    if n < 2:
        return {"ratio": ratio, "ci95": None, "n": n}
    residuals = [x - ratio * y for x, y in zip(a, b)]  # their mean is 0 by construction
    sd = math.sqrt(sum(r * r for r in residuals) / (n - 1))
    half = t95(n - 1) * sd / (math.sqrt(n) * abs(mean_b))
    return {"ratio": ratio, "ci95": [ratio - half, ratio + half], "n": n}


# The rewards whose validity a study reports: outcome key -> name in the document.
REWARDS = {"reward_eq3": "eq3", "reward_eq3_private": "eq3_private", "reward_covered": "covered"}


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None  # a constant side has no correlation
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def _fisher_ci(r: float | None, n: int, variance: float) -> list[float] | None:
    if r is None or n < 4:
        return None
    if abs(r) == 1.0:
        return [r, r]
    half = 1.959964 * math.sqrt(variance / (n - 3))
    z = math.atanh(r)
    return [math.tanh(z - half), math.tanh(z + half)]


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Pearson and Spearman correlation of paired values with Fisher-z 95% intervals (None where undefined)."""
    if len(x) != len(y):
        raise ValueError("correlation: both sides need one value per pair")
    n = len(x)
    pearson = _pearson(x, y)
    spearman = _pearson(_ranks(x), _ranks(y)) if n >= 2 else None
    return {"pearson": pearson, "pearson_ci95": _fisher_ci(pearson, n, 1.0),
            "spearman": spearman, "spearman_ci95": _fisher_ci(spearman, n, 1.06), "n": n}


def reward_validity(outcomes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per reward, its correlation with ``gain_next`` over the exchanges that have both."""
    result = {}
    for key, name in REWARDS.items():
        pairs = [(o[key], o["gain_next"]) for o in outcomes
                 if o.get(key) is not None and o.get("gain_next") is not None]
        result[name] = correlation([float(r) for r, _ in pairs], [float(g) for _, g in pairs])
    return result


def collapse(outcomes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Share of distillations that left the student below its Pass@1 before the exchange, and the mean drop.

    One distillation is one (seed, student, round), however many teachers' packages it had
    (``seed`` is added to each outcome by :func:`study_document`). ``mean_drop`` is the mean of
    (before - after) over the distillations that dropped, ``mean_change`` the mean of
    (after - before) over all; ``basis`` counts how ``pass1_after`` was measured; ``undone``
    counts the distillations the student's guard undid (``distill_guard``; older records: 0).
    """
    phases: dict[tuple[Any, Any, Any], Mapping[str, Any]] = {}
    for o in outcomes:
        if o.get("pass1_before") is not None and o.get("pass1_after") is not None:
            phases.setdefault((o.get("seed"), o["student"], o["round"]), o)
    changes = [o["pass1_after"] - o["pass1_before"] for o in phases.values()]
    drops = [-c for c in changes if c < 0]
    basis: dict[str, int] = {}
    for o in phases.values():
        basis[o["after_basis"]] = basis.get(o["after_basis"], 0) + 1
    n = len(changes)
    return {"distillations": n, "worse": len(drops), "share_worse": len(drops) / n if n else None,
            "mean_drop": sum(drops) / len(drops) if drops else None,
            "mean_change": sum(changes) / n if n else None, "basis": basis,
            "undone": sum(1 for o in phases.values() if o.get("kept") is False)}


def _outcomes(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every exchange outcome of these runs, tagged with its run's seed (older records have none)."""
    return [{**o, "seed": r["seed"]} for r in runs for o in r.get("exchange_outcomes") or []]


def _by_seed(records: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    return {str(r["seed"]): r[key] for r in sorted(records, key=lambda r: r["seed"])}


def pairing_spread(record: Mapping[str, Any]) -> dict[str, Any]:
    """How a run's pairs were spread: the fewest and most distillations a node got as student, and the share
    of exchanges that repeated an earlier (teacher, student) pair (a repeat brings little: same transfer set).

    From the run's pairing history (``"teacher->student"`` per round); nodes never paired count 0.
    """
    learned = {node["name"]: 0 for node in record.get("nodes", [])}
    seen: set[str] = set()
    repeats = total = 0
    for entry in record.get("history") or []:
        for pair in entry.get("pairs", []):
            student = pair.split("->", 1)[-1]
            learned[student] = learned.get(student, 0) + 1
            repeats += pair in seen
            total += 1
            seen.add(pair)
    counts = list(learned.values())
    return {"least_learned": min(counts) if counts else None, "most_learned": max(counts) if counts else None,
            "repeated_pairs": repeats / total if total else None}


def _paired(mine: Mapping[str, float], other: Mapping[str, float]) -> tuple[list[float], list[float], list[int]]:
    seeds = sorted((s for s in mine if s in other and mine[s] is not None and other[s] is not None), key=int)
    return [mine[s] for s in seeds], [other[s] for s in seeds], [int(s) for s in seeds]


def _per_seed(a: Sequence[float], b: Sequence[float], seeds: Sequence[int]) -> dict[str, float | None]:
    return {str(s): (x / y if y else None) for x, y, s in zip(a, b, seeds)}


def _compare(mine: Mapping[str, float], base: Mapping[str, float] | None) -> dict[str, Any] | None:
    if base is None:
        return None
    a, b, seeds = _paired(mine, base)
    return {**paired_ratio(a, b), "seeds": seeds, "by_seed": _per_seed(a, b, seeds)}


def _gap_closed(mine: Mapping[str, float], low: Mapping[str, float] | None,
                high: Mapping[str, float] | None) -> dict[str, Any] | None:
    if low is None or high is None:
        return None
    seeds = sorted((s for s in set(mine) & set(low) & set(high) if None not in (mine[s], low[s], high[s])), key=int)
    gains = [mine[s] - low[s] for s in seeds]
    gaps = [high[s] - low[s] for s in seeds]
    ints = [int(s) for s in seeds]
    return {**paired_ratio(gains, gaps), "seeds": ints, "by_seed": _per_seed(gains, gaps, ints)}


def _curve(curves: Sequence[Sequence[float | None]], labels: list[str]) -> dict[str, Any]:
    columns = [mean_ci([c[i] for c in curves if i < len(c) and c[i] is not None]) for i in range(len(labels))]
    return {"labels": labels, "mean": [c["mean"] for c in columns], "ci95": [c["ci95"] for c in columns]}


def study_document(spec: StudySpec, records: Sequence[Mapping[str, Any]], *, workers: int, wall_s: float,
                   png: Path | None = None) -> dict[str, Any]:
    """The study's JSON object (documented in docs/study.md)."""
    good = [r for r in records if "error" not in r]
    by_policy = {p: [r for r in good if r["policy"] == p] for p in spec.policies}
    finals = {p: _by_seed(rs, "final_pass1") for p, rs in by_policy.items() if rs}
    labels = curve_labels(spec.rounds)
    policies: dict[str, Any] = {}
    for policy, runs in by_policy.items():
        mine = finals.get(policy, {})
        policies[policy] = {
            "final_pass1_by_seed": mine,
            "final_pass1": mean_ci([v for v in mine.values() if v is not None]),
            "curve_by_seed": _by_seed(runs, "curve"),
            "curve": _curve([r["curve"] for r in runs], labels),
            "headroom_by_seed": _by_seed(runs, "headroom"),
            "vs_local_only": _compare(mine, finals.get("local-only")) if policy != "local-only" else None,
            "vs_random": _compare(mine, finals.get("random")) if policy != "random" else None,
            "gap_closed": (_gap_closed(mine, finals.get("local-only"), finals.get("pooled"))
                           if policy not in ("local-only", "pooled") else None),
            "exchanges_by_seed": _by_seed(runs, "exchanges"),
            "pairing_by_seed": {str(r["seed"]): pairing_spread(r) for r in sorted(runs, key=lambda r: r["seed"])},
            "wall_s_by_seed": _by_seed(runs, "wall_s"),
            "node_seconds_per_round_by_seed": _by_seed(runs, "node_seconds_per_round"),
            "node_cpu_seconds_per_round_by_seed": _by_seed(runs, "node_cpu_seconds_per_round"),
            "reward_validity": reward_validity(_outcomes(runs)),
            "collapse": collapse(_outcomes(runs)),
        }
    local = by_policy.get("local-only") or []
    return {
        "settings": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(spec).items()},
                     "workers": workers},
        "policies": policies,
        "headroom": _by_seed(local, "headroom"),
        "reward_validity": reward_validity(_outcomes(good)),
        "failed": [{"policy": r["policy"], "seed": r["seed"], "error": r["error"]} for r in records if "error" in r],
        "runs": len(good),
        "run_wall_s_total": sum(r["wall_s"] for r in good),
        "wall_s": wall_s,
        "png": str(png) if png else None,
    }


# --- table and plot ----------------------------------------------------------------------------------


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def _interval(figure: Mapping[str, Any] | None, key: str, *, percent: bool = False) -> str:
    if not figure or figure.get(key) is None:
        return "-"
    fmt = _pct if percent else (lambda v: f"{v:.2f}")
    text = fmt(figure[key])
    return text + (f" [{fmt(figure['ci95'][0])}, {fmt(figure['ci95'][1])}]" if figure.get("ci95") else "")


def study_table(document: Mapping[str, Any]) -> Group:
    """The policies' table, then the exchanges' (reward validity and collapse) where any run exchanged."""
    exchanges = exchange_table(document)
    return Group(policy_table(document), *([exchanges] if exchanges.row_count else []))


def _exchange_size(settings: Mapping[str, Any]) -> str:
    """The transfer set and the teacher's budget (documents written before they were options: 16 and 64)."""
    return (f"transfer {settings.get('transfer_per_category', 16)}/category, "
            f"budget {settings.get('exchange_budget', 64)}")


def policy_table(document: Mapping[str, Any]) -> Table:
    s = document["settings"]
    table = Table(title=f"study: {s['nodes']} nodes, {s['rounds']} rounds, seeds {','.join(map(str, s['seeds']))}, "
                        f"Dirichlet {s['dirichlet_alpha']}, c = {s['teachers_per_student']}, {_exchange_size(s)} "
                        f"(mean final Pass@1 over nodes, 95% intervals over seeds)")
    for column in ("policy", "seeds", "final Pass@1", "x local-only", "x random", "gap closed to pooled",
                   "s/run", "node-s/round", "node-cpu-s/round"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, p in document["policies"].items():
        walls = list(p["wall_s_by_seed"].values())
        node_s = list(p["node_seconds_per_round_by_seed"].values())
        node_cpu = list(p["node_cpu_seconds_per_round_by_seed"].values())
        table.add_row(name, str(p["final_pass1"]["n"]), _interval(p["final_pass1"], "mean", percent=True),
                      _interval(p["vs_local_only"], "ratio"), _interval(p["vs_random"], "ratio"),
                      _interval(p["gap_closed"], "ratio", percent=True),
                      f"{sum(walls) / len(walls):.0f}" if walls else "-",
                      f"{sum(node_s) / len(node_s):.1f}" if node_s else "-",
                      f"{sum(node_cpu) / len(node_cpu):.1f}" if node_cpu else "-")
    return table


def _correlation_cell(figure: Mapping[str, Any] | None, key: str) -> str:
    if not figure or figure.get(key) is None:
        return "-"
    interval = figure.get(f"{key}_ci95")
    return f"{figure[key]:+.2f}" + (f" [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "")


def _collapse_cell(figure: Mapping[str, Any]) -> str:
    if not figure["distillations"]:
        return "-"
    drop = f", mean drop {100 * figure['mean_drop']:.1f} pp" if figure["mean_drop"] is not None else ""
    undone = f", {figure['undone']} undone by the guard" if figure.get("undone") else ""
    return f"{figure['worse']}/{figure['distillations']} ({_pct(figure['share_worse'])}){drop}{undone}"


def exchange_table(document: Mapping[str, Any]) -> Table:
    """Per policy that exchanged (and over all of them): each recorded reward's correlation with the
    student's test gain one round later, and the distillations that left the student worse."""
    overall = document.get("reward_validity") or {}
    rewards = [name for name in REWARDS.values() if (overall.get(name) or {}).get("n")]
    table = Table(title="exchanges: correlation of each reward with the student's test Pass@1 gain one round later "
                        "(95% Fisher-z intervals); distillations after which the student's test Pass@1 was lower")
    stats = [f"{name} {stat}" for name in rewards for stat in ("r", "rho")]
    for column in ("policy", f"pairs ({'/'.join(rewards)})", *stats, "worse after distillation", "measured"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    rows = [(name, p.get("reward_validity") or {}, p.get("collapse")) for name, p in document["policies"].items()]
    rows.append(("all", overall, None))
    for name, validity, fell in rows:
        counts = [(validity.get(reward) or {}).get("n", 0) for reward in rewards]
        if not any(counts) and not (fell and fell["distillations"]):
            continue
        cells = [_correlation_cell(validity.get(reward), key) for reward in rewards for key in ("pearson", "spearman")]
        basis = ", ".join(f"{k} {v}" for k, v in sorted(fell["basis"].items())) if fell else ""
        table.add_row(name, "/".join(map(str, counts)), *cells, _collapse_cell(fell) if fell else "", basis)
    return table


def plot_study(document: Mapping[str, Any], path: Path) -> Path:
    """Mean Pass@1 over seeds per curve point, one line per policy, its 95% interval shaded."""
    figure, axis = plt.subplots(figsize=(9, 5))
    labels: list[str] = []
    for name, p in document["policies"].items():
        curve = p["curve"]
        labels = curve["labels"]
        xs = [i for i, m in enumerate(curve["mean"]) if m is not None]
        if not xs:
            continue
        line, = axis.plot(xs, [100 * curve["mean"][i] for i in xs], marker="o", label=name)
        banded = [i for i in xs if curve["ci95"][i] is not None]
        if banded:
            axis.fill_between(banded, [100 * curve["ci95"][i][0] for i in banded],
                              [100 * curve["ci95"][i][1] for i in banded], color=line.get_color(), alpha=0.15)
    headroom = [v for v in document["headroom"].values() if v is not None]
    if headroom:
        axis.axhline(100 * sum(headroom) / len(headroom), color="grey", linestyle="--",
                     label="headroom: best node per category (local-only)")
    s = document["settings"]
    axis.set_ylim(0, max(5.0, axis.get_ylim()[1]))  # Pass@1 starts at 0; an all-zero study still shows an axis
    axis.set_xticks(range(len(labels)), labels)
    axis.set(xlabel="after the warm-up, the local phase of each round, the last round",
             ylabel="mean Pass@1 over nodes (%)",
             title=f"{s['nodes']} nodes, Dirichlet {s['dirichlet_alpha']}, c = {s['teachers_per_student']}, "
                   f"{_exchange_size(s)}, seeds {','.join(map(str, s['seeds']))} (95% intervals over seeds)")
    axis.legend(fontsize=8)
    return save_figure(figure, path)
