"""What a student asks for and what it credits each teacher with: pure logic of the targeted, verified exchange.

- :func:`weak_categories`: the categories a student asks for, weakest first, from
  its Pass@1 per category on the *public* dev set (never its private data).
- :func:`select_prompts`: the transfer prompts a teacher answers for a request:
  the requested categories in turn (round-robin, so a small budget still covers
  each of them), at most ``budget``, leaving out the prompts the student
  already holds a verified answer to (a second answer teaches it little).
- :func:`teachable_order`: the requested categories reordered by what the
  teacher itself knows (its own public dev-set Pass@1): the budget goes first
  to the categories where its answers will pass the tests, and categories it
  measured no skill in are left out (answers that fail are never sent), unless
  it measured none in any of them.
- :func:`covered_gain`: the reward that measures new knowledge: the student's
  dev-set Pass@1 gain on the categories a package covered, each category's gain
  shared among the teachers in proportion to the items each contributed there.
"""

from __future__ import annotations

from typing import Collection, Mapping, Sequence

from knexa_node.learn.problems import Problem


def weak_categories(competence: Mapping[str, float], threshold: float) -> tuple[str, ...]:
    """Categories whose Pass@1 is below ``threshold``, weakest first (ties in the given order)."""
    weak = [(value, index, name) for index, (name, value) in enumerate(competence.items()) if value < threshold]
    return tuple(name for _, _, name in sorted(weak))


def teachable_order(requested: Sequence[str], own: Mapping[str, float]) -> tuple[str, ...]:
    """``requested`` with the teacher's strongest categories first; those it scored 0 in are dropped.

    Without a measurement of its own (``own`` empty), or when it scored 0 in every requested category
    (the dev set holds 4 problems per category: a coarse measure, and a new consortium starts there),
    the student's order stands.
    """
    if not any(own.get(name, 0.0) > 0.0 for name in requested):
        return tuple(requested)
    ranked = sorted(enumerate(requested), key=lambda item: (-own.get(item[1], 0.0), item[0]))
    return tuple(name for _, name in ranked if own.get(name, 0.0) > 0.0)


def select_prompts(transfer: Sequence[Problem], categories: Sequence[str] = (), budget: int = 0,
                   held: Collection[str] = ()) -> list[Problem]:
    """The prompts to answer: all of ``transfer``, or the requested categories taken in turn; then the budget.

    Prompts the student already ``held`` a verified answer to (task ids) are
    left out first, so that the budget goes to prompts it has not been taught.
    """
    if held:
        skip = set(held)
        transfer = [p for p in transfer if p.task_id not in skip]
    if categories:
        queues = [[p for p in transfer if p.category == c] for c in dict.fromkeys(categories)]
        chosen: list[Problem] = []
        depth = 0
        while any(depth < len(q) for q in queues):
            chosen.extend(q[depth] for q in queues if depth < len(q))
            depth += 1
    else:
        chosen = list(transfer)
    return chosen[:budget] if budget > 0 else chosen


def covered_gain(pre: Mapping[str, float], post: Mapping[str, float], dev_counts: Mapping[str, int],
                 items: Mapping[str, int], all_items: Mapping[str, int]) -> float:
    """One teacher's share of the dev-set Pass@1 gain on the categories its items covered.

    ``pre``/``post``: the student's dev Pass@1 per category before and after
    the phase; ``dev_counts``: dev problems per category; ``items``: this
    teacher's items used per category; ``all_items``: every teacher's. The
    gain of category c is weighted by its dev problems and shared in
    proportion ``items[c] / all_items[c]``; with one teacher this is simply
    the Pass@1 gain over the dev problems of the covered categories. 0 when
    nothing was covered.
    """
    covered = [c for c, n in items.items() if n > 0 and dev_counts.get(c, 0) > 0]
    weight = sum(dev_counts[c] for c in covered)
    if weight == 0:
        return 0.0
    gained = sum(dev_counts[c] * (post.get(c, 0.0) - pre.get(c, 0.0)) * items[c] / max(all_items.get(c, 0), items[c])
                 for c in covered)
    return gained / weight
