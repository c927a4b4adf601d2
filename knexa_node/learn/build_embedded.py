"""``python -m knexa_node.learn.build_embedded NAME...``: build embedded models into the cache ahead of time.

The demo runs this once before starting its daemons, so that N nodes do not
all build the same model, and so that the orchestrator itself never imports torch.
"""

from __future__ import annotations

import sys

from knexa_node.learn.embedded import EMBEDDED, ModelPathError, ensure_embedded


def main(argv: list[str]) -> int:
    names = argv or sorted(EMBEDDED)
    for name in names:
        try:
            print(ensure_embedded(name))
        except ModelPathError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
