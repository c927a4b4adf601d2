"""Context features for a directed (teacher -> student) pairing, built from two profiles.

Pure numpy, vectorized: every function takes the stacked profile matrix
``P`` (n_agents x 32, layout of :mod:`knexa_node.profile`) and index arrays
``t`` (teachers) and ``s`` (students) of equal length, and returns one row
per candidate pairing.

- :func:`concat_features` is the paper's context ``[p_teacher, p_student]``
  (64 dims). A linear score on it is additive, ``f(teacher) + g(student)``:
  it can learn who teaches well and who learns well, never who suits whom.
- :func:`knexa_features` (``KNEXA_DIM`` = 32 dims) is ours: interaction
  features that express compatibility — how much of the student's missing
  data the teacher covers, JS divergence of the histograms, the performance
  gap and its direction, capacity mismatch, same family, the protocol, the
  teacher's trust, and products of these, so that a *linear* bandit on them
  can represent pairwise synergy. Optionally the raw profiles are appended
  (``raw=True``), which keeps the additive part the paper's model can learn.
- :func:`competence_features` (``COMPETENCE_DIM`` dims): "teacher strong where
  the student is weak" from each node's per-category Pass@1 on the public dev
  set (sent beside the 32-dim profile, which keeps the paper's layout), and the
  pair's history (how often and how recently this teacher taught this
  student). Zero where a node sent no competence and for a new pair.
"""

from __future__ import annotations

import numpy as np

from knexa_node.profile import FAMILY_SLICE, HISTOGRAM_SLICE, METRIC_SLICE, METRICS, PROFILE_DIM, WEAK_PASS1

_EPS = 1e-12

CONCAT_DIM = 2 * PROFILE_DIM

KNEXA_FEATURES: tuple[str, ...] = (
    "bias", "coverage", "js", "weak_cover", "pass_t", "pass_s", "gap", "gap_pos",
    "dev_t", "dev_s", "cap_t", "cap_s", "cap_mismatch", "same_family", "logits", "cov_x_gap",
    "cov_x_same", "cov_x_pass_t", "js_x_gap", "dpass_s", "dpass_t", "trust_t", "cov_x_capmis", "pass_t_x_need",
) + tuple(f"cross_family_t_{k}" for k in range(FAMILY_SLICE.stop - FAMILY_SLICE.start))
KNEXA_DIM = len(KNEXA_FEATURES)


def _col(name: str, *, delta: bool = False) -> int:
    return METRIC_SLICE.start + 2 * METRICS.index(name) + (1 if delta else 0)


PASS1, PASS1_DELTA = _col("pass1"), _col("pass1", delta=True)
DEV_LOSS, CAPACITY = _col("dev_loss"), _col("capacity")


