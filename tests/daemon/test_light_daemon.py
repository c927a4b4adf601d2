"""Light daemons: a relay and the CLI's read commands never load torch; a learning node is ready before its model.

The relay is a real ``knexa-node start`` process; that it holds no torch is read
from its memory map (``libtorch`` is mapped by any ``import torch``). The read
commands run in a fresh interpreter each, against that running relay, and report
what they imported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from knexa_node.daemon.control import call

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
HEAVY = ("torch", "transformers", "peft")

# Runs one `knexa-node` command in this interpreter, then prints which heavy modules it imported.
RUN_COMMAND = """
import json, sys
from knexa_cli.node import app
try:
    app(sys.argv[1:], standalone_mode=False)
except BaseException:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
""".format(heavy=HEAVY)


def init(home: Path, *extra: str) -> None:
    subprocess.run([str(BIN / "knexa-node"), "init", "--home", str(home), "--listen", "/ip4/127.0.0.1/tcp/0", *extra],
                   check=True, capture_output=True, env=ENV, timeout=120)


def start(home: Path) -> tuple[subprocess.Popen[str], dict]:
    proc = subprocess.Popen([str(BIN / "knexa-node"), "start", "--home", str(home), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    return proc, json.loads(proc.stdout.readline())  # bounded by the pytest timeout


def stop(proc: subprocess.Popen[str]) -> list[dict]:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]


def maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def heavy_imports_of(*args: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", RUN_COMMAND, *args], capture_output=True, text=True, env=ENV, timeout=120)
    return json.loads(result.stderr.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the daemon's memory map from /proc (Linux)")
def test_a_relay_and_the_read_commands_never_load_torch(tmp_path):
    home = tmp_path / "relay"
    init(home)
    proc, ready = start(home)
    try:
        assert ready["event"] == "ready" and ready["role"] == "node"
        assert call(home / "control.sock", "status")["peer_id"] == ready["peer_id"]
        assert not maps_torch(proc.pid)
        for command in (["--help"], ["status", "--home", str(home)], ["peers", "--home", str(home), "--json"],
                        ["audit", "verify", "--home", str(home)], ["doctor", "--offline", "--home", str(home)],
                        ["id", "--home", str(home)]):
            assert heavy_imports_of(*command) == [], command
        assert not maps_torch(proc.pid)  # still none after serving the commands
    finally:
        proc.kill()
    events = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    assert "relay-only" in [e["event"] for e in events]


def test_the_check_sees_torch_where_it_is_loaded():
    """The probe above can fail: a command path that imports torch is reported."""
    code = RUN_COMMAND.replace("from knexa_cli.node import app", "import torch\nfrom knexa_cli.node import app")
    result = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert "torch" in json.loads(result.stderr.strip().splitlines()[-1])


def test_the_learning_role_loads_without_torch_which_comes_with_the_model():
    code = ("import sys\nimport knexa_node.daemon.node_services, knexa_cli.services\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
            "import knexa_node.daemon.learner as learner\nlearner.learning_engine()\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "['peft', 'torch', 'transformers']"]


def test_a_learning_node_is_ready_before_its_model_and_says_when_the_model_is(tmp_path):
    home = tmp_path / "learner"
    init(home, "--model", "embedded:llama-tiny")
    proc, ready = start(home)
    try:
        assert ready["event"] == "ready"
        status = call(home / "control.sock", "status")
        assert status["learner"]["learner"]["model_state"] in ("loading", "ready")
        loaded = None
        for line in proc.stderr:  # bounded by the pytest timeout
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") in ("model-ready", "model-load-failed"):
                loaded = event
                break
        assert loaded is not None and loaded["event"] == "model-ready", loaded
        assert loaded["ts"] >= ready["ts"] and loaded["seconds"] > 0
        assert call(home / "control.sock", "status")["learner"]["learner"]["model_state"] == "ready"
    finally:
        proc.kill()
