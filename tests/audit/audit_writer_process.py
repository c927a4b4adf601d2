"""Child process for the crash test: append to a log forever, printing every 25th durable seq."""

from __future__ import annotations

import sys
from pathlib import Path

from knexa_node.audit import AuditLog, Event
from knexa_node.crypto import Signer


def main() -> None:
    path, seed = Path(sys.argv[1]), bytes.fromhex(sys.argv[2])
    with AuditLog.open(path, Signer(seed), repair=True) as log:
        while True:
            entry = log.append(Event(kind="distillation", round=0, metrics={"pad": "x" * 200}))
            if entry.seq % 25 == 0:
                print(entry.seq, flush=True)


if __name__ == "__main__":
    main()
