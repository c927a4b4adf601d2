"""What a study is: its settings, its runs, where their results live, and what one run's record holds.

A study runs every (policy, seed) pair of a consortium on one machine, each
run in its own process (:mod:`knexa_lab.study_run`), and compares the policies
paired by seed (:mod:`knexa_lab.study_report`). This module is the part that
needs neither torch nor matplotlib: parsing and checking the settings (so the
command line answers a bad argument at once), the file layout that makes a
study resumable, and the reduction of a finished run to its record.

Files of a study written to ``--out study.json``: ``study.json`` (the
document), ``study.png`` (the curves) and ``study.runs/<policy>-seed<s>.json``
(one record per finished run, written atomically by the run's own process, so
a study that is killed keeps what it measured and a rerun skips those runs),
``study.warmup/`` (the nodes' warm-ups, one per seed and node, shared by the
policies of that seed).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from knexa_lab.plan import DEFAULT_MODELS, DemoSettings, check_shard_size

# The lock-step runner's policies (the CPM's), then the two baselines that run apart.
LOCKSTEP_POLICIES = ("knexa", "linucb", "random", "heuristic", "local-only")
POLICIES = (*LOCKSTEP_POLICIES, "central-kd", "pooled")
# Longest runs first, so that the last runs of a study do not leave cores idle.
_COST_ORDER = ("pooled", "central-kd", "knexa", "linucb", "random", "heuristic", "local-only")


class StudyError(ValueError):
    """A study setting that cannot run; the message is one line for the command line."""


@dataclass(frozen=True)
class StudySpec:
    nodes: int = 8
    rounds: int = 6
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    policies: tuple[str, ...] = POLICIES
    dirichlet_alpha: float = 0.1
    teachers_per_student: int = 1
    models: tuple[str, ...] = DEFAULT_MODELS
    shard_size: int = 0  # 0: an equal share of the embedded pool
    warmup_epochs: int = 8  # tiny embedded models: 4% Pass@1 after 2 epochs, 25% after 8 (docs/study.md)
    epochs_per_round: int = 1
    # At 16 prompts per category and a budget of 64 every pair yields the same few items and knexa ties random;
    # at 64 and 256 the pairing matters (docs/study.md, "New prompts and a larger budget").
    transfer_per_category: int = 64  # public transfer prompts per category (the embedded task's own 16, then a further draw)
    exchange_budget: int = 256  # transfer prompts a teacher answers per request at most

    def settings(self, policy: str, seed: int) -> DemoSettings:
        return DemoSettings(nodes=self.nodes, rounds=self.rounds, policy=policy, seed=seed, models=self.models,
                            dirichlet_alpha=self.dirichlet_alpha, shard_size=self.shard_size,
                            warmup_epochs=self.warmup_epochs, epochs_per_round=self.epochs_per_round,
                            teachers_per_student=self.teachers_per_student,
                            transfer_per_category=self.transfer_per_category, exchange_budget=self.exchange_budget)

    def runs(self) -> list[tuple[str, int]]:
        """Every (policy, seed), longest policies first, seeds interleaved."""
        order = sorted(self.policies, key=_COST_ORDER.index)
        return [(policy, seed) for policy in order for seed in self.seeds]


def parse_list(text: str, option: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise StudyError(f"{option}: expected a comma-separated list, got {text!r}")
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise StudyError(f"{option}: {duplicates[0]!r} is listed twice")
    return items


def parse_seeds(text: str) -> tuple[int, ...]:
    items = parse_list(text, "--seeds")
    try:
        seeds = tuple(int(item) for item in items)
    except ValueError:
        raise StudyError(f"--seeds: expected integers like 0,1,2, got {text!r}") from None
    if any(seed < 0 for seed in seeds):
        raise StudyError(f"--seeds: seeds are non-negative, got {text!r}")
    return seeds


def parse_policies(text: str) -> tuple[str, ...]:
    items = parse_list(text, "--policies")
    unknown = [item for item in items if item not in POLICIES]
    if unknown:
        raise StudyError(f"--policies: unknown policy {unknown[0]!r} (choose from {', '.join(POLICIES)})")
    return tuple(items)


def check(spec: StudySpec) -> StudySpec:
    """Raise :class:`StudyError` for settings no run could honour."""
    if spec.nodes < 2:
        raise StudyError(f"--nodes: a consortium needs at least 2 nodes, got {spec.nodes}")
    if spec.rounds < 1:
        raise StudyError(f"--rounds: at least 1, got {spec.rounds}")
    if not spec.dirichlet_alpha > 0:
        raise StudyError(f"--dirichlet-alpha: must be positive, got {spec.dirichlet_alpha}")
    if not 1 <= spec.teachers_per_student <= spec.nodes - 1:
        raise StudyError(f"--teachers-per-student: between 1 and nodes - 1 = {spec.nodes - 1}, "
                         f"got {spec.teachers_per_student}")
    if spec.shard_size < 0 or spec.warmup_epochs < 0 or spec.epochs_per_round < 1:
        raise StudyError("--shard-size and --warmup-epochs are >= 0 and --epochs-per-round >= 1")
    try:
        check_shard_size(spec.nodes, spec.shard_size)
    except ValueError as exc:
        raise StudyError(f"--shard-size: {exc}") from None
    if not 1 <= spec.transfer_per_category <= 1024:
        raise StudyError(f"--transfer-per-category: between 1 and 1024, got {spec.transfer_per_category}")
    if not 1 <= spec.exchange_budget <= 100_000:
        raise StudyError(f"--exchange-budget: between 1 and 100000, got {spec.exchange_budget}")
    if not spec.models or any(not model.strip() for model in spec.models):
        raise StudyError("--models: expected a comma-separated list of models")
    return spec


# --- files -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyFiles:
    document: Path  # the --out file
    runs: Path  # one record per finished run
    png: Path
    work: Path  # the runs' node homes while they run (removed after each run)
    warmups: Path  # every (seed, node) warm-up, shared by the runs of that seed and kept for a rerun

    @classmethod
    def at(cls, out: Path) -> StudyFiles:
        out = out.expanduser().resolve()
        stem = out.with_suffix("") if out.suffix == ".json" else out
        return cls(out, stem.with_name(stem.name + ".runs"), stem.with_name(stem.name + ".png"),
                   stem.with_name(stem.name + ".work"), stem.with_name(stem.name + ".warmup"))

    def record(self, policy: str, seed: int) -> Path:
        return self.runs / f"{policy}-seed{seed}.json"


def _plain(value: Any) -> Any:
    """As it reads back from JSON (tuples become lists), so that stored and asked settings compare equal."""
    return json.loads(json.dumps(value))


def finished_runs(spec: StudySpec, files: StudyFiles) -> dict[tuple[str, int], dict[str, Any]]:
    """The records of this study's runs already on disk; a record of other settings is an error, not reused."""
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for policy, seed in spec.runs():
        path = files.record(policy, seed)
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StudyError(f"{path}: unreadable run record ({exc}); delete it to measure the run again") from None
        if record.get("settings") != _plain(asdict(spec.settings(policy, seed))):
            raise StudyError(f"{path} was measured with other settings; use another --out or delete {files.runs}")
        done[(policy, seed)] = record
    return done


