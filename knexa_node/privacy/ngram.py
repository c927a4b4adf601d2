"""An index of the n-grams of a node's private training data, to catch verbatim leakage.

Tokens are words and single punctuation marks (``\\w+|[^\\w\\s]``), so the check
does not depend on any model's tokenizer and whitespace changes do not hide
a copy. Each n-gram is stored as an 8-byte BLAKE2b hash in a sorted numpy
array (8 bytes per n-gram, binary search per lookup): a 4,000-problem
private set costs a few MB.

n-grams that also occur in public text (the transfer set, the prompts
themselves) are removed from the index: repeating the question or
boilerplate everybody has is not a leak of D_i.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _hashes(tokens: list[str], n: int) -> np.ndarray:
    if len(tokens) < n:
        return np.empty(0, dtype=np.uint64)
    out = np.empty(len(tokens) - n + 1, dtype=np.uint64)
    for i in range(len(out)):
        # \x1f cannot occur inside a token, so joins are unambiguous.
        digest = hashlib.blake2b("\x1f".join(tokens[i : i + n]).encode("utf-8"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little")
    return out


class NgramIndex:
    """Hashes of every n-gram of the private texts, minus those of the public texts."""

    def __init__(self, n: int, hashes: np.ndarray) -> None:
        self.n = n
        self._sorted = np.unique(hashes)

    @classmethod
    def build(cls, n: int, private_texts: Iterable[str], public_texts: Iterable[str] = ()) -> "NgramIndex":
        if n < 1:
            raise ValueError("n must be positive")
        private = [_hashes(tokenize(t), n) for t in private_texts]
        hashes = np.concatenate(private) if private else np.empty(0, dtype=np.uint64)
        public = [_hashes(tokenize(t), n) for t in public_texts]
        if public:
            hashes = np.setdiff1d(hashes, np.concatenate(public))
        return cls(n, hashes)

    def __len__(self) -> int:
        return int(self._sorted.size)

    def overlaps(self, text: str) -> int:
        """How many n-grams of ``text`` occur in the private data (0: no verbatim copy of n tokens)."""
        if not self._sorted.size:
            return 0
        query = _hashes(tokenize(text), self.n)
        if not query.size:
            return 0
        positions = np.searchsorted(self._sorted, query)
        positions[positions == self._sorted.size] = 0
        return int(np.count_nonzero(self._sorted[positions] == query))
