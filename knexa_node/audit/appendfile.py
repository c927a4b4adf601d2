"""A crash-safe append-only file of checksummed frames (the I/O under the log and the checkpoint store).

- Creation writes the magic and the first frame atomically (temp file, fsync,
  rename, fsync of the directory): the file exists complete or not at all.
- Each append writes one whole frame with ``O_APPEND`` and returns only after
  ``fdatasync``. A failed write is rolled back by truncating to the old size;
  if even that fails the handle refuses further appends.
- One writer at a time: the writer holds an exclusive ``flock`` on
  ``<file>.lock`` for its lifetime, and an exclusive ``flock`` on the file
  itself during each append; readers take a shared ``flock`` on the file while
  they read it, so a reader never sees half an append as a torn tail.
- A torn tail (see :mod:`.framing`) makes :meth:`AppendFile.open` refuse with
  :class:`TornTailError` unless ``repair`` is true; repair moves the torn bytes
  to ``<file>.torn-<offset>`` and truncates, never dropping them silently.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from knexa_node.audit.errors import AuditError, LogLockedError, TornTailError
from knexa_node.audit.framing import MAGIC_SIZE, Scan, encode_frame, scan_frames
from knexa_node.fsutil import atomic_write_bytes, fsync_directory


def read_locked(path: Path) -> bytes:
    """The file's bytes, read under a shared lock so that no append is half-seen."""
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            try:
                return handle.read()
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    except FileNotFoundError:
        raise AuditError("missing", f"{path}: no such file") from None
    except IsADirectoryError:
        raise AuditError("missing", f"{path}: is a directory, not a log file") from None
    except OSError as exc:
        raise AuditError("io", f"{path}: cannot read: {exc.strerror}") from None


def torn_side_file(path: Path, offset: int) -> Path:
    return path.with_name(f"{path.name}.torn-{offset}")


class AppendFile:
    """The single writer of one append-only framed file."""

    def __init__(self, path: Path, fd: int, lock_fd: int, size: int) -> None:
        self.path = path
        self._fd = fd
        self._lock_fd = lock_fd
        self._size = size
        self._broken: str | None = None

    @classmethod
    def create(cls, path: Path, magic: bytes, first_payload: bytes | None) -> None:
        """Create ``path`` with its magic and first frame (if any); refuse if it exists."""
        path = Path(path)
        if path.exists():
            raise AuditError("exists", f"{path}: already exists")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(path, magic + (encode_frame(first_payload) if first_payload else b""), mode=0o600)

    @classmethod
    def open(cls, path: Path, magic: bytes, *, repair: bool = False) -> tuple["AppendFile", Scan]:
        """Become the writer of ``path``; return the handle and the scan of its frames.

        Raises :class:`LogLockedError` if another writer holds it,
        :class:`TornTailError` for a torn tail unless ``repair``, and
        :class:`AuditError` for any other damage (never repaired automatically).
        """
        path = Path(path)
        lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise LogLockedError(f"{path}: another process is writing this file (is the daemon running?)") from None
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            os.close(lock_fd)
            raise AuditError("missing", f"{path}: no such file") from None
        except OSError as exc:
            os.close(lock_fd)
            raise AuditError("io", f"{path}: cannot open: {exc.strerror}") from None
        try:
            scan = scan_frames(_read_all(fd), magic)
            if scan.problem is not None:
                problem = scan.problem
                if problem.reason != "torn-tail":
                    raise AuditError(problem.reason, f"{path}: damaged at byte {problem.offset}: {problem.detail}; "
                                     "run `knexa-node audit verify` on it, and move it aside to start a new log")
                torn = scan.size - scan.end
                if not repair or scan.end < MAGIC_SIZE:
                    raise TornTailError(
                        f"{path}: ends with an incomplete record of {torn} bytes at byte {scan.end} "
                        f"({problem.detail}), most likely from a crash during an append; "
                        "run `knexa-node audit repair` to keep those bytes aside and continue the log",
                        offset=scan.end, torn_bytes=torn)
                # The returned scan still describes the torn tail, so the caller can record the repair.
                _repair(path, fd, scan.end, scan.size)
        except BaseException:
            os.close(fd)
            os.close(lock_fd)
            raise
        return cls(path, fd, lock_fd, scan.end), scan

    def append(self, payload: bytes) -> int:
        """Append one frame durably; return its offset."""
        if self._broken:
            raise AuditError("broken", f"{self.path}: {self._broken}; reopen the log")
        if self._fd < 0:
            raise AuditError("closed", f"{self.path}: closed")
        frame = encode_frame(payload)
        offset = self._size
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            try:
                _write_all(self._fd, frame)
                os.fdatasync(self._fd)
            except OSError as exc:
                self._roll_back(offset, exc)
                raise AuditError("io", f"{self.path}: append failed and was rolled back: {exc.strerror}") from None
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._size = offset + len(frame)
        return offset

    def _roll_back(self, offset: int, cause: OSError) -> None:
        try:
            os.ftruncate(self._fd, offset)
            os.fsync(self._fd)
        except OSError:
            self._broken = f"a failed append ({cause.strerror}) could not be rolled back"

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            os.close(self._lock_fd)
            self._fd = self._lock_fd = -1


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _repair(path: Path, fd: int, end: int, size: int) -> None:
    torn = os.pread(fd, size - end, end)
    atomic_write_bytes(torn_side_file(path, end), torn, mode=0o600)
    os.ftruncate(fd, end)
    os.fsync(fd)
    fsync_directory(path.parent)
