"""Every protocol message of one round (DESIGN.md, "Protocol"), as frozen dataclasses.

A message's body is a msgpack map of its fields. :func:`decode_body` checks
each field's type and bounds, then the class's own ``check()``; anything
wrong raises :class:`WireError`. Adding a field is a new ``VERSION``.

Bounds every message shares: an integer field (round, seq, size, count) lies
in ``0..MAX_INT`` (2^53 - 1); a float is finite; text is at most
:data:`MAX_TEXT` characters; duplicate map keys never decode (the codec
refuses them). Feedback losses lie in ``0..MAX_LOSS`` and rewards in
``-MAX_REWARD..MAX_REWARD``; times (deadlines, expiry) in ``0..MAX_TIME``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence, get_args, get_origin, get_type_hints

from knexa_node.crypto import is_valid_peer_id
from knexa_node.profile import CATEGORIES, PROFILE_DIM
from knexa_node.wire.codec import MAX_INT, pack
from knexa_node.wire.errors import WireError

MAX_TEXT = 4096
MAX_LIST = 4096
MAX_LOSS = 1e4  # a cross-entropy in nats; honest values are below 20
MAX_REWARD = 1e6
MAX_TIME = 1e11  # unix seconds, as the envelope's timestamp
PROTOCOLS = ("text", "logits")
MAX_HELD = 1024  # task ids a request may name as held
MAX_HELD_CHARS = 32 * 1024  # their characters together: the request stays inside one 64 KiB control frame
MAX_TASK_ID = 200  # characters of a transfer problem's task id named in a request (``held``)
MAX_REQUEST_BUDGET = 1_000_000  # transfer prompts a request may ask for (as learning.exchange_budget)
MAX_FEEDBACK_ITEMS = 10_000_000  # items a feedback may count (a package holds at most one per transfer prompt and answer)
NO_RECEIPT = bytes(32)  # receipt_hash of a Feedback that reports a failed exchange


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    # Older versions still read: version -> the fields it lacked and the value they take (signed bytes stay as sent).
    OLDER: ClassVar[dict[int, dict[str, Any]]] = {}
    # Fields that must hold a peer ID / a 16-byte ID / 32 bytes (a hash or an X25519 key).
    PEER_FIELDS: ClassVar[tuple[str, ...]] = ()
    ID_FIELDS: ClassVar[tuple[str, ...]] = ()
    FIXED32_FIELDS: ClassVar[tuple[str, ...]] = ()

    def check(self) -> None:
        """Semantic checks beyond field types; raise :class:`WireError`."""

    def wire_version(self) -> int:
        """The oldest version that carries every field in use: what peers of older releases read too.

        A field that an older version lacked is in use when it differs from the value that version reads it
        as; a message that uses none of them goes out as that version (a node without competence sends a
        version-1 profile, which a CPM of the first release accepts), else as :attr:`VERSION`.
        """
        for version in sorted(self.OLDER):
            if all(getattr(self, name) == value for name, value in self.OLDER[version].items()):
                return version
        return self.VERSION

    @classmethod
    def lacked_in(cls, version: int | None) -> dict[str, Any]:
        """The fields ``version`` (None: the current one) lacked, with the values they read as."""
        return cls.OLDER.get(version, {}) if version not in (None, cls.VERSION) else {}

    def to_body(self, version: int | None = None) -> bytes:
        """The msgpack body of ``version`` (default: the current one), without the fields it lacked."""
        left_out = self.lacked_in(version)
        return pack({f.name: _to_wire(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in left_out})


def _to_wire(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True)
class RoundOpen(Message):
    """CPM -> gossip: round ``round`` accepts profiles until ``deadline`` (unix seconds)."""

    TYPE = "round-open"
    round: int
    deadline: float
    policy: str

    def check(self) -> None:
        _check_time("deadline", self.deadline)


@dataclass(frozen=True)
class Profile(Message):
    """Node -> CPM: the node's abstract profile for a round (never data or weights).

    Version 2 adds the node's competence: its greedy Pass@1 per category on the
    *public* dev set (``competence_categories[i]`` -> ``competence_pass1[i]``,
    categories from :data:`~knexa_node.profile.CATEGORIES`, each at most once,
    values in [0, 1]); empty when the node does not measure it. Version 1
    profiles (older nodes) still read, with no competence.
    """

    TYPE = "profile"
    VERSION = 2
    OLDER = {1: {"competence_categories": (), "competence_pass1": ()}}
    round: int
    vector: tuple[float, ...]
    model_type: str
    tokenizer_id: str  # hash of the tokenizer; equal ids make the logits protocol admissible
    addrs: tuple[str, ...]
    competence_categories: tuple[str, ...] = ()
    competence_pass1: tuple[float, ...] = ()

    def check(self) -> None:
        if len(self.vector) != PROFILE_DIM:
            raise WireError("bad-field", f"profile vector must have {PROFILE_DIM} entries")
        _check_categories("competence_categories", self.competence_categories)
        if len(self.competence_pass1) != len(self.competence_categories):
            raise WireError("bad-field", "competence_pass1 must have one value per competence category")
        if not all(0.0 <= v <= 1.0 for v in self.competence_pass1):
            raise WireError("bad-field", "competence_pass1 values must lie in 0..1")

    @property
    def competence(self) -> dict[str, float]:
        """Category -> public dev-set Pass@1 (empty: not measured, or an older node)."""
        return dict(zip(self.competence_categories, self.competence_pass1))

    @classmethod
    def with_competence(cls, competence: dict[str, float], **fields: Any) -> "Profile":
        """A profile carrying ``competence`` in :data:`CATEGORIES` order (unknown categories are left out)."""
        known = [c for c in CATEGORIES if c in competence]
        return cls(**fields, competence_categories=tuple(known),
                   competence_pass1=tuple(min(max(float(competence[c]), 0.0), 1.0) for c in known))


@dataclass(frozen=True)
class PairingProposal(Message):
    """CPM -> gossip: ``teacher`` teaches ``student`` in ``round`` until ``expires``."""

    TYPE = "proposal"
    ID_FIELDS = ("proposal_id",)
    PEER_FIELDS = ("teacher", "student")
    proposal_id: bytes
    round: int
    teacher: str
    student: str
    protocol: str
    context: tuple[float, ...]
    score: float
    expires: float

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise WireError("bad-field", f"protocol must be one of {PROTOCOLS}")
        if self.teacher == self.student:
            raise WireError("bad-field", "teacher and student are the same peer")
        _check_time("expires", self.expires)


@dataclass(frozen=True)
class ExchangeRequest(Message):
    """Student -> teacher on /knexa/exchange: serve me the package of this proposal.

    ``proposal`` is the CPM's signed proposal envelope, verbatim. ``ephemeral_key``
    is the student's one-time X25519 public key for this exchange. Version 2
    adds what the student asks for: its weak ``categories`` (weakest first,
    from its public dev-set Pass@1; known categories, each at most once) and
    ``budget``, the transfer prompts to answer at most (0: the teacher's own
    budget; at most :data:`MAX_REQUEST_BUDGET`). Version 3 adds ``held``: the
    public transfer prompts (task ids) the student already holds a verified
    answer to, which the teacher leaves out (at most :data:`MAX_HELD`, each
    id at most :data:`MAX_TASK_ID` characters, none twice). A version-1
    request asks for nothing in particular.
    """

    TYPE = "exchange-request"
    VERSION = 3
    OLDER = {1: {"categories": (), "budget": 0, "held": ()}, 2: {"held": ()}}
    FIXED32_FIELDS = ("ephemeral_key",)
    proposal: bytes
    ephemeral_key: bytes
    categories: tuple[str, ...] = ()
    budget: int = 0
    held: tuple[str, ...] = ()

    def check(self) -> None:
        _check_categories("categories", self.categories)
        if self.budget > MAX_REQUEST_BUDGET:
            raise WireError("bad-field", f"budget must lie in 0..{MAX_REQUEST_BUDGET}")
        if len(self.held) > MAX_HELD or sum(map(len, self.held)) > MAX_HELD_CHARS:
            raise WireError("bad-field", f"held names more than {MAX_HELD} task ids or {MAX_HELD_CHARS} characters")
        if any(not 0 < len(task_id) <= MAX_TASK_ID for task_id in self.held):
            raise WireError("bad-field", f"held: each task id must have 1..{MAX_TASK_ID} characters")
        if len(set(self.held)) != len(self.held):
            raise WireError("bad-field", "held names a task id twice")


@dataclass(frozen=True)
class ExchangeRefused(Message):
    """Teacher -> student: the exchange will not happen, and why (``code`` is stable)."""

    TYPE = "exchange-refused"
    ID_FIELDS = ("proposal_id",)
    proposal_id: bytes
    code: str
    reason: str


@dataclass(frozen=True)
class PackageHeader(Message):
    """Teacher -> student: what the sealed payload that follows is, bound to its proposal."""

    TYPE = "package-header"
    ID_FIELDS = ("proposal_id",)
    PEER_FIELDS = ("teacher", "student")
    FIXED32_FIELDS = ("payload_hash", "ephemeral_key")
    proposal_id: bytes
    round: int
    teacher: str
    student: str
    protocol: str
    payload_hash: bytes  # sha256 of the plaintext payload
    payload_size: int  # bytes of the sealed payload that follows
    chunks: int
    ephemeral_key: bytes  # the teacher's one-time X25519 public key
    dp_epsilon: float  # epsilon this package spent (0 without DP)
    redactions: int  # guardrail redactions applied

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise WireError("bad-field", f"protocol must be one of {PROTOCOLS}")
        if self.dp_epsilon < 0 or self.chunks < 1:
            raise WireError("bad-field", "negative epsilon or no chunks")


@dataclass(frozen=True)
class Receipt(Message):
    """Student -> teacher: I received and opened the package with this hash.

    It also carries the head of the student's audit log when it signed
    (``log_entries`` entries, the last of them hashing to ``log_head``; the
    header's hash while empty): a checkpoint of the student's log that the
    teacher keeps inside its own ``package-sent`` entry (:func:`knexa_node.audit.receipt_heads`).
    """

    TYPE = "receipt"
    VERSION = 2
    OLDER = {1: {"log_entries": 0, "log_head": bytes(32)}}  # receipts in logs written before the head was added
    ID_FIELDS = ("proposal_id",)
    PEER_FIELDS = ("teacher", "student")
    FIXED32_FIELDS = ("payload_hash", "log_head")
    proposal_id: bytes
    round: int
    teacher: str
    student: str
    payload_hash: bytes
    payload_size: int
    log_entries: int = 0
    log_head: bytes = bytes(32)


@dataclass(frozen=True)
class Feedback(Message):
    """Student -> CPM: the reward of an exchange, tied to the teacher's receipt.

    Version 2 adds what the student's own sandbox found in the package:
    ``items_used`` (trained on), ``items_failed`` (items whose public tests
    failed here, dropped) and ``claims_failed`` (of those, items the teacher
    had marked verified: evidence against it), each at most
    :data:`MAX_FEEDBACK_ITEMS`, ``claims_failed <= items_failed``. Version 1
    feedback reads with zeros.
    """

    TYPE = "feedback"
    VERSION = 2
    OLDER = {1: {"items_used": 0, "items_failed": 0, "claims_failed": 0}}
    ID_FIELDS = ("proposal_id",)
    FIXED32_FIELDS = ("receipt_hash",)
    proposal_id: bytes
    round: int
    reward: float
    loss_before: float
    loss_after: float
    package_bytes: int
    receipt_hash: bytes
    items_used: int = 0
    items_failed: int = 0
    claims_failed: int = 0

    def check(self) -> None:
        if not (0 <= self.loss_before <= MAX_LOSS and 0 <= self.loss_after <= MAX_LOSS):
            raise WireError("bad-field", f"losses must lie in 0..{MAX_LOSS:g}")
        if not -MAX_REWARD <= self.reward <= MAX_REWARD:
            raise WireError("bad-field", f"reward must lie in -{MAX_REWARD:g}..{MAX_REWARD:g}")
        if max(self.items_used, self.items_failed) > MAX_FEEDBACK_ITEMS or self.claims_failed > self.items_failed:
            raise WireError("bad-field", f"item counts must lie in 0..{MAX_FEEDBACK_ITEMS:g}, "
                                         "claims_failed at most items_failed")

    @classmethod
    def failure(cls, proposal_id: bytes, round: int) -> "Feedback":
        """The report of an exchange that never delivered a package (no receipt, no bytes, no reward)."""
        return cls(proposal_id, round, 0.0, 0.0, 0.0, 0, NO_RECEIPT)

    @property
    def reports_failure(self) -> bool:
        return self.receipt_hash == NO_RECEIPT and self.package_bytes == 0


@dataclass(frozen=True)
class Checkpoint(Message):
    """Node -> gossip: the head of its audit chain, so that history cannot be rewritten later."""

    TYPE = "checkpoint"
    FIXED32_FIELDS = ("head_hash",)
    seq: int
    head_hash: bytes
    round: int


@dataclass(frozen=True)
class Ack(Message):
    """Reply on a request/response stream: accepted, or refused with a stable ``code``."""

    TYPE = "ack"
    FIXED32_FIELDS = ("ref",)
    ref: bytes  # digest of the envelope being answered
    ok: bool
    code: str
    reason: str


@dataclass(frozen=True)
class ProposalQuery(Message):
    """Node -> CPM: which proposals of ``round`` name me? (catch-up when gossip missed them)."""

    TYPE = "proposal-query"
    round: int


@dataclass(frozen=True)
class ProposalList(Message):
    """CPM -> node: the round's phase and the signed proposal envelopes that name the asker."""

    TYPE = "proposal-list"
    round: int
    phase: str  # collecting, paired, closed, unknown
    proposals: tuple[bytes, ...]


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (RoundOpen, Profile, PairingProposal, ExchangeRequest, ExchangeRefused, PackageHeader, Receipt, Feedback,
                Checkpoint, Ack, ProposalQuery, ProposalList)
}


