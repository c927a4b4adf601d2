"""Documentation generated from code stays in step with it."""

from __future__ import annotations

from pathlib import Path

from knexa_node.config import render_reference

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()
    assert documented.strip() == render_reference().strip(), "run: knexa-node config-reference > docs/configuration.md"
