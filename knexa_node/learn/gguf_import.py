"""GGUF checkpoint -> ordinary Hugging Face directory (config, tokenizer with chat template, safetensors).

transformers reads a GGUF file only with ``gguf`` installed, dequantizes it
to float32, and then refuses ``save_pretrained`` because the model carries
a GGUF ``quantization_config`` (DESIGN.md, "Offline models and data"). So the
import loads it once, rebuilds the same architecture with ``from_config``
from a config without ``quantization_config``, copies the dequantized
weights in with a strict ``load_state_dict``, and saves that. The result
loads with plain ``from_pretrained(DIR)``; ``gguf`` is not needed again.

The directory is written under a staging name beside ``out_dir`` and renamed
into place, so a crash never leaves a half-written model where a node would
load it. ``knexa-import.json`` in it records where the weights came from.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from knexa_node.fsutil import atomic_write_text

GGUF_MAGIC = b"GGUF"
IMPORT_RECORD = "knexa-import.json"


class GGUFImportError(ValueError):
    """The file is not a readable GGUF causal LM, or the output directory cannot be written."""


@dataclass(frozen=True)
class ImportReport:
    out_dir: str
    source: str
    source_sha256: str
    model_type: str
    parameters: int
    vocab_size: int
    chat_template: bool
    seconds: float


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gguf_file(path: Path) -> Path:
    """The resolved path of a regular file that starts with the GGUF magic, else :class:`GGUFImportError`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GGUFImportError(f"{path}: no such file")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise GGUFImportError(f"{path}: cannot read: {exc}") from None
    if magic != GGUF_MAGIC:
        raise GGUFImportError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    return path.resolve()


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise GGUFImportError(f"{out_dir}: exists and is not a directory")
        if any(out_dir.iterdir()) and not overwrite:
            raise GGUFImportError(f"{out_dir}: exists and is not empty (pass overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def import_gguf(gguf_path: Path | str, out_dir: Path | str, *, overwrite: bool = False) -> ImportReport:
    """Convert one GGUF file into a float32 HF directory at ``out_dir``."""
    started = time.monotonic()
    source = check_gguf_file(Path(gguf_path))
    out = Path(out_dir).expanduser().resolve()
    _prepare_out(out, overwrite)
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    except ImportError as exc:
        raise GGUFImportError(f"reading GGUF needs the 'pretrained' extra (gguf, accelerate): {exc}") from None
    except Exception as exc:  # noqa: BLE001
        # A third-party parser over untrusted bytes: a truncated file surfaces as struct.error, an
        # unmapped architecture as ValueError/KeyError, a bad tensor as RuntimeError. All mean "bad file".
        raise GGUFImportError(f"{source}: transformers cannot load it: {exc}") from None
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = ""
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict: every tensor of the architecture must come from the file, no silent random init.
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(loaded.generation_config)
    del loaded

    staging = out.parent / f".import-{out.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        report = ImportReport(str(out), source.name, _sha256(source), config.model_type,
                              sum(p.numel() for p in model.parameters()), int(config.vocab_size),
                              bool(getattr(tokenizer, "chat_template", None)), 0.0)
        record = dict(asdict(report), transformers=transformers.__version__)
        del record["seconds"], record["out_dir"]
        atomic_write_text(staging / IMPORT_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.rename(staging, out)
    except OSError as exc:
        raise GGUFImportError(f"{out}: cannot write the model directory: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportReport(**{**asdict(report), "seconds": time.monotonic() - started})
