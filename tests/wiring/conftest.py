"""Fixtures of the wiring tests (helpers live in wiring_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from wiring_helpers import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model"))
