"""Every package directory is listed in pyproject (cli/ installs as knexa_cli)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("knexa_node", "knexa_node"), ("knexa_cpm", "knexa_cpm"), ("knexa_lab", "knexa_lab"), ("cli", "knexa_cli")):
        for init in (ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *relative)))
    assert found == listed

