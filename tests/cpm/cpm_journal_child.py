"""Child process for the kill -9 test: records feedback forever, printing each acknowledged sequence number.

Also imported by the test for :func:`stream`, the deterministic feedback sequence.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from knexa_cpm.features import knexa_dim
from knexa_cpm.policies import Pairing, make_policy
from knexa_cpm.state import PolicyStore

OPTIONS = {"lam": 1.0, "beta0": 0.5}


def stream(i: int) -> tuple[Pairing, float]:
    """The i-th feedback (1-based), the same in every process."""
    rng = np.random.default_rng(i)
    teacher, student = rng.choice(50, size=2, replace=False)
    pairing = Pairing(f"agent-{teacher}", f"agent-{student}", "text", rng.normal(size=knexa_dim(True)), i // 5, 0.0)
    return pairing, float(rng.normal())


def main(directory: str, checkpoint_every: int) -> None:
    store = PolicyStore.open(Path(directory), make_policy("knexa", **OPTIONS))
    i = store.seq
    while True:
        i += 1
        pairing, reward = stream(i)
        seq = store.record_feedback(pairing, reward, meta={"nonce": i})
        sys.stdout.write(f"{seq}\n")
        sys.stdout.flush()
        if seq % checkpoint_every == 0:
            store.checkpoint(extra={"round": seq // 5})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
