"""``python -m knexa_node.learn.build_embedded NAME...``: build or import models into the cache ahead of time.

Each NAME is an embedded model's name (``llama-tiny``) or a prefixed model
path (``embedded:llama-tiny``, ``pretrained:smollm2-135m``). The demo runs
this once before starting its daemons, so that N nodes do not all build or
import the same model, and so that the orchestrator itself never imports torch.
"""

from __future__ import annotations

import sys

from knexa_node.learn.embedded import EMBEDDED, resolve_model_path
from knexa_node.models import EMBEDDED_PREFIX, PRETRAINED_PREFIX, ModelPathError


def main(argv: list[str]) -> int:
    names = argv or sorted(EMBEDDED)
    for name in names:
        path = name if name.startswith((EMBEDDED_PREFIX, PRETRAINED_PREFIX)) else EMBEDDED_PREFIX + name
        try:
            print(resolve_model_path(path))
        except ModelPathError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
