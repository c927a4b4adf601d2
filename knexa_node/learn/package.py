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
Decoding untrusted bytes raises only :class:`PackageError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from knexa_node.wire.codec import pack, unpack
from knexa_node.wire.errors import WireError

PACKAGE_VERSION = 1
KINDS = ("text", "logits")
MAX_ITEMS = 1 << 16
MAX_TEXT = 64 * 1024
MAX_TOKENS = 4096
MAX_TOP_K = 256


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


def _get(mapping: dict, key: str, kind: type | tuple[type, ...]) -> object:
    if key not in mapping or not isinstance(mapping[key], kind) or isinstance(mapping[key], bool):
        raise PackageError(f"field {key!r} missing or not {getattr(kind, '__name__', kind)}")
    return mapping[key]


def _array(raw: object, dtype: str, count: int, name: str) -> np.ndarray:
    if not isinstance(raw, bytes) or len(raw) != count * np.dtype(dtype).itemsize:
        raise PackageError(f"{name}: expected {count} values of {dtype}")
    return np.frombuffer(raw, dtype=dtype).copy()


def decode_package(data: bytes, *, max_size: int) -> KnowledgePackage:
    try:
        body = unpack(data, max_size=max_size)
    except WireError as exc:
        raise PackageError(f"undecodable package: {exc}") from None
    if not isinstance(body, dict):
        raise PackageError("package must be a map")
    version = _get(body, "v", int)
    if version != PACKAGE_VERSION:
        raise PackageError(f"unsupported package version {version} (this node reads {PACKAGE_VERSION})")
    kind = _get(body, "kind", str)
    if kind not in KINDS:
        raise PackageError(f"unknown package kind {kind!r}")
    tokenizer = str(_get(body, "tokenizer", str))[:128]
    round_index = int(_get(body, "round", int))  # type: ignore[arg-type]
    items = _get(body, "items", list)
    if len(items) > MAX_ITEMS:  # type: ignore[arg-type]
        raise PackageError(f"more than {MAX_ITEMS} items")
    texts: dict[str, str] = {}
    logits: dict[str, LogitItem] = {}
    verified: set[str] = set()
    k = 0
    if kind == "logits":
        k = int(_get(body, "k", int))  # type: ignore[arg-type]
        if not 1 <= k <= MAX_TOP_K:
            raise PackageError(f"top-k {k} out of range 1..{MAX_TOP_K}")
    for index, item in enumerate(items):  # type: ignore[arg-type]
        if not isinstance(item, dict):
            raise PackageError(f"item {index} is not a map")
        key = _get(item, "id", str)
        if key in texts or key in logits:
            raise PackageError(f"duplicate item id {key!r}")
        if not isinstance(item.get("verified", False), bool):
            raise PackageError(f"item {key!r}: 'verified' must be a boolean")
        if item.get("verified", False):
            verified.add(key)  # type: ignore[arg-type]
        if kind == "text":
            text = _get(item, "text", str)
            if len(text) > MAX_TEXT:  # type: ignore[arg-type]
                raise PackageError(f"item {key!r}: text longer than {MAX_TEXT}")
            texts[key] = text  # type: ignore[index,assignment]
        else:
            raw_tokens = _get(item, "tokens", bytes)
            length = len(raw_tokens) // 4  # type: ignore[arg-type]
            if length > MAX_TOKENS:
                raise PackageError(f"item {key!r}: more than {MAX_TOKENS} tokens")
            tokens = _array(raw_tokens, "<i4", length, "tokens")
            ids = _array(item.get("topk_ids"), "<i4", length * k, "topk_ids").reshape(length, k)
            logp = _array(item.get("topk_logp"), "<f2", length * k, "topk_logp").reshape(length, k)
            if np.any(tokens < 0) or np.any(ids < 0):
                raise PackageError(f"item {key!r}: negative token id")
            if not np.all(np.isfinite(logp)) or np.any(logp > 0):
                raise PackageError(f"item {key!r}: log-probabilities must be finite and <= 0")
            logits[key] = LogitItem(tokens.astype(np.int32), ids.astype(np.int32), logp)  # type: ignore[index]
    return KnowledgePackage(kind, tokenizer, round_index, texts, logits, k, frozenset(verified))  # type: ignore[arg-type]
