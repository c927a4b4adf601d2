"""Fixtures for the pretrained-weights room: a tiny GGUF written here with the ``gguf`` writer.

The GGUF mirrors SmolLM2's layout (llama architecture, byte-level BPE
``gpt2`` tokenizer with merges, a chat template, Q4_1 projections, Q8_0
embeddings, F32 norms, tied output) at a few hundred thousand parameters,
so the import round trip runs in seconds without the 98 MB package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from knexa_node.learn.embedded import TokenizerSpec, train_tokenizer  # noqa: E402

try:  # the 'pretrained' extra; without it the GGUF tests skip
    import gguf
except ImportError:
    gguf = None

torch.set_num_threads(1)

CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A llama-architecture GGUF with random weights and a 384-token BPE vocabulary (plus chat tokens)."""
    if gguf is None:
        pytest.skip("gguf is not installed (the 'pretrained' extra)")
    Q = gguf.GGMLQuantizationType

    tokenizer = train_tokenizer(TokenizerSpec(vocab_size=384, corpus_per_category=30))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[tokenizer.eos_token])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab[tokenizer.pad_token])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(seed)

    def add(name: str, shape: tuple[int, ...], kind: gguf.GGMLQuantizationType) -> None:
        data = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if kind == Q.F32:
            writer.add_tensor(name, 1.0 + data * 0.1 if name.endswith("norm.weight") else data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)

    add("token_embd.weight", (len(tokens), HIDDEN), Q.Q8_0)
    head = HIDDEN // HEADS
    for layer in range(LAYERS):
        add(f"blk.{layer}.attn_norm.weight", (HIDDEN,), Q.F32)
        add(f"blk.{layer}.attn_q.weight", (HIDDEN, HIDDEN), Q.Q4_1)
        add(f"blk.{layer}.attn_k.weight", (KV_HEADS * head, HIDDEN), Q.Q4_1)
        add(f"blk.{layer}.attn_v.weight", (KV_HEADS * head, HIDDEN), Q.Q4_1)
        add(f"blk.{layer}.attn_output.weight", (HIDDEN, HIDDEN), Q.Q4_1)
        add(f"blk.{layer}.ffn_norm.weight", (HIDDEN,), Q.F32)
        add(f"blk.{layer}.ffn_gate.weight", (FFN, HIDDEN), Q.Q4_1)
        add(f"blk.{layer}.ffn_up.weight", (FFN, HIDDEN), Q.Q4_1)
        add(f"blk.{layer}.ffn_down.weight", (HIDDEN, FFN), Q.Q4_1)
    add("output_norm.weight", (HIDDEN,), Q.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