def js_divergence(H1: np.ndarray, H2: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (natural log, in [0, ln 2]) between matching rows."""
    H1 = np.asarray(H1, dtype=np.float64)
    H2 = np.asarray(H2, dtype=np.float64)
    M = 0.5 * (H1 + H2)

    def kl(P: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(P > 0, P * np.log((P + _EPS) / (M + _EPS)), 0.0)
        return terms.sum(axis=-1)

    return np.maximum(0.5 * kl(H1) + 0.5 * kl(H2), 0.0)


def pair_js(P: np.ndarray, t: np.ndarray, s: np.ndarray) -> np.ndarray:
    return js_divergence(P[t, HISTOGRAM_SLICE], P[s, HISTOGRAM_SLICE])


def concat_features(P: np.ndarray, t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The paper's context ``x = [p_teacher, p_student]``."""
    return np.concatenate([P[t], P[s]], axis=1)


def knexa_features(
    P: np.ndarray,
    t: np.ndarray,
    s: np.ndarray,
    *,
    logits: np.ndarray | None = None,
    trust: np.ndarray | None = None,
    raw: bool = False,
) -> np.ndarray:
    """Interaction features of each directed pair ``t[k] -> s[k]``.

    ``logits`` flags pairings that use the logits protocol; ``trust`` is the
    teacher's trust score per agent (indexed like ``P``), 1.0 when absent.
    """
    n = len(t)
    Ht, Hs = P[t, HISTOGRAM_SLICE], P[s, HISTOGRAM_SLICE]
    Ft, Fs = P[t, FAMILY_SLICE], P[s, FAMILY_SLICE]
    coverage = np.maximum(Ht - Hs, 0.0).sum(axis=1)
    js = js_divergence(Ht, Hs)
    # Teacher data mass on categories the student has almost no data for.
    weak_cover = (Ht * (Hs < 0.5 / Hs.shape[1])).sum(axis=1)
    pass_t, pass_s = P[t, PASS1], P[s, PASS1]
    gap = pass_t - pass_s
    gap_pos = np.maximum(gap, 0.0)
    cap_t, cap_s = P[t, CAPACITY], P[s, CAPACITY]
    # Capacity is log10(params)/12; x12 puts the mismatch in decades of parameters.
    cap_mismatch = 12.0 * np.abs(cap_t - cap_s)
    same = (Ft * Fs).sum(axis=1)
    logit_flag = np.zeros(n) if logits is None else np.asarray(logits, dtype=np.float64)
    trust_t = np.ones(n) if trust is None else np.asarray(trust, dtype=np.float64)[t]
    columns = [
        np.ones(n), coverage, js, weak_cover, pass_t, pass_s, gap, gap_pos,
        P[t, DEV_LOSS], P[s, DEV_LOSS], cap_t, cap_s, cap_mismatch, same, logit_flag, coverage * gap_pos,
        coverage * same, coverage * pass_t, js * gap_pos, P[s, PASS1_DELTA], P[t, PASS1_DELTA], trust_t,
        coverage * cap_mismatch, pass_t * (1.0 - pass_s),
    ]
    X = np.concatenate([np.stack(columns, axis=1), Ft * (1.0 - same)[:, None]], axis=1)
    if raw:
        X = np.concatenate([X, P[t], P[s]], axis=1)
    return X


def knexa_dim(raw: bool) -> int:
    return KNEXA_DIM + (CONCAT_DIM if raw else 0)


COMPETENCE_FEATURES: tuple[str, ...] = ("teach_need", "teach_need_max", "comp_t", "comp_s", "pair_count",
                                        "pair_recent", "teach_need_fresh")
COMPETENCE_DIM = len(COMPETENCE_FEATURES)
REPEAT_DISCOUNT = 0.25  # teach_need_fresh kept per earlier exchange of the same (teacher, student)


def allotment(unheld: np.ndarray, asked: np.ndarray, budget: float = 0.0) -> np.ndarray:
    """Share of each category's transfer prompts a package answers, rows of categories.

    The teacher takes the asked categories in turn (round-robin,
    :func:`knexa_node.learn.targeting.select_prompts`), skipping the prompts the
    student holds: category c offers ``unheld[c]`` (a share of its prompts), and
    ``budget`` (in categories' worth of prompts: the item budget divided by the
    transfer prompts per category; 0 or less: no cap) is water-filled over the
    asked ones, so each gets ``min(unheld[c], level)``.
    """
    capacity = np.where(asked, np.clip(unheld, 0.0, 1.0), 0.0)
    if budget <= 0:
        return capacity
    flat = np.atleast_2d(capacity)
    k = flat.shape[1]
    ordered = np.sort(flat, axis=1)
    before = np.cumsum(ordered, axis=1) - ordered  # sum of the smaller capacities
    filled = before + ordered * (k - np.arange(k))  # budget used if the level were this capacity
    first = np.argmax(filled >= budget, axis=1)
    short = filled[:, -1] < budget  # everything fits
    level = (budget - before[np.arange(len(flat)), first]) / (k - first)
    level = np.where(short, np.inf, level)
    return np.minimum(flat, level[:, None]).reshape(capacity.shape)


def _asked(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """The categories the student asks for (dev Pass@1 below :data:`~knexa_node.profile.WEAK_PASS1`,
    ``learning.weak_pass1``'s default) that the teacher answers: it drops those it scored 0 in
    (:func:`knexa_node.learn.targeting.teachable_order`), where its answers would not pass anyway."""
    return (student < WEAK_PASS1) & (teacher > 0.0)


def competence_features(C: np.ndarray, known: np.ndarray, t: np.ndarray, s: np.ndarray,
                        count: np.ndarray, recent: np.ndarray, held: np.ndarray | None = None,
                        budget: float = 0.0) -> np.ndarray:
    """Per directed pair: what the teacher knows that the student lacks, and how used the pair already is.

    ``C`` (n_agents x categories): dev-set Pass@1 per category, rows of
    ``known == False`` ignored (zeros); ``count``/``recent`` per candidate:
    earlier exchanges of this pair, and ``1 / (1 + rounds since the last)``
    (0 for a new pair). ``teach_need`` is the mean over categories of
    ``C_t (1 - C_s)``. ``teach_need_fresh`` estimates the new verified
    answers the package brings, weighted by how much the student lacks each
    category: over the categories it asks for, the share of prompts the
    package answers (:func:`allotment`: what the student does not ``hold``
    yet, within the ``budget``) times the teacher's pass rate ``C_t`` times
    ``1 - C_s``, averaged over categories; then discounted by ``recent`` and
    by :data:`REPEAT_DISCOUNT` per earlier exchange of the pair (measured on
    8 embedded nodes, a milder discount let knexa repeat 14-15 of 16 pairs
    from round 3 on, random 7-11). ``held`` (n_agents x categories, optional):
    the share of each category's transfer prompts the student is estimated to
    hold verified answers to already, from any teacher (:func:`held_after`):
    every teacher answers the same public prompts, and a request leaves out
    those the student holds, so a teacher strong only where the student was
    already taught brings little; without a budget cap, a teacher strong in
    eight weak categories would be credited for eight when a package carries four.
    """
    both = (known[t] & known[s]).astype(np.float64)
    need = C[t] * (1.0 - C[s])
    teach_need = need.mean(axis=1) * both
    unheld = np.ones_like(need) if held is None else 1.0 - np.clip(held[s], 0.0, 1.0)
    fresh = (allotment(unheld, _asked(C[t], C[s]), budget) * need).mean(axis=1)
    columns = [teach_need, need.max(axis=1, initial=0.0) * both, C[t].mean(axis=1) * known[t],
               C[s].mean(axis=1) * known[s], np.log1p(count), recent,
               fresh * both * (1.0 - recent) * REPEAT_DISCOUNT ** count]
    return np.stack(columns, axis=1)


def held_after(held: np.ndarray, teacher: np.ndarray, student: np.ndarray, budget: float = 0.0) -> np.ndarray:
    """A student's estimated share of verified transfer answers per category after one more package.

    The teacher answers the unheld prompts of the categories the student asks
    for, within the budget (:func:`allotment`), and about its own dev Pass@1
    share of them pass the tests: ``held + allotted * C_teacher`` there,
    unchanged elsewhere. An estimate: the CPM sees no package.
    """
    held = np.clip(np.asarray(held, dtype=np.float64), 0.0, 1.0)
    teacher = np.clip(np.asarray(teacher, dtype=np.float64), 0.0, 1.0)
    allotted = allotment(1.0 - held, _asked(teacher, np.asarray(student)), budget)
    return np.minimum(held + allotted * teacher, 1.0)
