"""Crash-safe persistence of an agent: trainable weights, optimizer state and metadata, per round.

Each save writes a fresh ``round-<n>`` directory (every file atomically),
then atomically repoints ``CURRENT`` at it, then removes older rounds. A
crash at any moment leaves ``CURRENT`` naming a complete directory.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from knexa_node.fsutil import atomic_write_bytes, atomic_write_text, fsync_directory, private_dir

CURRENT = "CURRENT"
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
META = "meta.json"


class StateError(ValueError):
    """The saved agent state is unreadable or belongs to a different model."""


def save_state(state_dir: Path, round_index: int, weights: dict[str, torch.Tensor],
               optimizer_state: dict, meta: dict) -> Path:
    private_dir(state_dir)
    target = state_dir / f"round-{round_index:06d}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(mode=0o700)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    atomic_write_bytes(target / WEIGHTS, save_safetensors(tensors))
    buffer = io.BytesIO()
    torch.save(optimizer_state, buffer)
    atomic_write_bytes(target / OPTIMIZER, buffer.getvalue())
    atomic_write_text(target / META, json.dumps(meta, sort_keys=True))
    fsync_directory(state_dir)
    atomic_write_text(state_dir / CURRENT, target.name + "\n")
    for old in state_dir.glob("round-*"):
        if old.is_dir() and old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_state(state_dir: Path) -> tuple[dict[str, torch.Tensor], dict, dict] | None:
    """(weights, optimizer state, meta) of the last complete save, or None if there is none."""
    pointer = state_dir / CURRENT
    if not pointer.exists():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    directory = state_dir / name
    if not name.startswith("round-") or "/" in name or not directory.is_dir():
        raise StateError(f"{pointer}: names a missing state directory {name!r}")
    try:
        weights = load_safetensors((directory / WEIGHTS).read_bytes())
        optimizer_state = torch.load(io.BytesIO((directory / OPTIMIZER).read_bytes()), weights_only=True)
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError) as exc:
        raise StateError(f"{directory}: unreadable agent state: {exc}") from None
    return weights, optimizer_state, meta
