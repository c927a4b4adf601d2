"""The Agent on real tiny transformers models: LoRA per family, training, persistence, packages, KD, evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from knexa_node.learn.agent import Agent, AgentConfig
from knexa_node.learn.central import local_only_round
from knexa_node.learn.data import dirichlet_split, embedded_task, split_validation
from knexa_node.learn.encoding import encode_pair
from knexa_node.learn.lora import attach_lora
from knexa_node.learn.package import PackageError, decode_package
from knexa_node.learn.sandbox import SandboxLimits
from knexa_node.profile import PROFILE_DIM, validate_profile

pytestmark = pytest.mark.slow

TASK = embedded_task(0, train_per_category=20, transfer_per_category=2, dev_per_category=1, test_per_category=1)
SHARDS = dirichlet_split(TASK.train_pool, 2, 0.2, seed=0, per_client=96)


def make_agent(models: dict[str, Path], family: str, state: Path, shard: int = 0, **overrides) -> Agent:
    train, validation = split_validation(SHARDS[shard], 0.15, seed=shard)
    settings = {"train_mode": "full", "lr": 3e-3, "batch_size": 16, "max_new_tokens": 20,
                "sandbox": SandboxLimits(timeout_s=1.0, cpu_s=1), **overrides}
    config = AgentConfig(**settings)
    return Agent(str(models[family]), state, config, train=train, validation=validation)


@pytest.mark.parametrize("family, target", [("gpt2", "c_attn"), ("gpt_neox", "query_key_value"),
                                            ("bloom", "query_key_value"), ("qwen2", "q_proj"), ("llama", "v_proj")])
def test_lora_attaches_to_each_family_with_its_rank(tiny_models, family: str, target: str) -> None:
    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_models[family]), rank=4)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any(target in n for n in trainable)
    assert all(min(p.shape) == 4 for p in trainable.values())
    ids = torch.tensor([[1, 2, 3, 4]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in trainable.values())


def test_prompt_and_completion_are_tokenized_apart(tiny_models) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    problem = TASK.train_pool[0]
    example = encode_pair(tokenizer, problem.prompt, problem.solution, 256)
    prompt_ids = tokenizer(problem.prompt, add_special_tokens=False)["input_ids"]
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert example.labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
    assert example.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example.input_ids[len(prompt_ids):-1]) == problem.solution


def test_local_epochs_lower_validation_loss_and_state_survives_restart(tiny_models, tmp_path) -> None:
    agent = make_agent(tiny_models, "llama", tmp_path / "state")
    before = agent.validation_loss()
    seen = []
    for _ in range(3):
        report = agent.local_epoch(progress=lambda step, total, loss: seen.append((step, total)))
        agent.finish_round()
    after = agent.validation_loss()
    assert after < before - 0.5
    assert report.steps == seen[-1][0] == seen[-1][1]
    reloaded = make_agent(tiny_models, "llama", tmp_path / "state")
    assert reloaded.round == 3 and reloaded.optimizer_steps == agent.optimizer_steps
    assert reloaded.validation_loss() == pytest.approx(after, rel=1e-6)
    assert reloaded.optimizer.state_dict()["state"].keys() == agent.optimizer.state_dict()["state"].keys()


def test_lora_mode_saves_only_the_adapter(tiny_models, tmp_path) -> None:
    agent = make_agent(tiny_models, "gpt2", tmp_path / "state", train_mode="lora", lora_rank=2)
    agent.local_epoch()
    saved = agent.finish_round()
    assert (saved / "trainable.safetensors").stat().st_size < 50_000
    assert agent.describe()["trainable"] < agent.total_parameters / 10
    reloaded = make_agent(tiny_models, "gpt2", tmp_path / "state", train_mode="lora", lora_rank=2)
    assert reloaded.validation_loss() == pytest.approx(agent.validation_loss(), rel=1e-6)


def test_text_distillation_across_tokenizers_with_reward(tiny_models, tmp_path) -> None:
    teacher = make_agent(tiny_models, "gpt2", tmp_path / "t", shard=1)
    student = make_agent(tiny_models, "llama", tmp_path / "s", shard=0)
    teacher.local_epoch()
    built = teacher.teacher_package(TASK.transfer, protocol="text")
    package = decode_package(built.payload, max_size=1 << 20)
    assert built.nbytes == len(built.payload) and set(package.texts) == {p.task_id for p in TASK.transfer}
    with pytest.raises(PackageError, match="tokenizer"):
        student.distill(teacher.teacher_package(TASK.transfer[:2], protocol="logits").payload, TASK.transfer)
    before = [p.detach().clone() for p in student.model.parameters()]
    report = student.distill(built.payload, TASK.transfer, dev=TASK.dev)
    assert report.items_used == len(TASK.transfer) and report.steps >= 1 and report.alpha == pytest.approx(0.2)
    assert report.reward == pytest.approx(report.loss_pre - report.loss_post - 1e-6 * built.nbytes / 1024)
    assert report.reward_dev is not None and report.dev_loss_pre is not None
    assert any(not torch.equal(a, b) for a, b in zip(before, student.model.parameters()))


def test_logit_distillation_between_shared_tokenizers_and_weak_filter(tiny_models, tmp_path) -> None:
    teacher = make_agent(tiny_models, "qwen2", tmp_path / "t", shard=1)
    student = make_agent(tiny_models, "llama", tmp_path / "s", shard=0, kd_filter="weak", top_k_logits=4)
    built = teacher.teacher_package(TASK.transfer, protocol="logits")
    report = student.distill(built.payload, TASK.transfer)
    weak = student.weak_categories()
    assert report.protocol == "logits" and report.temperature == pytest.approx(1.5)
    assert report.items_used == sum(p.category in weak for p in TASK.transfer) < len(TASK.transfer)
    assert all(len(item.tokens) == item.topk_ids.shape[0] for item in decode_package(built.payload, max_size=1 << 20).logits.values())


def test_evaluation_profile_and_local_only(tiny_models, tmp_path) -> None:
    agent = make_agent(tiny_models, "llama", tmp_path / "state")
    report = agent.evaluate(TASK.test)
    assert report.problems == len(TASK.test) and set(report.pass_at) == {1}
    assert 0.0 <= report.pass_at[1].low <= report.pass_at[1].value <= report.pass_at[1].high <= 1.0
    sampled = agent.evaluate(TASK.test[:3], samples=5, ks=(1, 5))
    assert set(sampled.pass_at) == {1, 5} and sampled.samples_per_problem == 5
    vector = agent.profile(pass1=report.pass_at[1].value, pass5=0.0, val_loss=2.0, dev_loss=3.0)
    assert vector.shape == (PROFILE_DIM,) and validate_profile(vector) is not None
    again = agent.profile(pass1=0.5, pass5=0.5, val_loss=1.0, dev_loss=1.0)
    assert again[9] == pytest.approx(0.5 - report.pass_at[1].value)  # delta of pass1
    result = local_only_round(agent)
    assert agent.round == 1 and result.validation_loss < 10
