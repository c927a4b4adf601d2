"""The pure logic of targeted, verified exchanges: what a student asks for, what a teacher answers, who gets credit."""

from __future__ import annotations

import pytest

from knexa_node.learn.data import embedded_task
from knexa_node.learn.package import KnowledgePackage, PackageError, decode_package, encode_package
from knexa_node.learn.targeting import covered_gain, select_prompts, teachable_order, weak_categories
from knexa_node.wire.codec import pack, unpack

TASK = embedded_task(0, train_per_category=2, transfer_per_category=3, dev_per_category=2, test_per_category=1)


def test_weak_categories_are_below_the_threshold_weakest_first() -> None:
    competence = {"string": 0.75, "list": 0.0, "math": 0.25, "logic": 0.5, "dict": 0.0}
    assert weak_categories(competence, 0.5) == ("list", "dict", "math")
    assert weak_categories(competence, 0.0) == ()


def test_select_prompts_takes_requested_categories_in_turn_within_the_budget() -> None:
    chosen = select_prompts(TASK.transfer, ("math", "list"), budget=5)
    assert [p.category for p in chosen] == ["math", "list", "math", "list", "math"]
    assert select_prompts(TASK.transfer, ("math",)) == [p for p in TASK.transfer if p.category == "math"]
    assert select_prompts(TASK.transfer) == TASK.transfer
    assert len(select_prompts(TASK.transfer, budget=4)) == 4


def test_select_prompts_spends_the_budget_on_prompts_the_student_does_not_hold() -> None:
    math = [p for p in TASK.transfer if p.category == "math"]
    held = {math[0].task_id, math[1].task_id}
    chosen = select_prompts(TASK.transfer, ("math", "list"), budget=3, held=held)
    assert [p.task_id for p in chosen if p.category == "math"] == [math[2].task_id]
    assert len(chosen) == 3 and not held & {p.task_id for p in chosen}
    everything = {p.task_id for p in math}
    assert select_prompts(TASK.transfer, ("math",), held=everything) == []


def test_teachable_order_puts_the_teachers_strengths_first_and_drops_what_it_cannot_do() -> None:
    requested = ("list", "dict", "math", "string")
    own = {"list": 0.25, "dict": 0.0, "math": 1.0, "string": 0.25}
    assert teachable_order(requested, own) == ("math", "list", "string")
    assert teachable_order(requested, {}) == requested  # no measurement of its own: the student's order
    assert teachable_order(requested, {"logic": 1.0}) == requested  # no skill in anything asked: as asked


def test_covered_gain_is_the_gain_on_covered_categories_shared_by_items() -> None:
    pre = {"math": 0.0, "list": 0.5, "string": 1.0}
    post = {"math": 1.0, "list": 0.5, "string": 0.0}  # string fell, but no package covered it
    dev = {"math": 2, "list": 2, "string": 2}
    alone = covered_gain(pre, post, dev, {"math": 3, "list": 1}, {"math": 3, "list": 1})
    assert alone == pytest.approx((2 * 1.0 + 2 * 0.0) / 4)
    # Two teachers in math: the gain is split 2:1 by the items each gave there.
    first = covered_gain(pre, post, dev, {"math": 2}, {"math": 3})
    second = covered_gain(pre, post, dev, {"math": 1}, {"math": 3})
    assert first == pytest.approx(2 / 3) and second == pytest.approx(1 / 3)
    assert covered_gain(pre, post, dev, {}, {}) == 0.0


def test_verified_marks_survive_the_package_codec_and_must_be_booleans() -> None:
    package = KnowledgePackage("text", "f" * 64, 1, texts={"a": "    return 1\n", "a#1": "    return 2\n", "b": "x"},
                               verified=frozenset({"a", "a#1"}))
    decoded = decode_package(encode_package(package), max_size=1 << 20)
    assert decoded.verified == {"a", "a#1"} and decoded.texts == package.texts
    body = unpack(encode_package(package), max_size=1 << 20)
    body["items"][0]["verified"] = "yes"
    with pytest.raises(PackageError, match="verified"):
        decode_package(pack(body), max_size=1 << 20)
