"""Round schedules of Eq. 2 (alpha_kd, temperature), the warm-up learning rate, and Eq. 3's reward. Pure."""

from __future__ import annotations


def linear_schedule(start: float, end: float, round_index: int, total_rounds: int) -> float:
    """``start`` at round 0, ``end`` at round ``total_rounds - 1`` and after (paper: 0.2 -> 0.5, 1.5 -> 2.5)."""
    if total_rounds <= 1:
        return end
    fraction = min(max(round_index, 0), total_rounds - 1) / (total_rounds - 1)
    return start + (end - start) * fraction


def warmup_factor(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Linear warm-up over the first ``warmup_fraction`` of the steps, then 1."""
    warmup = int(total_steps * warmup_fraction)
    if warmup <= 0 or step >= warmup:
        return 1.0
    return (step + 1) / (warmup + 1)


def eq3_reward(loss_pre: float, loss_post: float, package_bytes: int, *, gamma: float, delta_per_kb: float) -> float:
    """Eq. 3: ``r = gamma * (L_pre - L_post) - delta * KB``."""
    return gamma * (loss_pre - loss_post) - delta_per_kb * (package_bytes / 1024.0)
