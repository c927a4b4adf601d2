"""Generated code is contained: each attack runs under every backend available here."""

from __future__ import annotations

import os
import socket
import time

import pytest

from knexa_node.learn import sandbox
from knexa_node.learn.sandbox import SandboxLimits, check_program, detect_backend, run_programs

BACKENDS = ["guard"] + (["nsjail"] if detect_backend() == "nsjail" else [])
LIMITS = SandboxLimits(timeout_s=1.0, memory_mb=256, cpu_s=1)

pytestmark = pytest.mark.slow


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def run_one(program: str, backend: str) -> str:
    (result,) = run_programs([program], LIMITS, backend=backend)
    return result.status


def test_passing_and_failing_programs(backend: str) -> None:
    results = run_programs(["assert sum([1, 2]) == 3", "assert 1 == 2", "import collections, json\nassert json.dumps([1]) == '[1]'"],
                           LIMITS, backend=backend)
    assert [r.status for r in results] == ["passed", "failed", "passed"]
    assert "AssertionError" in results[1].detail


def test_humaneval_check_is_called_with_the_entry_point(backend: str) -> None:
    tests = "def check(candidate):\n    assert candidate(2) == 4\n"
    right = check_program("def double(x):\n", "    return x * 2\n", tests, "double")
    wrong = check_program("def double(x):\n", "    return x + 1\n", tests, "double")
    assert [r.status for r in run_programs([right, wrong], LIMITS, backend=backend)] == ["passed", "failed"]


def test_infinite_loop_and_sleep_time_out(backend: str) -> None:
    started = time.monotonic()
    statuses = [r.status for r in run_programs(["while True:\n    pass", "import time\ntime.sleep(60)"], LIMITS, backend=backend)]
    assert statuses == ["timeout", "timeout"]
    assert time.monotonic() - started < 10


def test_fork_bomb_is_contained(backend: str) -> None:
    started = time.monotonic()
    status = run_one("import os\nwhile True:\n    os.fork()", backend)
    assert status != "passed"
    assert time.monotonic() - started < 10
    assert run_one("assert True", backend) == "passed"  # the machine is still usable


def test_huge_allocation_fails(backend: str) -> None:
    assert run_one("block = bytearray(8 * 1024 ** 3)\nassert len(block) > 0", backend) == "failed"


def test_os_system_does_not_run(backend: str, tmp_path) -> None:
    marker = tmp_path / "pwned"
    os.chmod(tmp_path, 0o777)
    assert run_one(f"import os\nassert os.system('touch {marker}') == 0", backend) == "failed"
    assert run_one(f"import subprocess\nsubprocess.run(['touch', '{marker}'])", backend) == "failed"
    assert not marker.exists()


def test_node_home_is_unreadable(backend: str, tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "identity.key").write_text("SECRET-KEY")
    program = f"data = open({str(home / 'identity.key')!r}).read()\nassert 'SECRET' in data"
    assert run_one(program, backend) == "failed"
    assert run_one(f"import os\nassert os.listdir({str(home)!r})", backend) == "failed"


def test_no_network(backend: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\ns.sendall(b'x')"
        assert run_one(program, backend) == "failed"
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_early_exit_is_not_a_pass(backend: str) -> None:
    statuses = [r.status for r in run_programs(["import os\nos._exit(0)\nassert False", "raise SystemExit(0)"],
                                               LIMITS, backend=backend)]
    assert statuses == ["failed", "failed"]


def test_writes_stay_in_the_throwaway_directory(backend: str, tmp_path) -> None:
    os.chmod(tmp_path, 0o777)
    target = tmp_path / "outside.txt"
    assert run_one("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'", backend) == "passed"
    assert run_one(f"open({str(target)!r}, 'w').write('x')", backend) == "failed"
    assert not target.exists()


def test_a_failing_judge_is_an_error_not_a_timeout(backend: str, tmp_path, monkeypatch) -> None:
    broken = tmp_path / "runner.py"
    broken.write_text("raise SystemExit('the judge cannot start')\n")
    monkeypatch.setattr(sandbox, "_RUNNER", broken)
    (result,) = run_programs(["assert True"], LIMITS, backend=backend)
    assert result.status == "error" and "cannot start" in result.detail
