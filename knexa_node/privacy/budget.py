"""The node's differential-privacy budget: epsilon spent per peer and in total, persisted atomically.

Each exchange with DP releases one package that is (epsilon, delta)-DP on its
own (:mod:`.dp`). Releases compose: this ledger uses basic composition (the
epsilons add, the deltas add), which is always valid and easy to audit; a
tighter accountant (PLD over all releases) would let a node spend less per
release for the same total, at the cost of a ledger nobody can check by hand.

The budget is checked before any model work and spent right before the
package leaves (after it is built, before the header is sent), so a failure
after that still counts: a partly sent noisy package may have been observed.

File (``<home>/state/privacy_budget.json``)::

    {"v": 1, "total": {"epsilon": e, "delta": d}, "peers": {"<peer id>": {"epsilon": e, "delta": d, "releases": n}}}
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path

from knexa_node.fsutil import atomic_write_text

BUDGET_FILE = "privacy_budget.json"
_TOLERANCE = 1e-9  # float sums of configured epsilons must not refuse the last exact fit


class BudgetError(Exception):
    """The budget file is unreadable or malformed."""


class BudgetExceeded(Exception):
    """Spending would exceed a configured budget; ``str()`` says which and by how much."""


@dataclass
class PeerSpend:
    epsilon: float = 0.0
    delta: float = 0.0
    releases: int = 0


class PrivacyBudget:
    """Spent epsilon against ``total`` and ``per_peer`` limits; ``path`` None keeps it in memory."""

    def __init__(self, path: Path | None, *, total: float, per_peer: float) -> None:
        if not (math.isfinite(total) and math.isfinite(per_peer)) or total < 0 or per_peer < 0:
            raise ValueError("budgets must be finite and non-negative")
        self.path = Path(path) if path is not None else None
        self.total_limit = total
        self.per_peer_limit = per_peer
        self.total = PeerSpend()
        self.peers: dict[str, PeerSpend] = {}
        # spend() runs in worker threads (its fsync stays off the trio thread): check and record as one step.
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            self._load(self.path)

    @classmethod
    def in_state_dir(cls, state_dir: Path, *, total: float, per_peer: float) -> "PrivacyBudget":
        return cls(Path(state_dir) / BUDGET_FILE, total=total, per_peer=per_peer)

    def spent_by(self, peer: str) -> float:
        return self.peers.get(peer, PeerSpend()).epsilon

    def remaining(self, peer: str) -> float:
        """epsilon that one more release to ``peer`` may still spend."""
        return max(0.0, min(self.total_limit - self.total.epsilon, self.per_peer_limit - self.spent_by(peer)))

    def check(self, peer: str, epsilon: float) -> None:
        """Raise :class:`BudgetExceeded` if releasing ``epsilon`` to ``peer`` would overspend."""
        if not math.isfinite(epsilon) or epsilon < 0:
            raise BudgetExceeded(f"invalid epsilon {epsilon!r}")
        if self.total.epsilon + epsilon > self.total_limit + _TOLERANCE:
            raise BudgetExceeded(
                f"total privacy budget exhausted: spent epsilon {self.total.epsilon:.4g} + {epsilon:.4g} > {self.total_limit:.4g}"
            )
        spent = self.spent_by(peer)
        if spent + epsilon > self.per_peer_limit + _TOLERANCE:
            raise BudgetExceeded(
                f"per-peer privacy budget exhausted for {peer}: spent epsilon {spent:.4g} + {epsilon:.4g} > {self.per_peer_limit:.4g}"
            )

    def spend(self, peer: str, epsilon: float, delta: float) -> None:
        """Check, record and persist one release; on any error nothing is recorded.

        Blocking (fsync) and thread-safe: trio callers run it with ``trio.to_thread.run_sync``.
        """
        with self._lock:
            self._spend(peer, epsilon, delta)

    def _spend(self, peer: str, epsilon: float, delta: float) -> None:
        self.check(peer, epsilon)
        before_total = PeerSpend(**vars(self.total))
        before_peer = self.peers.get(peer)
        entry = self.peers.setdefault(peer, PeerSpend())
        entry.epsilon += epsilon
        entry.delta += delta
        entry.releases += 1
        self.total.epsilon += epsilon
        self.total.delta += delta
        self.total.releases += 1
        try:
            self._persist()
        except BaseException:
            self.total = before_total
            if before_peer is None:
                self.peers.pop(peer, None)
            else:
                entry.epsilon -= epsilon
                entry.delta -= delta
                entry.releases -= 1
            raise

    def snapshot(self) -> dict:
        """What ``knexa-node status`` shows: spent and limits, total and per peer."""
        return {
            "total": {"epsilon": self.total.epsilon, "delta": self.total.delta, "releases": self.total.releases, "limit": self.total_limit},
            "per_peer_limit": self.per_peer_limit,
            "peers": {p: vars(s).copy() for p, s in sorted(self.peers.items())},
        }

    def _load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BudgetError(f"{path}: cannot read privacy budget: {exc}") from None
        try:
            if raw["v"] != 1:
                raise ValueError("unsupported version")
            self.total = _spend_from(raw["total"])
            self.peers = {str(p): _spend_from(s) for p, s in raw["peers"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BudgetError(f"{path}: malformed privacy budget: {exc}") from None

    def _persist(self) -> None:
        if self.path is None:
            return
        data = {"v": 1, "total": vars(self.total), "peers": {p: vars(s) for p, s in sorted(self.peers.items())}}
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n", mode=0o600)


def _spend_from(raw: dict) -> PeerSpend:
    eps, delta, n = float(raw["epsilon"]), float(raw["delta"]), raw.get("releases", 0)
    if not (math.isfinite(eps) and math.isfinite(delta)) or eps < 0 or delta < 0 or not isinstance(n, int) or n < 0:
        raise ValueError("spent values must be finite and non-negative")
    return PeerSpend(eps, delta, n)
