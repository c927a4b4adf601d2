"""Distillation losses of Eq. 2: cross-entropy on re-tokenized teacher text, or temperature-scaled sparse KL.

The logit path receives only the teacher's top-k log-probabilities per
position; the remaining mass forms one extra "rest" bin. Both distributions
are compared over those k + 1 bins: the teacher's bins are tempered as
``softmax(log p / T)`` and the student's are read from ``softmax(z / T)``
(its top-k entries at the teacher's ids plus everything else as the rest).
The KL is scaled by ``T^2`` so its gradient size does not shrink with T
(Hinton et al. 2015).
"""

from __future__ import annotations

import torch

_TINY = 1e-6


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable near 0."""
    x = x.clamp(max=-_TINY)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def sparse_kl(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logp: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """Mean over positions of ``T^2 * KL(teacher || student)`` on top-k + rest bins.

    ``student_logits``: (N, V); ``topk_ids`` (N, k) long; ``topk_logp`` (N, k) teacher log-probs at T = 1.
    """
    t_logp = topk_logp.float()
    t_rest = _log1mexp(torch.logsumexp(t_logp, dim=-1, keepdim=True))
    teacher = torch.log_softmax(torch.cat([t_logp, t_rest], dim=-1) / temperature, dim=-1)
    s_all = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    s_top = s_all.gather(-1, topk_ids)
    s_rest = _log1mexp(torch.logsumexp(s_top, dim=-1, keepdim=True))
    student = torch.cat([s_top, s_rest], dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(-1)
    return kl.mean() * temperature * temperature
