"""Maps that cannot go stale, and layers that hold: package docstrings list every module; light imports stay light.

Each package's ``__init__`` docstring maps it: one list line per module or
subpackage, naming it as ``:mod:`.name``` or ````name````. The CPM and the
model-name module are imported in a fresh interpreter to prove they leave
torch out (a test in this process would see torch imported by other tests).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from knexa_node.models import ModelRef, parse_model_path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ["knexa_node", "knexa_cpm", "knexa_lab", "cli"]  # cli/ installs as knexa_cli


def packages() -> list[Path]:
    found = []
    for top in PACKAGE_DIRS:
        found += sorted(p.parent for p in (ROOT / top).rglob("__init__.py"))
    return found


def members(package: Path) -> list[str]:
    modules = [p.stem for p in package.glob("*.py") if p.name != "__init__.py"]
    subpackages = [p.name for p in package.iterdir() if (p / "__init__.py").is_file()]
    return sorted(modules + subpackages)


def mapped(docstring: str, name: str) -> bool:
    line = re.compile(rf"^\s*-\s+(:mod:`\.{re.escape(name)}`|``{re.escape(name)}``)(\s|$)", re.MULTILINE)
    return bool(line.search(docstring))


def test_the_map_rule_needs_a_list_line_per_module():
    doc = "Map:\n\n- :mod:`.alpha`  one\n- ``beta``  two\n\nand gamma in prose, :mod:`.delta` mid-line\n"
    assert mapped(doc, "alpha") and mapped(doc, "beta")
    assert not mapped(doc, "gamma") and not mapped(doc, "delta") and not mapped(doc, "alp")


@pytest.mark.parametrize("package", packages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_is_on_its_package_map(package: Path):
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8"))) or ""
    missing = [name for name in members(package) if not mapped(docstring, name)]
    assert not missing, f"{package.relative_to(ROOT)}/__init__.py does not map: {', '.join(missing)}"


def modules_of(top: str) -> list[str]:
    base = ROOT / top
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imported_heavy(modules: list[str]) -> dict[str, bool]:
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "print(json.dumps({m: m in sys.modules for m in ('torch', 'transformers', 'peft')}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_every_cpm_module_leaves_torch_out():
    modules = modules_of("knexa_cpm")
    assert "knexa_cpm.service" in modules and "knexa_cpm.bandit" in modules
    assert imported_heavy(modules) == {"torch": False, "transformers": False, "peft": False}


def test_the_model_names_and_the_model_commands_import_no_torch():
    assert imported_heavy(["knexa_node.models", "knexa_cli.node_model"]) == {
        "torch": False, "transformers": False, "peft": False}


def test_the_probe_sees_torch_when_it_is_imported():
    assert imported_heavy(["knexa_node.learn.embedded"])["torch"]


@pytest.mark.parametrize("path, ref", [
    ("embedded:llama-tiny", ModelRef("embedded", "llama-tiny")),
    ("pretrained:smollm2-135m", ModelRef("pretrained", "smollm2-135m")),
    ("/models/smollm2", ModelRef("directory", "/models/smollm2")),
    ("embedded", ModelRef("directory", "embedded")),
])
def test_parse_model_path(path, ref):
    assert parse_model_path(path) == ref


def test_library_code_imports_at_the_top():
    """A function-local import hides a cycle or a heavy dependency; the CLI defers through cli/lazy.load instead."""
    found = []
    for top in PACKAGE_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for function in ast.walk(tree):
                if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(function)
                              if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not found, "import at the top (fix the layering), or through knexa_cli.lazy.load: " + ", ".join(found)
