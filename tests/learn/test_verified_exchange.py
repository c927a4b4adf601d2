"""Verified, targeted, multi-teacher exchanges on real tiny agents and the real sandbox.

The teacher's decoder is the one thing replaced (:class:`KnowsHalf`): a tiny
untrained model answers nothing right, and these tests are about what happens
to right and wrong answers. Everything after decoding (tests in the sandbox,
the package codec, the student's re-check, training, rewards) is real.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import pytest

from knexa_node.learn.agent import Agent, AgentConfig, ExchangeRequest
from knexa_node.learn.data import dirichlet_split, embedded_task, split_validation
from knexa_node.learn.generation import Generation
from knexa_node.learn.package import KnowledgePackage, decode_package, encode_package
from knexa_node.learn.problems import Problem
from knexa_node.learn.sandbox import SandboxLimits

pytestmark = pytest.mark.slow

TASK = embedded_task(0, train_per_category=20, transfer_per_category=2, dev_per_category=1, test_per_category=1)
SHARDS = dirichlet_split(TASK.train_pool, 2, 0.2, seed=0, per_client=64)
WRONG = "    return None\n"


class KnowsHalf(Agent):
    """Greedy answers: the reference solution for even-numbered prompts of a call, a wrong one otherwise;
    sampled answers: always the reference (so sampling rescues what greedy got wrong)."""

    def generate(self, problems: Sequence[Problem], *, temperature: float = 0.0, top_k_logits: int = 0,
                 seed: int = 0) -> list[Generation]:
        self.decoded = getattr(self, "decoded", 0) + len(problems)
        return [Generation(p.solution if temperature > 0 or i % 2 == 0 else WRONG, [], True)
                for i, p in enumerate(problems)]


def make(models: dict[str, Path], family: str, state: Path, cls: type = Agent, shard: int = 0, **overrides) -> Agent:
    train, validation = split_validation(SHARDS[shard], 0.15, seed=shard)
    config = AgentConfig(**{"train_mode": "full", "lr": 3e-3, "batch_size": 8, "max_new_tokens": 20,
                            "sandbox": SandboxLimits(timeout_s=2.0, cpu_s=2), "verify": "tests", "check_received": True,
                            **overrides})
    return cls(str(models[family]), state, config, train=train, validation=validation)


def test_teacher_sends_only_answers_that_pass_and_samples_rescue_failures(tiny_models, tmp_path) -> None:
    transfer = TASK.transfer[:8]
    greedy_only = make(tiny_models, "gpt2", tmp_path / "a", KnowsHalf)
    built = greedy_only.teacher_package(transfer)
    package = decode_package(built.payload, max_size=1 << 20)
    assert set(package.texts) == {p.task_id for p in transfer[0::2]} == package.verified
    assert built.verified == built.items == 4 and built.candidates == 8
    rescued = make(tiny_models, "gpt2", tmp_path / "b", KnowsHalf, teacher_samples=2).teacher_package(transfer)
    assert rescued.verified == 8 and rescued.candidates == 8 + 4 * 2
    paper = make(tiny_models, "gpt2", tmp_path / "c", KnowsHalf, verify="off").teacher_package(transfer)
    assert paper.items == 8 and paper.verified == 0 and not decode_package(paper.payload, max_size=1 << 20).verified


def test_teacher_answers_the_requested_categories_within_the_budget_once_per_model_state(tiny_models, tmp_path) -> None:
    teacher = make(tiny_models, "gpt2", tmp_path / "t", KnowsHalf, teacher_samples=1)
    wanted = ("math", "set")
    built = teacher.teacher_package(TASK.transfer, request=ExchangeRequest(wanted, budget=3))
    package = decode_package(built.payload, max_size=1 << 20)
    by_id = {p.task_id: p for p in TASK.transfer}
    assert built.prompts == 3 and {by_id[k].category for k in package.texts} <= set(wanted)
    decoded = teacher.decoded
    teacher.teacher_package(TASK.transfer, request=ExchangeRequest(wanted, budget=3))  # a second student, same state
    assert teacher.decoded == decoded
    teacher.local_epoch()  # a new model state answers again
    teacher.teacher_package(TASK.transfer, request=ExchangeRequest(wanted, budget=3))
    assert teacher.decoded > decoded


def test_teacher_spends_the_budget_on_the_requested_categories_it_knows(tiny_models, tmp_path) -> None:
    teacher = make(tiny_models, "gpt2", tmp_path / "t", KnowsHalf)
    teacher.own_competence = {"math": 0.25, "set": 1.0, "list": 0.0}  # what competence(dev) would have measured
    by_id = {p.task_id: p for p in TASK.transfer}
    built = teacher.teacher_package(TASK.transfer, request=ExchangeRequest(("math", "set", "list"), budget=2))
    assert built.prompts == 2
    assert [by_id[k].category for k in decode_package(built.payload, max_size=1 << 20).texts] == ["set"]  # greedy: 1 of 2
    # Measured no skill in anything asked (a new consortium): it answers as asked, within the budget.
    as_asked = teacher.teacher_package(TASK.transfer, request=ExchangeRequest(("list",), budget=2))
    answered = decode_package(as_asked.payload, max_size=1 << 20).texts
    assert as_asked.prompts == 2 and {by_id[k].category for k in answered} == {"list"}


def test_student_rechecks_items_counts_false_claims_and_credits_each_teacher(tiny_models, tmp_path) -> None:
    student = make(tiny_models, "llama", tmp_path / "s", received_memory=100)
    transfer = TASK.transfer
    honest = {p.task_id: p.solution for p in transfer[:6]}
    liar = {p.task_id: WRONG for p in transfer[6:10]} | {p.task_id: p.solution for p in transfer[10:12]}
    packages = [("honest", encode_package(KnowledgePackage("text", "x", 0, texts=honest, verified=frozenset(honest)))),
                ("liar", encode_package(KnowledgePackage("text", "x", 0, texts=liar, verified=frozenset(liar))))]
    report = student.distill_many(packages, transfer, dev=TASK.dev)
    first, second = report.teachers
    assert (first.teacher, first.items_used, first.items_failed, first.claims_failed) == ("honest", 6, 0, 0)
    assert (second.teacher, second.items_used, second.items_failed, second.claims_failed) == ("liar", 2, 4, 4)
    assert first.reward + second.reward == pytest.approx(
        first.loss_pre - first.loss_post - 1e-6 * (first.package_bytes + second.package_bytes) / 1024)
    assert first.reward_covered is not None and set(first.covered) == {p.category for p in transfer[:6]}
    assert report.steps == 1  # one phase: the 8 items of both packages in one batch of 8
    # Only checked answers are kept for later local epochs, and they survive a restart.
    assert set(student.received) == set(honest) | {p.task_id for p in transfer[10:12]}
    student.finish_round()
    again = make(tiny_models, "llama", tmp_path / "s", received_memory=100)
    assert set(again.received) == set(student.received)
    assert again.local_epoch().samples == len(again.train_set) + len(again.received)
    # The same teacher again: the student holds those answers already; nothing new is trained on or credited.
    repeat = again.distill_many(packages[:1], transfer, dev=TASK.dev).teachers[0]
    assert (repeat.items_used, repeat.items_known, repeat.covered, repeat.steps) == (0, 6, (), 0)
    assert repeat.reward_covered == 0.0


@pytest.mark.parametrize("skip_held", [True, False])
def test_a_request_names_the_prompts_held_and_the_teacher_answers_new_ones(tiny_models, tmp_path, skip_held: bool) -> None:
    student = make(tiny_models, "llama", tmp_path / "s", received_memory=100, skip_held=skip_held)
    math = [p for p in TASK.transfer if p.category == "math"]
    taught = {math[0].task_id: math[0].solution}
    student.distill_many([("t", encode_package(KnowledgePackage("text", "x", 0, texts=taught, verified=frozenset(taught))))],
                         TASK.transfer)
    request = student.exchange_request({"math": 0.0, "set": 0.0, "list": 1.0})
    assert request.categories == ("math", "set")
    assert request.held == ((math[0].task_id,) if skip_held else ())
    teacher = make(tiny_models, "gpt2", tmp_path / "t", KnowsHalf, teacher_samples=1)
    texts = decode_package(teacher.teacher_package(TASK.transfer, request=replace(request, budget=1)).payload,
                           max_size=1 << 20).texts
    assert list(texts) == [math[1].task_id if skip_held else math[0].task_id]


def test_one_package_distill_keeps_its_report_shape(tiny_models, tmp_path) -> None:
    student = make(tiny_models, "llama", tmp_path / "s")
    texts = {p.task_id: p.solution for p in TASK.transfer[:4]}
    report = student.distill(encode_package(KnowledgePackage("text", "x", 0, texts=texts)), TASK.transfer, dev=TASK.dev)
    assert report.items_used == 4 and report.items_failed == 0 and report.dev_pass1_pre is not None
    assert replace(report, teacher="t").teacher == "t"


class ScriptedDev(Agent):
    """Public dev-set Pass@1 as scripted, one value per measurement (an untrained tiny model measures 0 always)."""

    measurements: list[float] = []

    def competence(self, dev: Sequence[Problem]) -> dict[str, float]:
        value = self.measurements.pop(0)
        self.own_competence = {p.category: value for p in dev}
        return dict(self.own_competence)


def _weights(agent: Agent) -> dict[str, object]:
    return {name: p.detach().clone() for name, p in agent._trainable().items()}


@pytest.mark.parametrize("after, kept", [(0.25, False), (0.5, True)])
def test_the_guard_undoes_a_phase_that_left_dev_pass1_lower_and_keeps_its_answers(tiny_models, tmp_path, after, kept) -> None:
    student = make(tiny_models, "llama", tmp_path / "s", ScriptedDev, received_memory=100, replay_after=1.5,
                   distill_guard="dev")
    student.measurements = [0.5, after]  # before the phase, after it
    texts = {p.task_id: p.solution for p in TASK.transfer[:16]}
    before, steps_before = _weights(student), student.optimizer_steps
    report = student.distill_many([("t", encode_package(KnowledgePackage("text", "x", 0, texts=texts)))],
                                  TASK.transfer, dev=TASK.dev)
    # 16 items in batches of 8: 2 distillation steps, then 1.5 x 2 replay steps on the student's own data.
    assert (report.steps, report.replay_steps, student.optimizer_steps - steps_before) == (2, 3, 5)
    now = _weights(student)
    assert report.kept is kept and report.teachers[0].kept is kept
    assert all(bool((now[name] == before[name]).all()) for name in now) is not kept
    assert student.own_competence == {p.category: 0.5 if not kept else after for p in TASK.dev}
    assert set(student.received) == set(texts)  # kept or not, the verified answers are replayed in local epochs
    assert report.teachers[0].dev_pass1_post == after  # the measurement the decision was made on


def test_without_the_guard_every_phase_is_kept(tiny_models, tmp_path) -> None:
    student = make(tiny_models, "llama", tmp_path / "s", ScriptedDev)
    student.measurements = [0.5, 0.0]
    texts = {p.task_id: p.solution for p in TASK.transfer[:8]}
    report = student.distill_many([("t", encode_package(KnowledgePackage("text", "x", 0, texts=texts)))],
                                  TASK.transfer, dev=TASK.dev)
    assert report.kept and report.replay_steps == 0
    with pytest.raises(ValueError, match="distill_guard"):
        make(tiny_models, "llama", tmp_path / "bad", distill_guard="sometimes")
