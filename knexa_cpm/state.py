"""Crash-safe persistence of a matchmaking policy: atomic snapshot + checksummed feedback journal.

A :class:`PolicyStore` owns one policy and one directory::

    snapshot.bin   MAGIC | crc32 | length | msgpack{version, policy, config, seq, state, extra}
    journal.bin    MAGIC | record* ;  record = length u32 | crc32 u32 | msgpack{seq, pairing, reward, meta}
    lock           flock'ed while the store is open (a second opener gets StateError)

The contract a service relies on:

- :meth:`PolicyStore.record_feedback` validates the feedback, appends it to
  the journal, ``fsync``s, and only then applies it to the policy and
  returns its sequence number. Once it has returned, the feedback is
  *acknowledged*: ``kill -9`` at any later moment cannot lose it.
- :meth:`PolicyStore.checkpoint` writes the whole policy state atomically
  (``knexa_node.fsutil``) with the last sequence number it contains, then
  starts an empty journal. A crash between the two is harmless: journal
  records already in the snapshot are skipped by sequence number.
- :meth:`PolicyStore.open` loads the snapshot and replays the journal
  through ``policy.feedback`` (deterministic, so the state is rebuilt
  exactly). A torn last record (a crash in the middle of an append, which
  was therefore never acknowledged) is cut off and counted in
  ``torn_bytes``. Anything else wrong (bad magic, checksum mismatch before
  the end, a sequence gap, a snapshot for another policy or configuration)
  raises :class:`StateCorruptError` / :class:`StateMismatchError`: state is
  never silently reset.

``meta`` (a small msgpack-able dict per feedback, e.g. proposal id and nonce)
and ``extra`` (per snapshot) carry the service's own state; after
:meth:`open`, ``store.extra`` and ``store.replayed`` give them back. One
key of ``meta`` is applied too, in order with its feedback (so a replay
rebuilds it): ``claims_failed`` > 0 goes to the policy's ``failed_claims``
(trust evidence against the teacher), where the policy has one.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from knexa_cpm.policies import Pairing, Policy, PolicyError
from knexa_node.fsutil import atomic_write_bytes, fsync_directory

SNAPSHOT_MAGIC = b"KXCPMS1\n"
JOURNAL_MAGIC = b"KXCPMJ1\n"
FORMAT_VERSION = 1
MAX_RECORD = 1 << 20
_HEADER = struct.Struct(">II")
_SNAP_HEADER = struct.Struct(">IQ")
_ND_EXT = 1


class StateError(Exception):
    """The state directory cannot be used (locked, unreadable)."""


class StateCorruptError(StateError):
    """A state file is damaged; it needs a human (restore a backup), never a silent reset."""


class StateMismatchError(StateError):
    """The stored state belongs to another policy or configuration."""


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(_ND_EXT, msgpack.packb([obj.dtype.str, list(obj.shape), obj.tobytes()]))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot persist {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _ND_EXT:
        raise ValueError(f"unknown extension type {code}")
    dtype, shape, raw = msgpack.unpackb(data, raw=False)
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()


def pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def _normalize(value: Any) -> Any:
    """What ``value`` looks like after a pack/unpack round trip (tuples become lists)."""
    return unpack(pack(value))


def _same_state_config(stored: Any, current: dict[str, Any], policy: Policy) -> bool:
    """Whether a snapshot's configuration fits ``policy``: equal but for the options that only weigh scores.

    A policy lists those in ``SCORING_OPTIONS`` (e.g. knexa's prior weight): they shape no learned state,
    so a CPM restarted with another value (or upgraded to another default) keeps what it learned.
    """
    if not isinstance(stored, dict):
        return False
    free = set(getattr(policy, "SCORING_OPTIONS", ()))
    return {k: v for k, v in stored.items() if k not in free} == {k: v for k, v in current.items() if k not in free}


@dataclass
class JournalEntry:
    seq: int
    pairing: Pairing
    reward: float
    meta: dict[str, Any] = field(default_factory=dict)


def encode_record(entry: JournalEntry) -> bytes:
    p = entry.pairing
    payload = pack({
        "seq": entry.seq, "teacher": p.teacher, "student": p.student, "protocol": p.protocol,
        "context": np.asarray(p.context, dtype=np.float64), "round": p.round, "score": p.score,
        "reward": float(entry.reward), "meta": entry.meta,
    })
    if len(payload) > MAX_RECORD:
        raise StateError(f"journal record of {len(payload)} bytes exceeds {MAX_RECORD}")
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _decode_payload(payload: bytes) -> JournalEntry:
    d = unpack(payload)
    pairing = Pairing(str(d["teacher"]), str(d["student"]), str(d["protocol"]), np.asarray(d["context"]),
                      int(d["round"]), float(d["score"]))
    return JournalEntry(int(d["seq"]), pairing, float(d["reward"]), dict(d["meta"]))


def read_journal(data: bytes) -> tuple[list[JournalEntry], int]:
    """Parse a journal; returns (entries, length of the good prefix). Raises on mid-file damage."""
    if not data.startswith(JOURNAL_MAGIC):
        if JOURNAL_MAGIC.startswith(data):
            return [], 0  # torn while the header itself was written
        raise StateCorruptError("journal.bin: bad magic (not a knexa CPM journal)")
    offset = len(JOURNAL_MAGIC)
    entries: list[JournalEntry] = []
    while offset < len(data):
        problem = None
        end = offset + _HEADER.size
        if end > len(data):
            problem = "torn"
        else:
            length, crc = _HEADER.unpack_from(data, offset)
            end += length
            if length == 0 or length > MAX_RECORD:
                problem = f"bad record length {length}"
            elif end > len(data):
                problem = "torn"
            elif zlib.crc32(data[offset + _HEADER.size:end]) != crc:
                problem = "checksum mismatch"
        if problem is not None:
            # A crash mid-append leaves an incomplete last record, or (on some
            # file systems) a zero-filled tail; nothing after it was ever written.
            tail = data[offset:]
            if problem == "torn" or end == len(data) or not tail.strip(b"\0"):
                return entries, offset
            raise StateCorruptError(f"journal.bin: {problem} at byte {offset}, with data after it")
        try:
            entry = _decode_payload(data[offset + _HEADER.size:end])
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise StateCorruptError(f"journal.bin: undecodable record at byte {offset}: {exc}") from None
        if entries and entry.seq != entries[-1].seq + 1:
            raise StateCorruptError(f"journal.bin: sequence jumps from {entries[-1].seq} to {entry.seq}")
        entries.append(entry)
        offset = end
    return entries, offset


def encode_snapshot(payload: dict[str, Any]) -> bytes:
    body = pack(payload)
    return SNAPSHOT_MAGIC + _SNAP_HEADER.pack(zlib.crc32(body), len(body)) + body


def decode_snapshot(data: bytes) -> dict[str, Any]:
    head = len(SNAPSHOT_MAGIC) + _SNAP_HEADER.size
    if not data.startswith(SNAPSHOT_MAGIC) or len(data) < head:
        raise StateCorruptError("snapshot.bin: bad magic or truncated header")
    crc, length = _SNAP_HEADER.unpack_from(data, len(SNAPSHOT_MAGIC))
    body = data[head:]
    if len(body) != length or zlib.crc32(body) != crc:
        raise StateCorruptError("snapshot.bin: length or checksum mismatch")
    try:
        payload = unpack(body)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StateCorruptError(f"snapshot.bin: undecodable: {exc}") from None
    if not isinstance(payload, dict) or payload.get("version") != FORMAT_VERSION:
        raise StateCorruptError("snapshot.bin: unknown format version")
    return payload


class PolicyStore:
    """A policy plus its durable state directory. Use :meth:`open`; one process at a time."""

    def __init__(self, directory: Path, policy: Policy) -> None:
        self.directory = Path(directory)
        self.policy = policy
        self.seq = 0
        self.snapshot_seq = 0
        self.extra: dict[str, Any] = {}
        self.replayed: list[JournalEntry] = []
        self.torn_bytes = 0
        self._journal_fd: int | None = None
        self._lock_fd: int | None = None

    @property
    def snapshot_path(self) -> Path:
        return self.directory / "snapshot.bin"

    @property
    def journal_path(self) -> Path:
        return self.directory / "journal.bin"

    @classmethod
    def open(cls, directory: Path, policy: Policy) -> "PolicyStore":
        """Open (or create) the state in ``directory`` and bring ``policy`` up to date."""
        store = cls(directory, policy)
        try:
            store._open()
        except BaseException:
            store.close()
            raise
        return store

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot use state directory {self.directory}: {exc}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(f"state directory {self.directory} is in use by another process") from None
        config = _normalize(self.policy.config())
        if self.snapshot_path.exists():
            snap = decode_snapshot(self.snapshot_path.read_bytes())
            if snap.get("policy") != self.policy.name or not _same_state_config(snap.get("config"), config, self.policy):
                raise StateMismatchError(
                    f"state in {self.directory} is for policy {snap.get('policy')!r} with config "
                    f"{snap.get('config')}, not {self.policy.name!r} with {config}"
                )
            try:
                self.policy.load_state_dict(snap["state"])
            except (PolicyError, KeyError, TypeError, ValueError) as exc:
                raise StateCorruptError(f"snapshot.bin: state does not fit the policy: {exc}") from None
            self.seq = self.snapshot_seq = int(snap["seq"])
            self.extra = dict(snap.get("extra") or {})
        elif self.journal_path.exists() and self.journal_path.stat().st_size > len(JOURNAL_MAGIC):
            raise StateCorruptError("journal.bin exists but snapshot.bin is missing")
        else:
            self._write_snapshot()
        self._replay()

    def _replay(self) -> None:
        data = self.journal_path.read_bytes() if self.journal_path.exists() else b""
        entries, good = read_journal(data)
        for entry in entries:
            if entry.seq <= self.snapshot_seq:
                continue  # already in the snapshot (crash between snapshot and journal reset)
            if entry.seq != self.seq + 1:
                raise StateCorruptError(f"journal.bin: expected sequence {self.seq + 1}, found {entry.seq}")
            try:
                self._apply(entry.pairing, entry.reward, entry.meta)
            except PolicyError as exc:
                raise StateCorruptError(f"journal.bin: record {entry.seq} does not apply: {exc}") from None
            self.seq = entry.seq
            self.replayed.append(entry)
        if good < len(JOURNAL_MAGIC):
            self._reset_journal()
        else:
            self.torn_bytes = len(data) - good
            self._journal_fd = os.open(self.journal_path, os.O_WRONLY)
            if self.torn_bytes:
                os.ftruncate(self._journal_fd, good)
                os.fsync(self._journal_fd)
            os.lseek(self._journal_fd, 0, os.SEEK_END)

    def _write_snapshot(self) -> None:
        payload = {
            "version": FORMAT_VERSION, "policy": self.policy.name, "config": self.policy.config(),
            "seq": self.seq, "state": self.policy.state_dict(), "extra": self.extra,
        }
        atomic_write_bytes(self.snapshot_path, encode_snapshot(payload), mode=0o600)
        self.snapshot_seq = self.seq

    def _reset_journal(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        atomic_write_bytes(self.journal_path, JOURNAL_MAGIC, mode=0o600)
        self._journal_fd = os.open(self.journal_path, os.O_WRONLY)
        os.lseek(self._journal_fd, 0, os.SEEK_END)

    def record_feedback(self, pairing: Pairing, reward: float, meta: dict[str, Any] | None = None) -> int:
        """Validate, journal durably, then apply one feedback; returns its sequence number.

        Raises :class:`PolicyError` (nothing written) for a feedback the policy refuses.
        """
        if self._journal_fd is None:
            raise StateError("store is closed")
        self.policy.validate_feedback(pairing, reward)
        entry = JournalEntry(self.seq + 1, pairing, float(reward), dict(meta or {}))
        record = encode_record(entry)
        view = memoryview(record)
        while view:
            written = os.write(self._journal_fd, view)
            view = view[written:]
        os.fsync(self._journal_fd)
        self._apply(pairing, reward, entry.meta)
        self.seq = entry.seq
        return entry.seq

    def _apply(self, pairing: Pairing, reward: float, meta: dict[str, Any]) -> None:
        """One feedback into the policy; verified claims that failed at the student count against the teacher."""
        self.policy.feedback(pairing, reward)
        claims = meta.get("claims_failed", 0)
        failed_claims = getattr(self.policy, "failed_claims", None)
        if isinstance(claims, int) and not isinstance(claims, bool) and claims > 0 and failed_claims is not None:
            failed_claims(pairing, claims)

    def checkpoint(self, extra: dict[str, Any] | None = None) -> None:
        """Snapshot the policy (and the caller's ``extra``) atomically, then empty the journal."""
        if self._journal_fd is None:
            raise StateError("store is closed")
        if extra is not None:
            self.extra = dict(extra)
        self._write_snapshot()
        self._reset_journal()
        fsync_directory(self.directory)

    def close(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "PolicyStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
