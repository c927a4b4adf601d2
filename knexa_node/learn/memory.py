"""The memory guard: refuse a model whose weights need more memory than ``model.max_memory_gb``.

Called before loading, from the files alone: a safetensors file starts with
an 8-byte length and a JSON header listing each tensor's dtype and shape, so
the weight bytes are known without reading (or allocating) the weights.
Training adds to that: a LoRA adapter is small, but full training keeps a
gradient and two AdamW moments per weight (4x the weights in float32).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

GIB = 1 << 30
_MAX_HEADER = 100 << 20  # the safetensors format's own bound on its header
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}
# Resident bytes per weight byte while training: weights (1) + grad (1) + AdamW m and v (2).
TRAINING_FACTOR = {"lora": 1.0, "full": 4.0, "eval": 1.0}


class MemoryGuardError(ValueError):
    """The model does not fit the configured memory, or its weight files cannot be read."""


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    weight_bytes: int  # as stored on disk (the dtype it loads in by default)
    needed_bytes: int  # weights times the training factor

    @property
    def needed_gb(self) -> float:
        return self.needed_bytes / GIB


def _safetensors_header(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                raise MemoryGuardError(f"{path}: truncated safetensors file")
            (length,) = struct.unpack("<Q", raw)
            if length > _MAX_HEADER:
                raise MemoryGuardError(f"{path}: safetensors header of {length} bytes is too large")
            header = json.loads(handle.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MemoryGuardError(f"{path}: cannot read the safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise MemoryGuardError(f"{path}: safetensors header is not an object")
    return header


def estimate_weights(model_dir: Path | str) -> tuple[int, int]:
    """(parameters, bytes) of every ``*.safetensors`` file in ``model_dir``."""
    directory = Path(model_dir)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise MemoryGuardError(f"{directory}: no safetensors weights to size")
    parameters = nbytes = 0
    for path in files:
        for name, entry in _safetensors_header(path).items():
            if name == "__metadata__":
                continue
            try:
                count = 1
                for dim in entry["shape"]:
                    count *= int(dim)
                size = _DTYPE_BYTES[entry["dtype"]]
            except (KeyError, TypeError, ValueError):
                raise MemoryGuardError(f"{path}: malformed entry for tensor {name!r}") from None
            parameters += count
            nbytes += count * size
    return parameters, nbytes


def check_model_memory(model_dir: Path | str, max_memory_gb: float, *, train_mode: str = "lora") -> MemoryEstimate:
    """Raise :class:`MemoryGuardError` if the model needs more than ``max_memory_gb`` (0: no limit)."""
    if train_mode not in TRAINING_FACTOR:
        raise MemoryGuardError(f"unknown train mode {train_mode!r}")
    parameters, nbytes = estimate_weights(model_dir)
    estimate = MemoryEstimate(parameters, nbytes, int(nbytes * TRAINING_FACTOR[train_mode]))
    if max_memory_gb > 0 and estimate.needed_bytes > max_memory_gb * GIB:
        raise MemoryGuardError(
            f"{model_dir}: {parameters / 1e6:.1f}M parameters need about {estimate.needed_gb:.2f} GiB "
            f"({train_mode} training), more than model.max_memory_gb = {max_memory_gb:g}")
    return estimate