def _check_value(name: str, expected: Any, value: Any) -> Any:
    origin = get_origin(expected)
    if origin is tuple:
        item_type = get_args(expected)[0]
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise WireError("bad-field", f"{name} must be a list of at most {MAX_LIST}")
        return tuple(_check_value(f"{name}[]", item_type, item) for item in value)
    if expected is bool:
        if not isinstance(value, bool):
            raise WireError("bad-field", f"{name} must be a bool")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
            raise WireError("bad-field", f"{name} must be an integer in 0..{MAX_INT}")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise WireError("bad-field", f"{name} must be a finite number")
        return float(value)
    if expected is str:
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise WireError("bad-field", f"{name} must be a string of at most {MAX_TEXT}")
        return value
    if expected is bytes:
        if not isinstance(value, bytes):
            raise WireError("bad-field", f"{name} must be bytes")
        return value
    raise AssertionError(f"unsupported wire type {expected!r}")


def newest_held(held: Sequence[str]) -> tuple[str, ...]:
    """The newest of ``held`` (oldest first) that one request may name: valid ids, within both bounds, none twice."""
    chosen: list[str] = []
    seen: set[str] = set()
    chars = 0
    for task_id in reversed(held):
        if not 0 < len(task_id) <= MAX_TASK_ID or task_id in seen:
            continue
        if len(chosen) == MAX_HELD or chars + len(task_id) > MAX_HELD_CHARS:
            break
        chosen.append(task_id)
        seen.add(task_id)
        chars += len(task_id)
    return tuple(reversed(chosen))


