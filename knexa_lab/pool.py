"""One job per task in fresh one-thread processes, all cores busy; results as they end.

Used by a study (its warm-ups and runs) and by the demo's ``--compare`` (its
warm-ups). ``spawn``: a fresh interpreter per task, no torch state shared;
one OpenMP thread each (:data:`knexa_lab.orchestrate.CHILD_ENV`), so that
``workers`` processes use ``workers`` cores and no more.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Any, Callable, Iterator, Sequence

from knexa_lab.orchestrate import CHILD_ENV


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: only the parent answers it (and ends the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def each(job: Callable[[Any], Any], tasks: Sequence[Any], workers: int) -> Iterator[Any]:
    """``job(task)`` for every task, here (``workers`` <= 1) or in ``workers`` processes, in the order they end."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(job, tasks)
        return
    os.environ.update(CHILD_ENV)  # inherited by the workers
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(tasks)), initializer=_worker_init, maxtasksperchild=1) as pool:
        yield from pool.imap_unordered(job, tasks)


def one_line_error(exc: BaseException) -> str:
    """An exception as one short line for a task's result entry (the first line, at most 300 characters)."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
