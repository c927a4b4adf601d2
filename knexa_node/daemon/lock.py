"""One daemon per home: an ``flock`` on ``daemon.lock``.

The kernel drops an flock when its process dies, so a lock left behind by
``kill -9`` never blocks a restart (unlike a PID file checked by existence).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


class LockError(Exception):
    """Another daemon holds the home, or the lock file cannot be opened."""


class DaemonLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LockError(f"{self.path}: cannot open lock file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise LockError(f"another daemon (pid {holder}) is already running on {self.path.parent}; "
                                f"stop it first (knexa-node stop --home {self.path.parent})") from None
            raise LockError(f"{self.path}: cannot lock: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (harmless, reused)
            self._fd = None

    def __enter__(self) -> "DaemonLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