def _check_categories(name: str, categories: tuple[str, ...]) -> None:
    """Known categories (:data:`~knexa_node.profile.CATEGORIES`), each at most once: bounded by their number."""
    if len(categories) > len(CATEGORIES) or len(set(categories)) != len(categories):
        raise WireError("bad-field", f"{name} must name each category at most once")
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise WireError("bad-field", f"{name}: unknown category {unknown[0][:40]!r}")


def _check_time(name: str, value: float) -> None:
    if not 0 <= value < MAX_TIME:
        raise WireError("bad-field", f"{name} must be unix seconds in 0..{MAX_TIME:g}")


_HINTS: dict[type[Message], dict[str, Any]] = {cls: get_type_hints(cls) for cls in MESSAGE_TYPES.values()}


def decode_body(cls: type[Message], body: Any, version: int | None = None) -> Message:
    """Build ``cls`` from a decoded msgpack body of ``version`` (default: the current one); raise :class:`WireError`."""
    if not isinstance(body, dict):
        raise WireError("bad-body", "body must be a map")
    hints = _HINTS[cls]
    missing_before = cls.lacked_in(version)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in missing_before]
    if set(body) != set(names):
        missing, extra = sorted(set(names) - set(body)), sorted(set(body) - set(names), key=str)
        raise WireError("bad-body", f"{cls.TYPE}: missing {missing}, unexpected {extra[:5]}")
    values = {name: _check_value(name, hints[name], body[name]) for name in names}
    values.update(missing_before)
    for name in cls.PEER_FIELDS:
        if not is_valid_peer_id(values[name]):
            raise WireError("bad-field", f"{name} is not an Ed25519 peer ID")
    for name in cls.ID_FIELDS:
        if len(values[name]) != 16:
            raise WireError("bad-field", f"{name} must be 16 bytes")
    for name in cls.FIXED32_FIELDS:
        if len(values[name]) != 32:
            raise WireError("bad-field", f"{name} must be 32 bytes")
    message = cls(**values)
    message.check()
    return message
