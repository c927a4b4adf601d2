"""The knowledge package: what a teacher sends, as versioned msgpack, and its strict decoder.

Layout (``v`` = :data:`PACKAGE_VERSION`)::

    {"v": 1, "kind": "text" | "logits", "tokenizer": <sha256 hex of the teacher's tokenizer>,
     "round": int, "k": int (logits only),
     "items": [{"id": task_id, "text": completion}]                      # text
            | [{"id": task_id, "tokens": int32 bytes (L),
                "topk_ids": int32 bytes (L*k), "topk_logp": float16 bytes (L*k)}]}  # logits

Items name transfer problems by ``task_id`` (``"<task id>#<j>"`` for a
further answer to the same prompt): the student already holds the public
transfer set, so prompts never travel. An item may carry ``"verified": true``:
the teacher ran its answer against the prompt's public tests and it passed (a
claim the student checks again; optional, absent means false). Log-probabilities are
temperature 1; the rest of the mass (``1 - sum(exp(topk_logp))``) is implied.
Decoding untrusted bytes raises only :class:`PackageError`. It reads the
bytes with :class:`~knexa_node.wire.codec.Reader` against the schema above and
:class:`PackageLimits` (sized by the student from its transfer set), so every
count and length is checked at its header before anything is built: a hostile
package is refused having cost about its own size in memory. The top-level
``items`` field must come after ``kind`` (and ``k``), as :func:`encode_package`
writes it; unknown fields, duplicate keys and negative rounds are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from knexa_node.wire.codec import MAX_INT, Reader, check_size, pack
from knexa_node.wire.errors import WireError

PACKAGE_VERSION = 1
KINDS = ("text", "logits")
# Hard ceilings; a student decodes under PackageLimits.for_transfer, which is tighter.
MAX_ITEMS = 1 << 16
MAX_TEXT = 64 * 1024  # UTF-8 bytes of one text answer
MAX_TOKENS = 4096
MAX_TOP_K = 256
MAX_ID = 256  # UTF-8 bytes of a task id
MAX_TOKENIZER = 128
# The longest text one generated token decodes to, with margin (byte-level BPE tokens stay far below).
BYTES_PER_TOKEN = 256
_ITEM_OVERHEAD = 64  # map and field headers and names of one item
_PACKAGE_OVERHEAD = 512  # the top-level fields


@dataclass(frozen=True)
class PackageLimits:
    """What one package may hold, checked while decoding.

    The default is the format's ceiling; a student passes
    :meth:`for_transfer`, sized to what its transfer set can need.
    """

    max_items: int = MAX_ITEMS
    max_text: int = MAX_TEXT
    max_tokens: int = MAX_TOKENS
    max_top_k: int = MAX_TOP_K

    @classmethod
    def for_transfer(cls, items: int, max_new_tokens: int) -> "PackageLimits":
        """Limits for answers to ``items`` transfer problems of at most ``max_new_tokens`` generated tokens.

        The teacher's top-k is its own setting, so it stays at the format's ceiling.
        """
        tokens = min(max(max_new_tokens, 1) + 1, MAX_TOKENS)  # the answer and its end-of-sequence token
        return cls(max_items=min(max(items, 1), MAX_ITEMS), max_text=min(tokens * BYTES_PER_TOKEN, MAX_TEXT),
                   max_tokens=tokens)

    @property
    def max_bytes(self) -> int:
        """The largest encoded package these limits admit."""
        logit_item = self.max_tokens * 4 + self.max_tokens * self.max_top_k * (4 + 2)
        per_item = MAX_ID + max(self.max_text, logit_item) + _ITEM_OVERHEAD
        return _PACKAGE_OVERHEAD + self.max_items * per_item

    @property
    def max_objects(self) -> int:
        """msgpack values in the largest package: six top-level fields; per item an id, three fields and ``verified``."""
        return 1 + 2 * 6 + self.max_items * (1 + 2 * 5)


class PackageError(ValueError):
    """A knowledge package is malformed, of an unknown version, or unusable by this student."""


@dataclass(frozen=True)
class LogitItem:
    tokens: np.ndarray  # int32 (L,)
    topk_ids: np.ndarray  # int32 (L, k)
    topk_logp: np.ndarray  # float16 (L, k), log-probabilities at temperature 1


@dataclass(frozen=True)
class KnowledgePackage:
    kind: str
    tokenizer: str
    round: int
    texts: dict[str, str] = field(default_factory=dict)
    logits: dict[str, LogitItem] = field(default_factory=dict)
    k: int = 0
    verified: frozenset[str] = frozenset()  # item ids the teacher marks as passing the public tests

    def __len__(self) -> int:
        return len(self.texts) if self.kind == "text" else len(self.logits)


def encode_package(package: KnowledgePackage) -> bytes:
    body: dict = {"v": PACKAGE_VERSION, "kind": package.kind, "tokenizer": package.tokenizer, "round": package.round}
    if package.kind == "text":
        body["items"] = [{"id": key, "text": text} for key, text in package.texts.items()]
    else:
        body["k"] = package.k
        body["items"] = [{"id": key, "tokens": item.tokens.astype("<i4").tobytes(),
                          "topk_ids": item.topk_ids.astype("<i4").tobytes(),
                          "topk_logp": item.topk_logp.astype("<f2").tobytes()}
                         for key, item in package.logits.items()]
    for item in body["items"]:
        if item["id"] in package.verified:
            item["verified"] = True
    return pack(body)




def _array(raw: bytes, dtype: str, count: int, name: str) -> np.ndarray:
    if len(raw) != count * np.dtype(dtype).itemsize:
        raise PackageError(f"{name}: expected {count} values of {dtype}")
    return np.frombuffer(raw, dtype=dtype).copy()


def decode_package(data: bytes, *, max_size: int, limits: PackageLimits = PackageLimits()) -> KnowledgePackage:
    """Decode an untrusted package of at most ``max_size`` bytes under ``limits``; raise :class:`PackageError`."""
    try:
        check_size(data, min(max_size, limits.max_bytes))
        reader = Reader(data, max_objects=limits.max_objects)
        reader.spend(1)
        package = _decode(reader, limits)
        reader.end()
    except WireError as exc:
        raise PackageError(f"undecodable package: {exc}") from None
    return package


def _decode(reader: Reader, limits: PackageLimits) -> KnowledgePackage:
    fields: dict[str, Any] = {}
    for _ in range(reader.map_header(6, "package")):
        name = reader.text(16, "package field name")
        if name in fields:
            raise PackageError(f"duplicate package field {name!r}")
        if name == "v":
            fields[name] = reader.integer(name)
            if fields[name] != PACKAGE_VERSION:
                raise PackageError(f"unsupported package version {fields[name]} (this node reads {PACKAGE_VERSION})")
        elif name == "kind":
            fields[name] = reader.text(16, name)
            if fields[name] not in KINDS:
                raise PackageError(f"unknown package kind {fields[name]!r}")
        elif name == "tokenizer":
            fields[name] = reader.text(MAX_TOKENIZER, name)
        elif name == "round":
            fields[name] = reader.integer(name)
            if not 0 <= fields[name] <= MAX_INT:
                raise PackageError(f"round {fields[name]} out of range 0..{MAX_INT}")
        elif name == "k":
            fields[name] = reader.integer(name)
            if not 1 <= fields[name] <= limits.max_top_k:
                raise PackageError(f"top-k {fields[name]} out of range 1..{limits.max_top_k}")
        elif name == "items":
            kind = fields.get("kind")
            if kind is None or (kind == "logits" and "k" not in fields):
                raise PackageError("field 'items' must come after 'kind' (and 'k' for logits)")
            fields[name] = _items(reader, kind, fields.get("k", 0), limits)
        else:
            raise PackageError(f"unknown package field {name!r}")
    missing = [n for n in ("v", "kind", "tokenizer", "round", "items") if n not in fields]
    if missing or (fields["kind"] == "text") == ("k" in fields):
        raise PackageError(f"package fields missing {missing} or 'k' where it does not belong")
    texts, logits, verified = fields["items"]
    return KnowledgePackage(fields["kind"], fields["tokenizer"], fields["round"], texts, logits, fields.get("k", 0),
                            verified)


def _items(reader: Reader, kind: str, k: int,
           limits: PackageLimits) -> tuple[dict[str, str], dict[str, LogitItem], frozenset[str]]:
    texts: dict[str, str] = {}
    logits: dict[str, LogitItem] = {}
    verified: set[str] = set()
    # Most bytes each binary field may hold, checked at its header.
    blob_limits = {"tokens": 4 * limits.max_tokens, "topk_ids": 4 * limits.max_tokens * k,
                   "topk_logp": 2 * limits.max_tokens * k}
    required = ("id", "text") if kind == "text" else ("id", "tokens", "topk_ids", "topk_logp")
    for index in range(reader.array_header(limits.max_items, "items")):
        item: dict[str, Any] = {}
        for _ in range(reader.map_header(len(required) + 1, f"item {index}")):
            name = reader.text(16, "item field name")
            if name not in (*required, "verified") or name in item:
                raise PackageError(f"item {index}: unexpected or repeated field {name!r}")
            if name == "id":
                item[name] = reader.text(MAX_ID, "item id")
            elif name == "text":
                item[name] = reader.text(limits.max_text, f"item {index} text")
            elif name == "verified":
                item[name] = reader.scalar(16)
                if not isinstance(item[name], bool):
                    raise PackageError(f"item {index}: 'verified' must be a boolean")
            else:
                item[name] = reader.blob(blob_limits[name], f"item {index} {name}")
        if any(name not in item for name in required):
            raise PackageError(f"item {index}: fields missing {sorted(set(required) - set(item))}")
        key = item["id"]
        if key in texts or key in logits:
            raise PackageError(f"duplicate item id {key!r}")
        if item.get("verified", False):
            verified.add(key)
        if kind == "text":
            texts[key] = item["text"]
            continue
        length = len(item["tokens"]) // 4
        tokens = _array(item["tokens"], "<i4", length, "tokens")
        ids = _array(item["topk_ids"], "<i4", length * k, "topk_ids").reshape(length, k)
        logp = _array(item["topk_logp"], "<f2", length * k, "topk_logp").reshape(length, k)
        if np.any(tokens < 0) or np.any(ids < 0):
            raise PackageError(f"item {key!r}: negative token id")
        if not np.all(np.isfinite(logp)) or np.any(logp > 0):
            raise PackageError(f"item {key!r}: log-probabilities must be finite and <= 0")
        logits[key] = LogitItem(tokens.astype(np.int32, copy=False), ids.astype(np.int32, copy=False), logp)
    return texts, logits, frozenset(verified)
