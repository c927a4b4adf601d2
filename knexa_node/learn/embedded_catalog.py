"""The embedded models' catalog and where each is cached: no torch, so that a launcher can look before it builds.

:mod:`.embedded` builds a model from its :class:`ModelSpec` into
``<cache>/<name>-<key>``; the key hashes the spec and torch's version (a
new torch may build other weights from the same seed). A directory holding
:data:`MARKER` is complete (it is renamed into place atomically).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from knexa_node.models import default_cache_dir

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MARKER = "knexa-embedded.txt"


@dataclass(frozen=True)
class TokenizerSpec:
    vocab_size: int
    corpus_seed: int = 90_001  # disjoint from task seeds (small integers)
    corpus_per_category: int = 150


@dataclass(frozen=True)
class ModelSpec:
    model_type: str  # llama, qwen2, gpt_neox, gpt2, bloom
    tokenizer: TokenizerSpec
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int = 512
    seed: int = 0


TOKENIZER_1K = TokenizerSpec(vocab_size=1024)
TOKENIZER_768 = TokenizerSpec(vocab_size=768)

EMBEDDED: dict[str, ModelSpec] = {
    "llama-tiny": ModelSpec("llama", TOKENIZER_1K, hidden=192, layers=4, heads=4, intermediate=512),
    "qwen2-tiny": ModelSpec("qwen2", TOKENIZER_1K, hidden=192, layers=4, heads=4, intermediate=512, seed=1),
    "neox-tiny": ModelSpec("gpt_neox", TOKENIZER_768, hidden=192, layers=4, heads=4, intermediate=512, seed=2),
    "gpt2-tiny": ModelSpec("gpt2", TOKENIZER_768, hidden=192, layers=4, heads=4, intermediate=512, seed=3),
}


def spec_key(name: str, spec: ModelSpec, torch_version: str) -> str:
    digest = hashlib.sha256(repr((spec, torch_version.split("+")[0])).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def embedded_dir(name: str, torch_version: str, cache_dir: Path | None = None) -> Path:
    """Where embedded model ``name`` (a key of :data:`EMBEDDED`) is cached for this torch version, built or not."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / spec_key(name, EMBEDDED[name], torch_version)


def built_embedded_dir(name: str, cache_dir: Path | None = None) -> Path | None:
    """The complete cached directory of embedded model ``name``, or None (unknown, not built yet, or torch's
    version unreadable without importing it): a cheap look before starting a process that would build it."""
    if name not in EMBEDDED:
        return None
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None
    final = embedded_dir(name, version, cache_dir)
    return final if (final / MARKER).exists() else None
