"""Knowledge package encoding and its strict decoder; the sparse KL; schedules and Eq. 3; Central-KD merge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from knexa_node.learn.central import ensemble_packages
from knexa_node.learn.distill import sparse_kl
from knexa_node.learn.package import (KnowledgePackage, LogitItem, PackageError, decode_package, encode_package)
from knexa_node.learn.schedule import eq3_reward, linear_schedule, warmup_factor
from knexa_node.wire.codec import pack

LIMIT = 1 << 20


def logit_item(tokens: list[int], k: int = 3, seed: int = 0) -> LogitItem:
    rng = np.random.default_rng(seed)
    logp = np.log(rng.dirichlet(np.ones(k + 1), size=len(tokens))[:, :k]).astype(np.float16)
    ids = np.stack([rng.permutation(50)[:k] for _ in tokens]).astype(np.int32)
    return LogitItem(np.asarray(tokens, dtype=np.int32), ids, logp)


def test_text_and_logit_packages_round_trip() -> None:
    text = KnowledgePackage("text", "tok", 3, texts={"a": "    return x\n", "b": ""})
    assert decode_package(encode_package(text), max_size=LIMIT) == text
    logits = KnowledgePackage("logits", "tok", 1, logits={"a": logit_item([5, 6, 7])}, k=3)
    decoded = decode_package(encode_package(logits), max_size=LIMIT)
    assert decoded.kind == "logits" and decoded.k == 3 and len(decoded) == 1
    np.testing.assert_array_equal(decoded.logits["a"].topk_ids, logits.logits["a"].topk_ids)
    np.testing.assert_array_equal(decoded.logits["a"].topk_logp, logits.logits["a"].topk_logp)


@pytest.mark.parametrize("body, message", [
    ({"v": 2, "kind": "text", "tokenizer": "t", "round": 0, "items": []}, "version"),
    ({"v": 1, "kind": "weights", "tokenizer": "t", "round": 0, "items": []}, "kind"),
    ({"v": 1, "kind": "text", "tokenizer": "t", "round": 0, "items": [{"id": "a", "text": 3}]}, "text"),
    ({"v": 1, "kind": "text", "tokenizer": "t", "round": 0, "items": [{"id": "a", "text": ""}, {"id": "a", "text": ""}]}, "duplicate"),
    ({"v": 1, "kind": "logits", "tokenizer": "t", "round": 0, "k": 0, "items": []}, "top-k"),
    ({"v": 1, "kind": "logits", "tokenizer": "t", "round": 0, "k": 1,
      "items": [{"id": "a", "tokens": np.int32([1]).tobytes(), "topk_ids": np.int32([1]).tobytes(),
                 "topk_logp": np.float16([0.5]).tobytes()}]}, "<= 0"),
    ({"v": 1, "kind": "logits", "tokenizer": "t", "round": 0, "k": 2,
      "items": [{"id": "a", "tokens": np.int32([1]).tobytes(), "topk_ids": np.int32([1]).tobytes(),
                 "topk_logp": np.float16([-0.5]).tobytes()}]}, "topk_ids"),
])
def test_malformed_packages_raise_package_error(body: dict, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        decode_package(pack(body), max_size=LIMIT)


def test_oversized_package_is_refused() -> None:
    payload = encode_package(KnowledgePackage("text", "t", 0, texts={"a": "x" * 5000}))
    with pytest.raises(PackageError, match="too-large"):
        decode_package(payload, max_size=1000)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_package_error(data: bytes) -> None:
    try:
        decode_package(data, max_size=LIMIT)
    except PackageError:
        pass


def test_sparse_kl_is_zero_for_the_teacher_itself_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 40)
    logp = torch.log_softmax(logits, dim=-1)
    values, ids = logp.topk(5, dim=-1)
    assert float(sparse_kl(logits, ids, values, 1.0)) == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(6, 40, requires_grad=True)
    loss = sparse_kl(other, ids, values, 2.0)
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert other.grad is not None and float(other.grad.abs().sum()) > 0


def test_schedules_and_reward() -> None:
    assert linear_schedule(0.2, 0.5, 0, 4) == pytest.approx(0.2)
    assert linear_schedule(0.2, 0.5, 3, 4) == pytest.approx(0.5)
    assert linear_schedule(1.5, 2.5, 1, 3) == pytest.approx(2.0)
    assert linear_schedule(1.5, 2.5, 9, 3) == pytest.approx(2.5)
    assert warmup_factor(0, 100, 0.1) < warmup_factor(5, 100, 0.1) < 1.0 == warmup_factor(10, 100, 0.1)
    assert eq3_reward(2.0, 1.5, 2048, gamma=2.0, delta_per_kb=0.1) == pytest.approx(2.0 * 0.5 - 0.1 * 2)


def test_central_kd_text_vote_and_logit_average() -> None:
    votes = [KnowledgePackage("text", "t", 0, texts={"a": "x", "b": "p"}), KnowledgePackage("text", "u", 0, texts={"a": "y", "b": "q"}),
             KnowledgePackage("text", "v", 0, texts={"a": "y", "b": "r"})]
    merged = decode_package(ensemble_packages([encode_package(p) for p in votes]), max_size=LIMIT)
    assert merged.texts == {"a": "y", "b": "p"}
    same = [1, 2]
    items = [logit_item(same, seed=s) for s in (1, 2)]
    odd = logit_item([9, 9], seed=3)
    packages = [KnowledgePackage("logits", "tok", 0, logits={"a": item}, k=3) for item in items + [odd]]
    merged = decode_package(ensemble_packages([encode_package(p) for p in packages]), max_size=LIMIT)
    result = merged.logits["a"]
    assert result.tokens.tolist() == same
    expected: dict[int, float] = {}
    for item in items:
        for token, logp in zip(item.topk_ids[0], item.topk_logp[0].astype(np.float64)):
            expected[int(token)] = expected.get(int(token), 0.0) + np.exp(logp) / 2
    top = max(expected, key=expected.get)
    assert int(result.topk_ids[0, 0]) == top
    assert float(np.exp(result.topk_logp[0, 0].astype(np.float64))) == pytest.approx(expected[top], rel=1e-2)
    with pytest.raises(PackageError):
        ensemble_packages([encode_package(votes[0]), encode_package(packages[0])])
