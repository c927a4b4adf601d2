"""Problem sets on disk and their splits: JSONL I/O, the Dirichlet non-IID split, the embedded task.

JSONL records are HumanEval/MBPP-shaped: ``prompt``, ``tests`` (or
HumanEval's ``test``), ``entry_point``, ``category`` and optionally
``task_id`` and ``solution`` (or ``canonical_solution``). A bad file raises
:class:`DataError` naming the file and line, never anything else.

The private shards are drawn per client over categories (one Dirichlet
vector per client, then that many problems of each category), not per sample:
the argmax of a fresh Dirichlet draw per sample is uniform over categories
and gives no skew at all (a pitfall of the paper's published code).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from knexa_node.fsutil import atomic_write_text
from knexa_node.learn.problems import Problem, generate_problems
from knexa_node.profile import CATEGORIES

MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_FIELD_CHARS = 64 * 1024


class DataError(ValueError):
    """A problem file or a split request is malformed."""


def _text_field(record: dict, names: tuple[str, ...], where: str, *, required: bool = True) -> str:
    for name in names:
        if name in record:
            value = record[name]
            if not isinstance(value, str):
                raise DataError(f"{where}: field {name!r} must be a string")
            if len(value) > MAX_FIELD_CHARS:
                raise DataError(f"{where}: field {name!r} longer than {MAX_FIELD_CHARS} characters")
            return value
    if required:
        raise DataError(f"{where}: missing field {names[0]!r}")
    return ""


def problem_from_record(record: object, where: str = "<record>") -> Problem:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object")
    category = _text_field(record, ("category",), where)
    if category not in CATEGORIES:
        raise DataError(f"{where}: unknown category {category!r} (known: {', '.join(CATEGORIES)})")
    entry_point = _text_field(record, ("entry_point",), where)
    if not entry_point.isidentifier():
        raise DataError(f"{where}: entry_point {entry_point!r} is not a Python identifier")
    return Problem(
        task_id=_text_field(record, ("task_id",), where, required=False) or where,
        prompt=_text_field(record, ("prompt",), where),
        tests=_text_field(record, ("tests", "test"), where),
        entry_point=entry_point,
        category=category,
        solution=_text_field(record, ("solution", "canonical_solution"), where, required=False),
    )


def load_jsonl(path: Path | str) -> list[Problem]:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataError(f"{path}: {size} bytes exceeds the {MAX_FILE_BYTES}-byte limit")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    return problems_from_jsonl(text, str(path))


def problems_from_jsonl(text: str, source: str, prepare: Callable[[dict, str], dict] | None = None) -> list[Problem]:
    """Problems from JSONL text; ``prepare(record, where)`` may check or complete a record first."""
    problems, ids = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON: {exc.msg}") from None
        problem = problem_from_record(prepare(record, where) if prepare else record, where)
        if problem.task_id in ids:
            raise DataError(f"{where}: duplicate task_id {problem.task_id!r}")
        ids.add(problem.task_id)
        problems.append(problem)
    return problems


def write_jsonl(path: Path | str, problems: Iterable[Problem]) -> None:
    """Write problems atomically, one JSON object a line."""
    lines = [json.dumps(asdict(p), ensure_ascii=False) for p in problems]
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))


def category_counts(problems: Sequence[Problem]) -> list[int]:
    """Histogram over :data:`CATEGORIES`, in that order (the profile's last 12 dims)."""
    counter = Counter(p.category for p in problems)
    return [counter.get(c, 0) for c in CATEGORIES]


def dirichlet_split(problems: Sequence[Problem], n_clients: int, alpha: float, *, seed: int,
                    per_client: int | None = None) -> list[list[Problem]]:
    """Disjoint private shards: per client one Dirichlet(alpha) draw over categories.

    Each client gets ``per_client`` problems (default: an equal share of the
    pool) allotted to categories in proportion to its own draw, limited by
    what is left in the pool. Small ``alpha`` gives few categories a client.
    """
    if n_clients < 1 or alpha <= 0:
        raise DataError("need n_clients >= 1 and alpha > 0")
    rng = np.random.default_rng(seed)
    pools = {c: [p for p in problems if p.category == c] for c in CATEGORIES}
    for pool in pools.values():
        rng.shuffle(pool)  # type: ignore[arg-type]
    size = per_client if per_client is not None else len(problems) // n_clients
    shards: list[list[Problem]] = []
    for _ in range(n_clients):
        weights = rng.dirichlet([alpha] * len(CATEGORIES))
        wanted = np.floor(weights * size).astype(int)
        # Hand the rounding remainder to the largest weights so each shard has ``size`` items.
        for index in np.argsort(-weights)[: size - int(wanted.sum())]:
            wanted[index] += 1
        shard: list[Problem] = []
        for category, count in zip(CATEGORIES, wanted):
            pool = pools[category]
            shard.extend(pool[:count])
            del pool[:count]
        # A category the pool ran out of: top up from this client's next-heaviest categories.
        for index in np.argsort(-weights):
            missing = size - len(shard)
            if missing <= 0:
                break
            pool = pools[CATEGORIES[index]]
            shard.extend(pool[:missing])
            del pool[:missing]
        random.Random(int(rng.integers(1 << 31))).shuffle(shard)
        shards.append(shard)
    return shards


@dataclass(frozen=True)
class TaskSplits:
    """The embedded task for one consortium: disjoint pools by prompt text."""

    train_pool: list[Problem]  # source of private shards
    transfer: list[Problem]  # public prompts teachers answer (tests unused)
    dev: list[Problem]  # public dev set over all categories (reward, profile)
    test: list[Problem]  # held-out test set (Pass@k); never trained on


EMBEDDED_TRANSFER_PER_CATEGORY = 16  # the embedded task's own transfer set, drawn with the other parts
EMBEDDED_TRAIN_PER_CATEGORY = 400  # the private pool the nodes' shards are drawn from
EMBEDDED_POOL = EMBEDDED_TRAIN_PER_CATEGORY * len(CATEGORIES)


def embedded_task(seed: int = 0, *, train_per_category: int = EMBEDDED_TRAIN_PER_CATEGORY,
                  transfer_per_category: int = EMBEDDED_TRANSFER_PER_CATEGORY, dev_per_category: int = 4,
                  test_per_category: int = 8, transfer_extra_per_category: int = 0) -> TaskSplits:
    """Draw the embedded task; the four parts never share a prompt.

    ``transfer_extra_per_category`` more transfer prompts per category come
    from a draw of their own (:func:`_extra_transfer`), so that a larger
    public transfer set leaves the private pool, the dev and the test sets
    exactly as they are (and a cached warm-up still valid).
    """
    sizes = (train_per_category, transfer_per_category, dev_per_category, test_per_category)
    total = sum(sizes)
    problems = generate_problems(seed, {c: total for c in CATEGORIES})
    parts: list[list[Problem]] = [[], [], [], []]
    for category in CATEGORIES:
        mine = [p for p in problems if p.category == category]
        start = 0
        for part, size in zip(parts, sizes):
            part.extend(mine[start:start + size])
            start += size
    if transfer_extra_per_category > 0:
        parts[1] = _grouped_by_category(parts[1] + _extra_transfer(seed, {p.prompt for p in problems},
                                                                      transfer_extra_per_category))
    return TaskSplits(*parts)


def embedded_task_with_transfer(seed: int, transfer_per_category: int = EMBEDDED_TRANSFER_PER_CATEGORY) -> TaskSplits:
    """The embedded task with ``transfer_per_category`` public transfer prompts per category.

    Fewer than the task's own 16: the first ones of each category; more: the
    16 and a further draw. The private pool, dev and test sets do not change.
    """
    if transfer_per_category < 0:
        raise ValueError(f"transfer_per_category must be >= 0, got {transfer_per_category}")
    extra = max(0, transfer_per_category - EMBEDDED_TRANSFER_PER_CATEGORY)
    task = embedded_task(seed, transfer_extra_per_category=extra)
    if transfer_per_category < EMBEDDED_TRANSFER_PER_CATEGORY:
        seen: Counter[str] = Counter()
        kept = []
        for problem in task.transfer:
            seen[problem.category] += 1
            if seen[problem.category] <= transfer_per_category:
                kept.append(problem)
        task = replace(task, transfer=kept)
    return task


def _extra_transfer(seed: int, taken: set[str], per_category: int) -> list[Problem]:
    """``per_category`` transfer problems per category whose prompts are not in ``taken``, from their own seeded draw."""
    # Over-draw: a prompt of this draw may repeat one of the task's; renamed so task ids stay unique.
    drawn = generate_problems(seed + 104_729, {c: 2 * per_category + 8 for c in CATEGORIES})
    extra: list[Problem] = []
    for category in CATEGORIES:
        fresh = [p for p in drawn if p.category == category and p.prompt not in taken][:per_category]
        if len(fresh) < per_category:
            raise ValueError(f"cannot draw {per_category} further {category} transfer problems")
        extra.extend(replace(p, task_id=p.task_id.replace("embedded/", "embedded-transfer/", 1)) for p in fresh)
    return extra


def _grouped_by_category(problems: list[Problem]) -> list[Problem]:
    """The same problems, grouped by category in CATEGORIES order (the embedded layout), each group in order."""
    return [p for category in CATEGORIES for p in problems if p.category == category]


def assert_disjoint(*sets: Sequence[Problem]) -> None:
    """Raise :class:`DataError` if two sets share a prompt (transfer/test leakage)."""
    seen: dict[str, int] = {}
    for index, problems in enumerate(sets):
        for p in problems:
            key = p.prompt.strip()
            if seen.get(key, index) != index:
                raise DataError(f"prompt of {p.task_id!r} appears in sets {seen[key]} and {index}")
            seen[key] = index


def split_validation(problems: Sequence[Problem], fraction: float = 0.1, *, seed: int = 0) -> tuple[list[Problem], list[Problem]]:
    """(train, validation) from one private shard, at least one validation item when possible."""
    items = list(problems)
    random.Random(seed).shuffle(items)
    n_val = max(1 if len(items) > 1 else 0, int(round(len(items) * fraction)))
    return items[n_val:], items[:n_val]
