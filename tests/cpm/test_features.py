"""Pairwise features: JS divergence, the paper's concatenation, our interaction features."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from knexa_cpm.features import KNEXA_DIM, KNEXA_FEATURES, concat_features, js_divergence, knexa_dim, knexa_features
from knexa_node.profile import ProfileInputs, build_profile

hist = arrays(np.float64, 12, elements=st.floats(0, 1, allow_nan=False)).filter(lambda h: h.sum() > 1e-3).map(lambda h: h / h.sum())


@settings(max_examples=60)
@given(hist, hist)
def test_js_is_symmetric_bounded_and_zero_on_equal(a, b):
    d = js_divergence(a[None], b[None])[0]
    assert 0.0 <= d <= math.log(2) + 1e-9
    assert abs(d - js_divergence(b[None], a[None])[0]) < 1e-12
    assert js_divergence(a[None], a[None])[0] < 1e-9


def test_js_of_disjoint_histograms_is_ln2():
    a, b = np.zeros(12), np.zeros(12)
    a[0], b[1] = 1.0, 1.0
    assert abs(js_divergence(a[None], b[None])[0] - math.log(2)) < 1e-9


def profile(family: str, pass1: float, counts) -> np.ndarray:
    metrics = {"pass1": pass1, "pass5": pass1, "val_loss": 0.5, "dev_loss": 0.5, "capacity": 0.6, "data_size": 0.6}
    return build_profile(ProfileInputs(family, metrics, None, counts))


def test_concat_is_teacher_then_student():
    P = np.stack([profile("llama", 0.2, [1] * 12), profile("gpt2", 0.6, [2] + [0] * 11)])
    X = concat_features(P, np.array([1]), np.array([0]))
    np.testing.assert_array_equal(X[0], np.concatenate([P[1], P[0]]))


def test_knexa_features_are_directed_and_see_compatibility():
    strong_math = profile("llama", 0.6, [0, 0, 10] + [0] * 9)
    weak_string = profile("llama", 0.2, [10] + [0] * 11)
    other_family = profile("gpt2", 0.6, [0, 0, 10] + [0] * 9)
    P = np.stack([strong_math, weak_string, other_family])
    X = knexa_features(P, np.array([0, 1, 2]), np.array([1, 0, 1]))
    assert X.shape == (3, KNEXA_DIM) and len(KNEXA_FEATURES) == KNEXA_DIM
    col = {name: k for k, name in enumerate(KNEXA_FEATURES)}
    assert X[0, col["gap"]] == -X[1, col["gap"]] > 0
    assert X[0, col["gap_pos"]] > 0 and X[1, col["gap_pos"]] == 0
    assert X[0, col["same_family"]] == 1 and X[2, col["same_family"]] == 0
    assert X[0, col["coverage"]] == 1.0
    assert knexa_features(P, np.array([0]), np.array([1]), raw=True).shape == (1, knexa_dim(True))
