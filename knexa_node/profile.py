"""The abstract node profile p_i (d_p = 32) that nodes send and the CPM reads.

Defined once here, on the node's side, so that `knexa_cpm` imports it and
`knexa_node` never imports `knexa_cpm`. Layout (DESIGN.md, "Profile"):

- ``[0:8]``   one-hot model family (:data:`FAMILIES`);
- ``[8:20]``  six recent metrics and their deltas since the previous round
  (:data:`METRICS`), each metric scaled into ``[0, 1]`` (so each delta lies
  in ``[-1, 1]``);
- ``[20:32]`` normalized histogram of the local data over the 12 problem
  categories (:data:`CATEGORIES`): entries in ``[0, 1]`` summing to 1.

:func:`validate_profile` enforces exactly these ranges on what the CPM
receives: an honest node never sends anything else, and a profile outside
them (say Pass@1 = 1000, which made its sender the teacher of every round)
is refused with the field named.

Pure numpy; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

PROFILE_DIM = 32

FAMILIES: tuple[str, ...] = (
    "gpt2",
    "gpt_neox",
    "bloom",
    "qwen2",
    "llama",
    "gemma",
    "mistral",
    "other",
)

# Each metric is stored as (value, delta since last round): 12 dims.
# - pass1 / pass5: Pass@k on the node's local test split, in [0, 1].
# - val_loss / dev_loss: mean token CE on the private validation split and on
#   the consortium's public dev set, squashed by l / (1 + l) into [0, 1).
# - capacity: log10(trainable-or-total parameters) / 12, a model-size hint (saturates at 1e12).
# - data_size: log10(private examples) / 6 (saturates at a million examples).
# build_profile clips every metric into [0, 1]; validate_profile refuses anything outside.
METRICS: tuple[str, ...] = ("pass1", "pass5", "val_loss", "dev_loss", "capacity", "data_size")

# The 12 problem categories of the embedded task and of HumanEval/MBPP tagging.
CATEGORIES: tuple[str, ...] = (
    "string",
    "list",
    "math",
    "logic",
    "dict",
    "sorting",
    "search",
    "number_theory",
    "recursion",
    "parsing",
    "set",
    "matrix",
)

# The default of ``learning.weak_pass1``: a node asks teachers for the categories of its public dev-set
# Pass@1 below this. One constant for the node's config and agent and for the CPM, which estimates what
# a student asked for (knexa_cpm.features.held_after).
WEAK_PASS1 = 0.5

METRIC_RANGE = (0.0, 1.0)
DELTA_RANGE = (-1.0, 1.0)
HISTOGRAM_TOLERANCE = 1e-6  # |sum - 1| allowed for rounding

FAMILY_SLICE = slice(0, 8)
METRIC_SLICE = slice(8, 20)
HISTOGRAM_SLICE = slice(20, 32)  # each slice holds its table exactly (tests/foundation/test_no_asserts.py)


class ProfileError(ValueError):
    """A profile vector or its inputs are malformed."""


def squash_loss(loss: float) -> float:
    """Map a non-negative loss into [0, 1) so that it can share a scale with rates."""
    loss = max(0.0, float(loss))
    return loss / (1.0 + loss)


def family_index(model_type: str) -> int:
    """Index of a Hugging Face ``config.model_type`` in :data:`FAMILIES` ("other" if unknown)."""
    aliases = {"gptneox": "gpt_neox", "qwen": "qwen2", "qwen3": "qwen2", "gemma2": "gemma", "gemma3": "gemma", "gemma3_text": "gemma"}
    name = aliases.get(model_type, model_type)
    return FAMILIES.index(name) if name in FAMILIES else FAMILIES.index("other")


@dataclass(frozen=True)
class ProfileInputs:
    """What a node knows about itself when it builds its profile."""

    model_type: str
    metrics: Mapping[str, float]
    previous_metrics: Mapping[str, float] | None = None
    category_counts: Sequence[float] = field(default_factory=lambda: [0.0] * len(CATEGORIES))


def _clip_metric(value: float) -> float:
    # NaN stays NaN, for validate_profile to name; out-of-range sizes saturate.
    return float(np.clip(value, *METRIC_RANGE))


def build_profile(inputs: ProfileInputs) -> np.ndarray:
    """Build the 32-dim profile vector from a node's own measurements."""
    vector = np.zeros(PROFILE_DIM, dtype=np.float64)
    vector[FAMILY_SLICE.start + family_index(inputs.model_type)] = 1.0
    previous = inputs.previous_metrics or {}
    for k, name in enumerate(METRICS):
        if name not in inputs.metrics:
            raise ProfileError(f"missing metric {name!r}")
        value = _clip_metric(float(inputs.metrics[name]))
        delta = value - _clip_metric(float(previous[name])) if name in previous else 0.0
        vector[METRIC_SLICE.start + 2 * k] = value
        vector[METRIC_SLICE.start + 2 * k + 1] = delta
    counts = np.asarray(inputs.category_counts, dtype=np.float64)
    if counts.shape != (len(CATEGORIES),) or np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ProfileError(f"category counts must be {len(CATEGORIES)} non-negative finite numbers")
    total = counts.sum()
    vector[HISTOGRAM_SLICE] = counts / total if total > 0 else 1.0 / len(CATEGORIES)
    return vector


def validate_profile(vector: Sequence[float] | np.ndarray) -> np.ndarray:
    """Check a profile received from the network against the layout's ranges; return it as float64.

    Family: exactly one 1, the rest 0. Metrics: in ``[0, 1]``; deltas: in
    ``[-1, 1]``. Histogram: entries in ``[0, 1]`` summing to 1 within
    :data:`HISTOGRAM_TOLERANCE`. The :class:`ProfileError` names the field.
    """
    try:
        array = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProfileError("profile must be a vector of numbers") from None
    if array.shape != (PROFILE_DIM,):
        raise ProfileError(f"profile must have {PROFILE_DIM} entries, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ProfileError("profile holds NaN or infinity")
    family = array[FAMILY_SLICE]
    if not (np.all((family == 0) | (family == 1)) and family.sum() == 1):
        raise ProfileError("family block [0:8] must be one-hot")
    for k, name in enumerate(METRICS):
        for offset, (low, high), label in ((0, METRIC_RANGE, name), (1, DELTA_RANGE, f"{name} delta")):
            value = float(array[METRIC_SLICE.start + 2 * k + offset])
            if not low <= value <= high:
                raise ProfileError(f"{label} = {value:.6g} is outside [{low:g}, {high:g}]")
    histogram = array[HISTOGRAM_SLICE]
    if np.any(histogram < 0) or np.any(histogram > 1) or abs(histogram.sum() - 1.0) > HISTOGRAM_TOLERANCE:
        raise ProfileError("category histogram [20:32] must be entries in [0, 1] that sum to 1")
    return array


def metric(vector: np.ndarray, name: str, *, delta: bool = False) -> float:
    """Read one metric (or its delta) from a profile vector."""
    k = METRICS.index(name)
    return float(vector[METRIC_SLICE.start + 2 * k + (1 if delta else 0)])


def family_of(vector: np.ndarray) -> str:
    return FAMILIES[int(np.argmax(vector[FAMILY_SLICE]))]


def histogram_of(vector: np.ndarray) -> np.ndarray:
    return np.asarray(vector[HISTOGRAM_SLICE], dtype=np.float64)
