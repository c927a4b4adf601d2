"""The abstract node profile p_i (d_p = 32) that nodes send and the CPM reads.

Defined once here, on the node's side, so that `knexa_cpm` imports it and
`knexa_node` never imports `knexa_cpm`. Layout (DESIGN.md, "Profile"):

- ``[0:8]``   one-hot model family (:data:`FAMILIES`);
- ``[8:20]``  six recent metrics and their deltas since the previous round
  (:data:`METRICS`), each metric scaled to roughly ``[0, 1]``;
- ``[20:32]`` normalized histogram of the local data over the 12 problem
  categories (:data:`CATEGORIES`).

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
# - capacity: log10(trainable-or-total parameters) / 12, a model-size hint.
# - data_size: log10(private examples) / 6.
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


def build_profile(inputs: ProfileInputs) -> np.ndarray:
    """Build the 32-dim profile vector from a node's own measurements."""
    vector = np.zeros(PROFILE_DIM, dtype=np.float64)
    vector[FAMILY_SLICE.start + family_index(inputs.model_type)] = 1.0
    previous = inputs.previous_metrics or {}
    for k, name in enumerate(METRICS):
        if name not in inputs.metrics:
            raise ProfileError(f"missing metric {name!r}")
        value = float(inputs.metrics[name])
        delta = value - float(previous[name]) if name in previous else 0.0
        vector[METRIC_SLICE.start + 2 * k] = value
        vector[METRIC_SLICE.start + 2 * k + 1] = delta
    counts = np.asarray(inputs.category_counts, dtype=np.float64)
    if counts.shape != (len(CATEGORIES),) or np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ProfileError(f"category counts must be {len(CATEGORIES)} non-negative finite numbers")
    total = counts.sum()
    vector[HISTOGRAM_SLICE] = counts / total if total > 0 else 1.0 / len(CATEGORIES)
    return vector


def validate_profile(vector: Sequence[float] | np.ndarray) -> np.ndarray:
    """Check a profile received from the network; return it as a float64 array."""
    array = np.asarray(vector, dtype=np.float64)
    if array.shape != (PROFILE_DIM,):
        raise ProfileError(f"profile must have {PROFILE_DIM} entries, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ProfileError("profile holds NaN or infinity")
    if np.any(np.abs(array) > 1e3):
        raise ProfileError("profile entry out of range (|x| > 1000)")
    family = array[FAMILY_SLICE]
    if not (np.all((family == 0) | (family == 1)) and family.sum() == 1):
        raise ProfileError("family block must be one-hot")
    histogram = array[HISTOGRAM_SLICE]
    if np.any(histogram < 0) or abs(histogram.sum() - 1.0) > 1e-6:
        raise ProfileError("category histogram must be non-negative and sum to 1")
    return array


def metric(vector: np.ndarray, name: str, *, delta: bool = False) -> float:
    """Read one metric (or its delta) from a profile vector."""
    k = METRICS.index(name)
    return float(vector[METRIC_SLICE.start + 2 * k + (1 if delta else 0)])


def family_of(vector: np.ndarray) -> str:
    return FAMILIES[int(np.argmax(vector[FAMILY_SLICE]))]


def histogram_of(vector: np.ndarray) -> np.ndarray:
    return np.asarray(vector[HISTOGRAM_SLICE], dtype=np.float64)