# --- one run's record --------------------------------------------------------------------------------


def curve_labels(rounds: int) -> list[str]:
    """x of a curve: after the warm-up, after the local phase of each round, after the last round."""
    return ["start", *(str(r) for r in range(1, rounds + 1)), "final"]


# A student's test measurement right after its distillation (a runner may add it); not a curve point.
AFTER_EXCHANGE = "after-exchange"


def node_curve(points: Sequence[dict[str, Any]], rounds: int) -> list[float | None]:
    """A node's Pass@1 at each :func:`curve_labels` point.

    Round r is the node's last measurement in round r before the final one
    (the lock-step runner measures after the local phase; Central-KD after its
    distillation), leaving out :data:`AFTER_EXCHANGE` points, which only
    students have; a runner that does not measure the last round separately
    (Central-KD, pooled) has its final measurement there.
    """
    final = next((p["pass1"] for p in points if p["phase"] == "final"), None)
    values: list[float | None] = [points[0]["pass1"] if points else None]
    for r in range(1, rounds + 1):
        inside = [p["pass1"] for p in points if p["round"] == r and p["phase"] not in ("final", AFTER_EXCHANGE)]
        values.append(inside[-1] if inside else final if r == rounds else None)
    values.append(final)
    return values


def _mean(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]


def headroom(per_category: Sequence[dict[str, float]]) -> float | None:
    """Mean over categories of the best node's Pass@1 in that category: what the consortium knows somewhere."""
    categories = sorted({c for node in per_category for c in node})
    if not categories:
        return None
    return sum(max(node.get(c, 0.0) for node in per_category) for c in categories) / len(categories)


