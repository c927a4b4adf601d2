"""A replay cache that survives restarts: each (kind, round, id) is accepted once.

Teachers record proposals they served; the CPM records feedback it accepted
(``kind`` separates the two). Every accepted entry is persisted atomically
before the caller acts on it (write, fsync, rename via :mod:`knexa_node.fsutil`),
so a crash right after acceptance still remembers it.

The size is bounded by rounds: only the newest ``keep_rounds`` rounds are
kept, and an entry for a round older than that horizon is refused as
unprovable (a proposal that old fails the round check anyway). A hard cap on
entries drops the oldest rounds first.

File (``<home>/state/replay.msgpack``): msgpack ``{"v": 1, "entries": [[kind, round, id], ...]}``.
"""

from __future__ import annotations

import threading
from pathlib import Path

from knexa_node.fsutil import atomic_write_bytes
from knexa_node.wire.codec import pack, unpack
from knexa_node.wire.errors import WireError

REPLAY_FILE = "replay.msgpack"
DEFAULT_KEEP_ROUNDS = 8
DEFAULT_MAX_ENTRIES = 100_000
_MAX_FILE = 64 * 1024 * 1024

Entry = tuple[str, int, bytes]


class ReplayCacheError(Exception):
    """The replay cache file is unreadable or malformed (the daemon must not start on it blindly)."""


class ReplayCache:
    """Seen proposal/feedback IDs; ``path`` None keeps it in memory only (tests, the simulator)."""

    def __init__(self, path: Path | None = None, *, keep_rounds: int = DEFAULT_KEEP_ROUNDS, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if keep_rounds < 1 or max_entries < 1:
            raise ValueError("keep_rounds and max_entries must be positive")
        self.path = Path(path) if path is not None else None
        self.keep_rounds = keep_rounds
        self.max_entries = max_entries
        self._entries: set[Entry] = set()
        self._newest_round: int | None = None
        # add() runs in worker threads (its fsync stays off the trio thread); one at a time.
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            self._load(self.path)

    @classmethod
    def in_state_dir(cls, state_dir: Path, **kwargs: int) -> "ReplayCache":
        """The node's cache at ``<state_dir>/replay.msgpack``."""
        return cls(Path(state_dir) / REPLAY_FILE, **kwargs)

    def _load(self, path: Path) -> None:
        try:
            data = path.read_bytes()
            raw = unpack(data, max_size=_MAX_FILE, max_objects=4 * self.max_entries + 16)
        except (OSError, WireError) as exc:
            raise ReplayCacheError(f"{path}: cannot read replay cache: {exc}") from None
        if not isinstance(raw, dict) or raw.get("v") != 1 or not isinstance(raw.get("entries"), list):
            raise ReplayCacheError(f"{path}: not a knexa replay cache (version 1)")
        for item in raw["entries"]:
            if (
                not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                or isinstance(item[1], bool) or not isinstance(item[1], int) or not isinstance(item[2], bytes)
            ):
                raise ReplayCacheError(f"{path}: malformed entry {str(item)[:80]}")
            self._entries.add((item[0], item[1], item[2]))
        if self._entries:
            self._newest_round = max(r for _, r, _ in self._entries)

    @property
    def horizon(self) -> int | None:
        """Oldest round still remembered; entries for older rounds are refused."""
        return None if self._newest_round is None else self._newest_round - self.keep_rounds + 1

    def __len__(self) -> int:
        return len(self._entries)

    def seen(self, kind: str, round: int, ident: bytes) -> bool:
        return (kind, round, bytes(ident)) in self._entries

    def add(self, kind: str, round: int, ident: bytes) -> bool:
        """Record an entry; True if it is new (and now persisted), False for a replay or a too-old round.

        Blocking (fsync) and thread-safe: trio callers run it with ``trio.to_thread.run_sync``.
        """
        with self._lock:
            return self._add((kind, round, bytes(ident)))

    def _add(self, entry: Entry) -> bool:
        round = entry[1]
        horizon = self.horizon
        if entry in self._entries or (horizon is not None and round < horizon):
            return False
        self._entries.add(entry)
        if self._newest_round is None or round > self._newest_round:
            self._newest_round = round
        self._prune()
        try:
            self._persist()
        except BaseException:
            # Not persisted: do not claim it, so memory and disk agree.
            self._entries.discard(entry)
            raise
        return True

    def _prune(self) -> None:
        horizon = self.horizon
        if horizon is not None:
            self._entries = {e for e in self._entries if e[1] >= horizon}
        if len(self._entries) > self.max_entries:
            keep = sorted(self._entries, key=lambda e: e[1], reverse=True)[: self.max_entries]
            self._entries = set(keep)

    def _persist(self) -> None:
        if self.path is None:
            return
        entries = sorted(([k, r, i] for k, r, i in self._entries), key=lambda e: (e[1], e[0], e[2]))
        atomic_write_bytes(self.path, pack({"v": 1, "entries": entries}), mode=0o600)
