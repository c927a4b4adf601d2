"""Models are built once before a consortium starts, and a launcher finds them built without starting torch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from knexa_lab import orchestrate
from knexa_lab.plan import DemoSettings
from knexa_node.learn.embedded import ensure_embedded
from knexa_node.learn.embedded_catalog import built_embedded_dir


def test_the_catalog_finds_exactly_the_directory_the_builder_made(tmp_path: Path) -> None:
    assert built_embedded_dir("gpt2-tiny", tmp_path) is None and built_embedded_dir("no-such", tmp_path) is None
    built = ensure_embedded("gpt2-tiny", tmp_path)
    assert built_embedded_dir("gpt2-tiny", tmp_path) == built
    assert built_embedded_dir("llama-tiny", tmp_path) is None  # another model is not there yet


def test_a_child_builds_only_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KNEXA_MODEL_CACHE", str(tmp_path))
    ensure_embedded("gpt2-tiny", tmp_path)
    children: list[list[str]] = []

    def child(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        children.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(orchestrate.subprocess, "run", child)
    orchestrate._build_models(DemoSettings(nodes=2, models=("embedded:gpt2-tiny",)))
    assert children == []
    orchestrate._build_models(DemoSettings(nodes=2, models=("embedded:gpt2-tiny", "embedded:llama-tiny")))
    assert [argv[-1:] for argv in children] == [["embedded:llama-tiny"]]
