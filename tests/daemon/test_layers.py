"""The role-neutral daemon imports nothing of a role, and no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import knexa_node.daemon as daemon_package

DAEMON = Path(daemon_package.__file__).parent
NEUTRAL = ("daemon", "role", "rounds", "control", "lock", "logs", "metrics", "sdnotify")
NODE_ROLE = ("node_services", "round_machine", "participant", "lessons", "cpm_link", "curve", "learner", "datasets",
             "exchanges", "packaging", "refusals", "unfinished")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


MODULES = {p.stem for p in DAEMON.glob("*.py")} - {"__init__"}


def test_the_neutral_daemon_imports_no_role_module():
    for name in sorted(MODULES & set(NEUTRAL)):
        imports = imported_modules(DAEMON / f"{name}.py")
        role = {m for m in imports if m.rsplit(".", 1)[-1] in NODE_ROLE or m.startswith(("knexa_cpm", "knexa_lab"))}
        assert not role, f"{name}.py imports {sorted(role)}"
        assert not any(m.startswith(("knexa_node.learn", "knexa_node.exchange", "knexa_node.audit")) for m in imports), name


def test_every_daemon_module_is_sorted_into_one_side():
    assert MODULES <= set(NEUTRAL) | set(NODE_ROLE), MODULES - set(NEUTRAL) - set(NODE_ROLE)


def test_the_neutral_daemon_and_the_round_machine_load_without_torch():
    modules = [f"knexa_node.daemon.{name}" for name in sorted(MODULES & set(NEUTRAL)) + ["round_machine"]]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