def _point(points: Sequence[dict[str, Any]], round_: int, phases: Sequence[str]) -> dict[str, Any] | None:
    """The node's last measurement of ``round_`` in one of ``phases``."""
    found = [p for p in points if p["round"] == round_ and p["phase"] in phases]
    return found[-1] if found else None


def exchange_outcomes(name: str, points: Sequence[dict[str, Any]], rewards: Sequence[dict[str, Any]],
                      rounds: int) -> list[dict[str, Any]]:
    """What each exchange this node was student in did to its test Pass@1 (docs/study.md, "Exchanges").

    ``pass1_before``: the measurement after the round's local phase, just before the exchange.
    ``pass1_after``: right after the distillation: the :data:`AFTER_EXCHANGE` point when the runner
    measured one, the final measurement after the last round (nothing happens between them), else
    the next round's after-local point (``after_basis`` says which; that one includes a local phase).
    ``gain_next``: Pass@1 after the next round's local phase minus ``pass1_before``; None in the last
    round (there is no next local phase). Several teachers of one round share the student's figures.
    """
    outcomes = []
    for entry in rewards:
        if entry.get("student", name) != name:
            continue
        r = int(entry["round"])
        before = _point(points, r, ("after-local",))
        next_local = _point(points, r + 1, ("after-local",)) if r < rounds else None
        after, basis = _point(points, r, (AFTER_EXCHANGE,)), AFTER_EXCHANGE
        if after is None and r == rounds:
            after, basis = _point(points, r, ("final",)), "final"
        if after is None:
            after, basis = next_local, "next-local"
        pass1_before = before["pass1"] if before else None
        pass1_after = after["pass1"] if after and before else None
        pass1_next = next_local["pass1"] if next_local and before else None
        outcomes.append({
            "round": r, "student": name, "teacher": entry.get("teacher"), "reward": entry.get("reward"),
            "reward_eq3": entry.get("reward_eq3"), "reward_eq3_private": entry.get("reward_eq3_private"),
            "reward_covered": entry.get("reward_covered"),
            "items_used": entry.get("items_used"), "kept": entry.get("kept"), "pass1_before": pass1_before,
            "pass1_after": pass1_after, "after_basis": basis if pass1_after is not None else None,
            "pass1_next": pass1_next, "gain_next": None if pass1_next is None else pass1_next - pass1_before})
    return outcomes


def run_record(policy: str, seed: int, settings: DemoSettings, nodes: Sequence[dict[str, Any]], *,
               wall_s: float, cpu_s: float, history: Any = None,
               phases_s: dict[str, float] | None = None) -> dict[str, Any]:
    """What a study keeps of one run: per node the final and per-round Pass@1, per run the means and costs
    (``phases_s``: where the runner spent its seconds, e.g. local epochs, measurements, exchanges), and per
    exchange its rewards and what it did to the student (:func:`exchange_outcomes`)."""
    finals = [next(p for p in node["curve"] if p["phase"] == "final") for node in nodes]
    curves = [node_curve(node["curve"], settings.rounds) for node in nodes]
    node_rounds = settings.nodes * settings.rounds
    return {
        "policy": policy, "seed": seed, "settings": _plain(asdict(settings)),
        "final_pass1": _mean([p["pass1"] for p in finals]),
        "curve": [_mean(list(column)) for column in zip(*curves)],
        "headroom": headroom([p.get("per_category") or {} for p in finals]),
        "wall_s": wall_s, "cpu_s": cpu_s, "phases_s": {k: round(v, 1) for k, v in (phases_s or {}).items()},
        # One process and one torch thread per run: its seconds are core-seconds, shared over node-rounds.
        "node_seconds_per_round": wall_s / node_rounds, "node_cpu_seconds_per_round": cpu_s / node_rounds,
        "exchanges": sum(node.get("exchanges_as_student", 0) for node in nodes),
        "history": history,
        "exchange_outcomes": [outcome for node in nodes for outcome in exchange_outcomes(
            node["name"], node["curve"], node.get("rewards", []), settings.rounds)],
        "nodes": [{"name": node["name"], "model": node["model"], "pass1_before": node["pass1_before"],
                   "pass1_after": node["pass1_after"], "per_category_final": final.get("per_category"),
                   "curve": curve, "rewards": node.get("rewards", [])}
                  for node, final, curve in zip(nodes, finals, curves)],
    }

