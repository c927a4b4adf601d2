"""What a node enforces in every exchange, taken from its config once.

The session state machines and drivers read only this object, so tests and
the daemon configure them the same way (:meth:`ExchangePolicy.from_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from knexa_node.config import Config
from knexa_node.exchange.membership import Membership
from knexa_node.exchange.proposals import DEFAULT_CLOCK_SKEW_S


@dataclass(frozen=True)
class ExchangePolicy:
    cpm: str  # peer ID whose signature makes a proposal valid ("" refuses every proposal)
    membership: Membership = field(default_factory=lambda: Membership(frozenset()))
    max_package_bytes: int = 256 * 1024 * 1024  # sealed bytes a student accepts
    timeout_s: float = 600.0  # whole exchange, either side
    dp_enabled: bool = False
    dp_epsilon: float = 0.0  # what one package may spend (checked against the budget before building)
    dp_delta: float = 0.0
    clock_skew_s: float = DEFAULT_CLOCK_SKEW_S

    @classmethod
    def from_config(cls, config: Config) -> "ExchangePolicy":
        privacy = config.privacy
        return cls(
            cpm=config.consortium.cpm,
            membership=Membership.from_peer_ids(config.consortium.members),
            max_package_bytes=int(config.exchange.max_package_mb * 1024 * 1024),
            timeout_s=config.exchange.timeout_s,
            dp_enabled=privacy.dp_enabled,
            dp_epsilon=privacy.dp_epsilon_per_exchange if privacy.dp_enabled else 0.0,
            dp_delta=privacy.dp_delta if privacy.dp_enabled else 0.0,
        )
