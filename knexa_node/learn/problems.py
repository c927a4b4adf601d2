"""The embedded task: a seeded generator of one-line Python functions with unit tests.

Each template belongs to one of the 12 categories of
:data:`knexa_node.profile.CATEGORIES`; a draw picks a template, a function
name, parameter names and constants, so that two problems from one template
still differ in their text. The reference solution is executed here (it is
our own generated code, never a model's) to compute the expected values of
the ``assert`` tests.

A problem is ``prompt`` (signature + docstring) followed by ``solution``
(one ``return`` line); :class:`Problem` is the record every other module
uses, whether a problem comes from here or from a HumanEval/MBPP JSONL file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from knexa_node.profile import CATEGORIES


@dataclass(frozen=True)
class Problem:
    """One programming problem: what the model sees, and how its answer is checked.

    ``tests`` is Python source: either bare ``assert`` lines (MBPP style) or a
    ``def check(candidate)`` (HumanEval style), which the harness calls as
    ``check(<entry_point>)``. ``solution`` is the reference completion (may be
    empty for problems loaded without one); it is used for training only.
    """

    task_id: str
    prompt: str
    tests: str
    entry_point: str
    category: str
    solution: str = ""


# A template: (doc, params, body, input maker). ``doc`` and ``body`` are
# format strings over the drawn constants; ``{f}`` is the function's own name
# (recursion), ``{p}``/``{q}`` the drawn parameter names.
Template = tuple[str, tuple[str, ...], str, Callable[[random.Random, dict], tuple]]

_WORDS = ("apple", "river", "stone", "cloud", "tiger", "maple", "piano", "ocean", "lemon", "zebra",
          "candle", "forest", "silver", "rocket", "garden", "banana", "pixel", "orbit", "copper", "harbor")
_VERBS = ("get", "compute", "make", "find", "calc", "build", "derive", "eval", "pick", "take", "form", "count")
_NOUNS = ("value", "result", "total", "item", "score", "answer", "output", "data", "entry", "thing", "part", "amount")
_LIST_NAMES = ("xs", "nums", "values", "items", "arr", "data")
_STR_NAMES = ("s", "text", "word", "line")
_INT_NAMES = ("n", "x", "k", "num")
_LETTERS = "abcdeilmnorst"


def _word(r: random.Random) -> str:
    return r.choice(_WORDS)


def _ints(r: random.Random, lo: int = -9, hi: int = 20, n: tuple[int, int] = (3, 7)) -> list[int]:
    return [r.randint(lo, hi) for _ in range(r.randint(*n))]


def _matrix(r: random.Random, square: bool = False) -> list[list[int]]:
    rows = r.randint(2, 3)
    cols = rows if square else r.randint(2, 3)
    return [[r.randint(0, 9) for _ in range(cols)] for _ in range(rows)]


def _sentence(r: random.Random, sep: str = " ") -> str:
    return sep.join(r.choice(_WORDS) for _ in range(r.randint(2, 4)))


_TEMPLATES: dict[str, list[Template]] = {
    "string": [
        ("Return {p} repeated {k} times.", ("S",), "{p} * {k}", lambda r, c: (_word(r),)),
        ("Return {p} reversed.", ("S",), "{p}[::-1]", lambda r, c: (_word(r),)),
        ("Return the first {k} characters of {p}.", ("S",), "{p}[:{k}]", lambda r, c: (_word(r),)),
        ("Return {p} with every '{a}' replaced by '{b}'.", ("S",), "{p}.replace('{a}', '{b}')", lambda r, c: (_word(r),)),
        ("Return the number of times '{a}' occurs in {p}.", ("S",), "{p}.count('{a}')", lambda r, c: (_word(r),)),
        ("Return {p} in upper case followed by '{a}'.", ("S",), "{p}.upper() + '{a}'", lambda r, c: (_word(r),)),
    ],
    "list": [
        ("Return the list {p} with each element multiplied by {k}.", ("L",), "[v * {k} for v in {p}]", lambda r, c: (_ints(r),)),
        ("Return the sum of the elements of {p} plus {k}.", ("L",), "sum({p}) + {k}", lambda r, c: (_ints(r),)),
        ("Return the elements of {p} that are greater than {k}.", ("L",), "[v for v in {p} if v > {k}]", lambda r, c: (_ints(r),)),
        ("Return the last {k} elements of {p}.", ("L",), "{p}[-{k}:]", lambda r, c: (_ints(r, n=(4, 8)),)),
        ("Return the list {p} with {k} appended at the end.", ("L",), "{p} + [{k}]", lambda r, c: (_ints(r),)),
        ("Return the elements of {p} at even positions.", ("L",), "{p}[::2]", lambda r, c: (_ints(r),)),
    ],
    "math": [
        ("Return {p} times {k} plus {q}.", ("N", "M"), "{p} * {k} + {q}", lambda r, c: (r.randint(-20, 20), r.randint(-20, 20))),
        ("Return {p} squared minus {k}.", ("N",), "{p} * {p} - {k}", lambda r, c: (r.randint(-20, 20),)),
        ("Return the absolute difference of {p} and {q} times {k}.", ("N", "M"), "abs({p} - {q}) * {k}", lambda r, c: (r.randint(-20, 20), r.randint(-20, 20))),
        ("Return {p} integer-divided by {k}.", ("N",), "{p} // {k}", lambda r, c: (r.randint(0, 200),)),
        ("Return the larger of {p} and {q}, plus {k}.", ("N", "M"), "max({p}, {q}) + {k}", lambda r, c: (r.randint(-20, 20), r.randint(-20, 20))),
    ],
    "logic": [
        ("Return True if {p} is between {lo} and {hi} inclusive.", ("N",), "{lo} <= {p} <= {hi}", lambda r, c: (r.randint(c["lo"] - 5, c["hi"] + 5),)),
        ("Return True if {p} and {q} are both greater than {k}.", ("N", "M"), "{p} > {k} and {q} > {k}", lambda r, c: (r.randint(0, 20), r.randint(0, 20))),
        ("Return True if {p} is even or greater than {k}.", ("N",), "{p} % 2 == 0 or {p} > {k}", lambda r, c: (r.randint(0, 20),)),
        ("Return 'yes' if {p} is greater than {k}, else 'no'.", ("N",), "'yes' if {p} > {k} else 'no'", lambda r, c: (r.randint(0, 20),)),
        ("Return True if exactly one of {p} and {q} is negative.", ("N", "M"), "({p} < 0) != ({q} < 0)", lambda r, c: (r.randint(-9, 9), r.randint(-9, 9))),
    ],
    "dict": [
        ("Return the value for key '{a}' in {p}, or {k} if it is missing.", ("D",), "{p}.get('{a}', {k})", lambda r, c: ({r.choice(_LETTERS): r.randint(0, 9) for _ in range(3)},)),
        ("Return the sorted keys of {p}.", ("D",), "sorted({p})", lambda r, c: ({_word(r): r.randint(0, 9) for _ in range(3)},)),
        ("Return a dict mapping each element of {p} to itself times {k}.", ("L",), "{{v: v * {k} for v in {p}}}", lambda r, c: (_ints(r, 0, 9),)),
        ("Return the sum of the values of {p} plus {k}.", ("D",), "sum({p}.values()) + {k}", lambda r, c: ({_word(r): r.randint(0, 9) for _ in range(3)},)),
        ("Return the keys of {p} whose value is greater than {k}, sorted.", ("D",), "sorted(key for key, v in {p}.items() if v > {k})", lambda r, c: ({_word(r): r.randint(0, 9) for _ in range(4)},)),
    ],
    "sorting": [
        ("Return {p} sorted in descending order.", ("L",), "sorted({p}, reverse=True)", lambda r, c: (_ints(r),)),
        ("Return the {k} smallest elements of {p} in ascending order.", ("L",), "sorted({p})[:{k}]", lambda r, c: (_ints(r, n=(4, 8)),)),
        ("Return the words in {p} sorted by length.", ("L",), "sorted({p}, key=len)", lambda r, c: ([_word(r) for _ in range(3)],)),
        ("Return {p} sorted by absolute value.", ("L",), "sorted({p}, key=abs)", lambda r, c: (_ints(r),)),
        ("Return the {k} largest elements of {p} in descending order.", ("L",), "sorted({p}, reverse=True)[:{k}]", lambda r, c: (_ints(r, n=(4, 8)),)),
    ],
    "search": [
        ("Return the index of {k} in {p}, or -1 if it is absent.", ("L",), "{p}.index({k}) if {k} in {p} else -1", lambda r, c: (_ints(r, 0, 9) + ([c["k"]] if r.random() < 0.5 else []),)),
        ("Return True if {k} occurs in {p}.", ("L",), "{k} in {p}", lambda r, c: (_ints(r, 0, 9),)),
        ("Return the maximum element of {p} minus {k}.", ("L",), "max({p}) - {k}", lambda r, c: (_ints(r),)),
        ("Return the first element of {p} greater than {k}, or None.", ("L",), "next((v for v in {p} if v > {k}), None)", lambda r, c: (_ints(r),)),
        ("Return how many elements of {p} are equal to {k}.", ("L",), "{p}.count({k})", lambda r, c: (_ints(r, 0, 5, (5, 9)),)),
    ],
    "number_theory": [
        ("Return True if {p} is divisible by {k}.", ("N",), "{p} % {k} == 0", lambda r, c: (r.randint(0, 100),)),
        ("Return {p} modulo {k}.", ("N",), "{p} % {k}", lambda r, c: (r.randint(0, 200),)),
        ("Return the sum of the digits of {p} plus {k}.", ("N",), "sum(int(d) for d in str({p})) + {k}", lambda r, c: (r.randint(0, 9999),)),
        ("Return the number of multiples of {k} from 1 to {p}.", ("N",), "{p} // {k}", lambda r, c: (r.randint(1, 100),)),
        ("Return the divisors of {p} that are at most {k}.", ("N",), "[d for d in range(1, {k} + 1) if {p} % d == 0]", lambda r, c: (r.randint(1, 60),)),
    ],
    "recursion": [
        ("Return {k} plus the sum of 1..{p}, computed recursively.", ("N",), "{k} if {p} <= 0 else {p} + {f}({p} - 1)", lambda r, c: (r.randint(0, 12),)),
        ("Return {k} raised to the power {p}, computed recursively.", ("N",), "1 if {p} == 0 else {k} * {f}({p} - 1)", lambda r, c: (r.randint(0, 6),)),
        ("Return the factorial of {p} times {k}, computed recursively.", ("N",), "{k} if {p} <= 1 else {p} * {f}({p} - 1)", lambda r, c: (r.randint(0, 8),)),
        ("Return the number of digits of {p}, computed recursively.", ("N",), "1 if {p} < 10 else 1 + {f}({p} // 10)", lambda r, c: (r.randint(0, 99999),)),
        ("Return the sum of the list {p} plus {k}, computed recursively.", ("L",), "{k} if not {p} else {p}[0] + {f}({p}[1:])", lambda r, c: (_ints(r),)),
    ],
    "parsing": [
        ("Return the integers in the comma-separated string {p}.", ("S",), "[int(t) for t in {p}.split(',')]", lambda r, c: (",".join(str(v) for v in _ints(r)),)),
        ("Return the parts of {p} split on '{a}'.", ("S",), "{p}.split('{a}')", lambda r, c: (_sentence(r, c["a"]),)),
        ("Return the sum of the space-separated integers in {p} plus {k}.", ("S",), "sum(int(t) for t in {p}.split()) + {k}", lambda r, c: (" ".join(str(v) for v in _ints(r)),)),
        ("Return {p} without the character '{a}' at either end.", ("S",), "{p}.strip('{a}')", lambda r, c: (c["a"] * r.randint(0, 2) + _word(r) + c["a"] * r.randint(0, 2),)),
        ("Return the number of words in {p} plus {k}.", ("S",), "len({p}.split()) + {k}", lambda r, c: (_sentence(r),)),
    ],
    "set": [
        ("Return the sorted unique elements of {p}.", ("L",), "sorted(set({p}))", lambda r, c: (_ints(r, 0, 6, (4, 9)),)),
        ("Return the sorted elements common to {p} and {q}.", ("L", "L2"), "sorted(set({p}) & set({q}))", lambda r, c: (_ints(r, 0, 9), _ints(r, 0, 9))),
        ("Return the number of distinct elements of {p} plus {k}.", ("L",), "len(set({p})) + {k}", lambda r, c: (_ints(r, 0, 6, (4, 9)),)),
        ("Return True if {p} has no duplicate elements.", ("L",), "len(set({p})) == len({p})", lambda r, c: (_ints(r, 0, 12, (2, 5)),)),
        ("Return the sorted elements of {p} that are not in {q}.", ("L", "L2"), "sorted(set({p}) - set({q}))", lambda r, c: (_ints(r, 0, 9), _ints(r, 0, 9))),
    ],
    "matrix": [
        ("Return the transpose of the matrix {p}.", ("X",), "[list(row) for row in zip(*{p})]", lambda r, c: (_matrix(r),)),
        ("Return the sum of all entries of the matrix {p} times {k}.", ("X",), "sum(map(sum, {p})) * {k}", lambda r, c: (_matrix(r),)),
        ("Return the diagonal of the square matrix {p}.", ("X",), "[{p}[i][i] for i in range(len({p}))]", lambda r, c: (_matrix(r, True),)),
        ("Return the matrix {p} with {k} added to every entry.", ("X",), "[[v + {k} for v in row] for row in {p}]", lambda r, c: (_matrix(r),)),
        ("Return the row sums of the matrix {p}.", ("X",), "[sum(row) for row in {p}]", lambda r, c: (_matrix(r),)),
    ],
}

_KIND_NAMES = {"S": _STR_NAMES, "L": _LIST_NAMES, "L2": ("ys", "other", "second"), "N": _INT_NAMES,
               "M": ("m", "y", "b"), "D": ("d", "table", "mapping"), "X": ("m", "grid", "matrix")}


def _constants(r: random.Random) -> dict[str, Any]:
    lo = r.randint(-5, 10)
    a, b = r.sample(_LETTERS, 2)
    return {"k": r.randint(2, 9), "lo": lo, "hi": lo + r.randint(2, 12), "a": a, "b": b}


def generate_problem(rng: random.Random, category: str, index: int, *, n_tests: int = 3) -> Problem:
    """Draw one problem of ``category``; ``index`` only makes the task id unique."""
    if category not in _TEMPLATES:
        raise ValueError(f"unknown category {category!r}")
    template_no = rng.randrange(len(_TEMPLATES[category]))
    doc, kinds, body, make_input = _TEMPLATES[category][template_no]
    name = f"{rng.choice(_VERBS)}_{rng.choice(_NOUNS)}"
    if rng.random() < 0.5:
        name += f"_{rng.randint(1, 99)}"
    consts = _constants(rng)
    params = {}
    for slot, kind in zip(("p", "q"), kinds):
        params[slot] = rng.choice(_KIND_NAMES[kind])
    fields = {**consts, **params, "f": name}
    signature = ", ".join(params[s] for s in ("p", "q") if s in params)
    prompt = f'def {name}({signature}):\n    """{doc.format(**fields)}"""\n'
    solution = f"    return {body.format(**fields)}\n"
    namespace: dict[str, Any] = {}
    exec(prompt + solution, namespace)  # our own reference code, never a model's output
    function = namespace[name]
    lines, seen = [], set()
    for _ in range(n_tests * 4):
        args = make_input(rng, consts)
        call = f"{name}({', '.join(repr(a) for a in args)})"
        if call in seen:
            continue
        seen.add(call)
        lines.append(f"assert {call} == {function(*args)!r}")
        if len(lines) == n_tests:
            break
    return Problem(f"embedded/{category}/{template_no}/{index}", prompt, "\n".join(lines) + "\n", name, category, solution)


def generate_problems(seed: int, counts: dict[str, int]) -> list[Problem]:
    """``counts[category]`` distinct problems per category (distinct prompts), seeded."""
    rng = random.Random(seed)
    out: list[Problem] = []
    seen: set[str] = set()
    for category in CATEGORIES:
        wanted = counts.get(category, 0)
        made, tries = 0, 0
        while made < wanted:
            tries += 1
            if tries > 50 * wanted + 100:
                raise ValueError(f"cannot draw {wanted} distinct {category} problems")
            problem = generate_problem(rng, category, tries)
            if problem.prompt in seen:
                continue
            seen.add(problem.prompt)
            out.append(problem)
            made += 1
    return out


def template_count(category: str) -> int:
    return len(_TEMPLATES[category])
