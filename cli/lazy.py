"""Load a heavy module only when the command that needs it runs.

The command line is a thin client: ``knexa-node status`` must answer in a
fraction of a second, and importing libp2p, torch or matplotlib costs seconds.
Commands that need them reach them through :func:`load`; this and the node's
model load (``knexa_node.daemon.learner.learning_engine``, which imports torch
after the ready line) are the places in the project where imports are
deferred, on purpose.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def load(module: str) -> ModuleType:
    return importlib.import_module(module)
