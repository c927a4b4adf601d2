"""Which modules get LoRA in each model family, and attaching a PEFT adapter with a given rank."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

# Attention projections per ``config.model_type`` (DESIGN.md: measured on tiny configs of each family).
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
    "bloom": ("query_key_value",),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "gemma3_text": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
}


class LoraError(ValueError):
    """No LoRA targets are known for a model family and none were given."""


def lora_targets(model_type: str, override: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if override:
        return tuple(override)
    if model_type not in LORA_TARGETS:
        raise LoraError(f"no LoRA target modules known for model type {model_type!r}; set them explicitly")
    return LORA_TARGETS[model_type]


def attach_lora(model: PreTrainedModel, rank: int, *, alpha: float | None = None, dropout: float = 0.0,
                targets: tuple[str, ...] | None = None) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter; only the adapter stays trainable."""
    if rank < 1:
        raise LoraError("LoRA rank must be >= 1")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=dropout,
        target_modules=list(lora_targets(model.config.model_type, targets)),
        # GPT-2 keeps its projections in Conv1D, whose weight is stored transposed.
        fan_in_fan_out=model.config.model_type == "gpt2",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
