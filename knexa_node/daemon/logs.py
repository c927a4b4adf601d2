"""Structured event lines: one per event, human-readable or JSON (``--log-format``).

Events go to stderr; the ready line (and the join line) go to stdout, so a
script reads stdout to learn that the daemon listens instead of matching logs.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

FORMATS = ("human", "json")


class EventLog:
    def __init__(self, fmt: str = "human", *, out: TextIO | None = None, err: TextIO | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"log format must be one of {', '.join(FORMATS)}; got {fmt!r}")
        self.fmt = fmt
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def event(self, name: str, **fields: Any) -> None:
        self._write(self.err, name, fields)

    def ready(self, peer_id: str, addrs: list[str], **fields: Any) -> None:
        join = f"--bootstrap {addrs[0]}" if addrs else ""
        if self.fmt == "json":
            self._write(self.out, "ready", {"peer_id": peer_id, "addrs": addrs, "join": join, **fields})
        else:
            self._write(self.out, "ready", {"peer_id": peer_id, "addrs": addrs, **fields})
            if join:
                self.out.write(f"join this network with: {join}\n")
                self.out.flush()

    def _write(self, stream: TextIO, name: str, fields: dict[str, Any]) -> None:
        now = time.time()
        if self.fmt == "json":
            line = json.dumps({"ts": round(now, 3), "event": name, **fields}, default=str, sort_keys=False)
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
            parts = " ".join(f"{k}={_human(v)}" for k, v in fields.items())
            line = f"{stamp} {name}" + (f" {parts}" if parts else "")
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed terminal must not stop the daemon


def _human(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text
