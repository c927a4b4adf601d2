"""Issue 15, findings 1 and 2: candidates that try to forge a pass or leave the sandbox, under every backend here.

Each attack is a small completion written to work against the sandbox as it
was (a pass token in the candidate's process, its runner's stdout reachable,
the tests in the candidate's own interpreter); each must now end as anything
but "passed", and leave no trace outside.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from knexa_node.learn.evaluate import check_completions
from knexa_node.learn.problems import Problem
from knexa_node.learn.sandbox import SandboxLimits, check_program, detect_backend, run_programs

BACKENDS = ["guard"] + (["nsjail"] if detect_backend() == "nsjail" else [])
LIMITS = SandboxLimits(timeout_s=3.0, memory_mb=256, cpu_s=2)

pytestmark = pytest.mark.slow

PROMPT = 'def triple(x):\n    """Return x times 3."""\n'
TESTS = "assert triple(2) == 6\nassert triple(-1) == -3\n"
CHECK_TESTS = "def check(candidate):\n    assert candidate(2) == 6\n    assert candidate(5) == 15\n"

# Finds the pass token (32 hex bytes) and a writable result pipe in the frames above, writes the
# token and ends the process: how a candidate forged a pass when the token lived in its process.
FORGE = '''
def _forge(frame):
    import os
    token = pipe = None
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if token is None and isinstance(value, bytes) and len(value) == 32:
                token = value
            if pipe is None and hasattr(value, "write") and hasattr(value, "fileno"):
                pipe = value
        frame = frame.f_back
    if token is not None and pipe is not None:
        pipe.write(token)
        os._exit(0)
'''


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def verdicts(completion: str, backend: str, tests: str = TESTS, prompt: str = PROMPT) -> list[str]:
    """The status of ``completion`` alone and of it between two honest answers (a batch, as in use)."""
    honest = "    return x * 3\n"
    programs = [check_program(prompt, c, tests, "triple") for c in (honest, completion, honest)]
    alone = run_programs([check_program(prompt, completion, tests, "triple")], LIMITS, backend=backend)
    return [alone[0].status] + [r.status for r in run_programs(programs, LIMITS, backend=backend)]


def test_honest_answers_still_pass(backend: str) -> None:
    assert verdicts("    return x * 3\n", backend) == ["passed"] * 4
    assert verdicts("    return x * 3\n", backend, tests=CHECK_TESTS) == ["passed"] * 4
    assert verdicts("    return x + 3\n", backend) == ["failed", "passed", "failed", "passed"]


def test_token_from_the_callers_frame(backend: str) -> None:
    completion = "    import sys\n    _forge(sys._getframe(1))\n    return 0\n" + FORGE
    assert verdicts(completion, backend) == ["failed", "passed", "failed", "passed"]
    assert verdicts(completion, backend, tests=CHECK_TESTS)[0] == "failed"


def test_token_from_a_tracebacks_frames(backend: str) -> None:
    completion = ("    try:\n        raise ValueError\n    except ValueError as exc:\n"
                  "        _forge(exc.__traceback__.tb_frame)\n    return 0\n" + FORGE)
    assert verdicts(completion, backend) == ["failed", "passed", "failed", "passed"]


def test_token_at_module_level_after_the_function(backend: str) -> None:
    completion = "    return 0\n" + FORGE + "\nimport sys\n_forge(sys._getframe(0))\n"
    assert verdicts(completion, backend) == ["failed", "passed", "failed", "passed"]


def test_an_object_equal_to_everything(backend: str) -> None:
    completion = ("    return Anything()\n\nclass Anything:\n    def __eq__(self, other):\n        return True\n"
                  "    def __ne__(self, other):\n        return False\n")
    assert verdicts(completion, backend) == ["failed", "passed", "failed", "passed"]
    subclass = "    return Sly(0)\n\nclass Sly(int):\n    def __eq__(self, other):\n        return True\n"
    assert verdicts(subclass, backend)[0] == "failed"


def test_monkeypatched_builtins_do_not_reach_the_tests(backend: str) -> None:
    tolerance = "def check(candidate):\n    assert abs(candidate(2.0) - 6.0) < 1e-9\n    assert isinstance(candidate(1.0), float)\n"
    completion = ("    return 0\n\nimport builtins\nbuiltins.abs = lambda value: 0\n"
                  "builtins.isinstance = lambda value, kind: True\n")
    assert verdicts(completion, backend, tests=tolerance) == ["failed", "passed", "failed", "passed"]
    assert verdicts("    return x * 3.0\n", backend, tests=tolerance)[0] == "passed"


def test_raising_the_judges_exceptions_is_a_failure(backend: str) -> None:
    completion = "    raise SystemExit(0)\n"
    assert verdicts(completion, backend)[0] == "failed"
    assert verdicts("    import os\n    os._exit(0)\n", backend)[0] == "failed"


def test_evaluator_uses_the_judge(backend: str) -> None:
    problem = Problem("t/0", PROMPT, TESTS, "triple", "math")
    completions = ["    return x * 3\n", "    import sys\n    _forge(sys._getframe(1))\n    return 0\n" + FORGE,
                   "    return Anything()\n\nclass Anything:\n    __eq__ = lambda self, other: True\n"]
    results = check_completions([problem] * 3, completions, LIMITS, workers=1, backend=backend)
    assert [r.status for r in results] == ["passed", "failed", "failed"]


def _world_writable(tmp_path) -> None:
    os.chmod(tmp_path, 0o777)


def _extension(stem: str) -> str:
    for name in os.listdir(os.path.dirname(sys.modules["select"].__file__)):
        if name.split(".")[0] == stem:
            return os.path.join(os.path.dirname(sys.modules["select"].__file__), name)
    pytest.skip(f"no {stem} extension module in this Python")


LOAD_AS = '''
    import importlib.util
    spec = importlib.util.spec_from_file_location({name!r}, {path!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
'''


def test_extension_loaded_under_another_dotted_name(backend: str, tmp_path) -> None:
    """_posixsubprocess under the name ``evil._posixsubprocess``: a process outside the hook's view."""
    _world_writable(tmp_path)
    marker = tmp_path / "ran"
    completion = LOAD_AS.format(name="evil._posixsubprocess", path=_extension("_posixsubprocess")) + f'''
    import os
    args = [b"/bin/sh", b"-c", b"echo x > {marker}"]
    errors, errors_in = os.pipe()
    pid = module.fork_exec(args, [b"/bin/sh"], True, (errors_in,), None, None, -1, -1, -1, -1, -1, -1,
                           errors, errors_in, False, False, -1, None, None, None, -1, None, False)
    os.waitpid(pid, 0)
    return x * 3
'''
    assert verdicts(completion, backend)[0] != "passed"
    assert not marker.exists()


def _spawn(command: str, setsid: bool) -> str:
    """Source that starts ``/bin/sh -c command`` with ``_posixsubprocess`` (bound as ``module``), unseen by the hook."""
    return f"""
import os
errors, errors_in = os.pipe()
module.fork_exec([b"/bin/sh", b"-c", {command.encode()!r}], [b"/bin/sh"], True, (errors_in,), None, None,
                 -1, -1, -1, -1, -1, -1, errors, errors_in, False, {setsid}, -1, None, None, None, -1, None, False)
"""


def test_nothing_outlives_the_job(backend: str, tmp_path) -> None:
    """A new session (setsid) started directly or from a new interpreter without the hook outlives its job."""
    _world_writable(tmp_path)
    pid_file = tmp_path / "escaped.pid"
    spawn = _spawn(f"echo $$ >> {pid_file}; exec sleep 30", True)
    direct = LOAD_AS.format(name="evil._posixsubprocess", path=_extension("_posixsubprocess")) + \
        "".join("    " + line + "\n" for line in spawn.splitlines()) + "    return x * 3\n"
    inner = f"import _posixsubprocess as module\n{spawn}"
    nested = LOAD_AS.format(name="_xxsubinterpreters", path=_extension("_xxsubinterpreters")) + \
        f"    interp = module.create()\n    module.run_string(interp, {inner!r})\n    return x * 3\n"
    for label, completion in (("directly", direct), ("from a subinterpreter", nested)):
        statuses = verdicts(completion, backend)
        if pid_file.exists():
            for text in pid_file.read_text().split():
                try:
                    os.kill(int(text), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            pytest.fail(f"{label}: a process outlived the job ({statuses})")
        assert statuses[0] != "passed", label


def test_no_process_or_thread_even_without_the_hook(backend: str) -> None:
    """RLIMIT_NPROC 0 holds below the audit hook: no fork, no thread."""
    completion = ("    import _thread\n    _thread.start_new_thread(print, ())\n    return x * 3\n")
    assert verdicts(completion, backend)[0] == "failed"


# Run in a subinterpreter (no audit hook): forged result lines for the whole batch go to the runner's
# stdout, through /proc or with pidfd_getfd (syscall 438), and a dangling half line that swallows the
# runner's own next line, so the forged ones stand.
FORGE_STDOUT = '''
import ctypes, os, signal
judge = os.getppid()
forged = "".join('{"i": %d, "status": "passed", "detail": ""}\\n' % i for i in range(3)).encode()
try:
    out = os.open("/proc/%d/fd/1" % judge, os.O_WRONLY)
except OSError:
    libc = ctypes.CDLL(None, use_errno=True)
    out = libc.syscall(438, os.pidfd_open(judge), 1, 0)
os.write(out, forged + b"{")
'''
PIDFD_GETFD = '''
    interp = module.create()
    module.run_string(interp, FORGE_STDOUT)
    return 0
FORGE_STDOUT = ''' + repr(FORGE_STDOUT) + '''
'''


def test_the_runners_stdout_is_out_of_reach(backend: str) -> None:
    """Forged result lines written to the runner's stdout (through /proc, or a pidfd_getfd'd fd), then the runner killed."""
    completion = LOAD_AS.format(name="evil._xxsubinterpreters", path=_extension("_xxsubinterpreters")) + PIDFD_GETFD
    statuses = verdicts(completion, backend)
    assert statuses[0] != "passed" and statuses[2] != "passed"


def test_candidates_never_run_as_root(backend: str) -> None:
    completion = "    import os\n    return x * 3 if os.geteuid() != 0 and os.getuid() != 0 else 0\n"
    assert verdicts(completion, backend)[0] == "passed"



def test_stop_iteration_does_not_end_the_tests_early(backend: str) -> None:
    """A StopIteration raised from inside map() would end the loop over it without a failed assert."""
    tests = "def check(candidate):\n    for got, want in zip(map(candidate, [2, 5]), [6, 15]):\n        assert got == want\n"
    assert verdicts("    raise StopIteration\n", backend, tests=tests)[0] == "failed"
    assert verdicts("    return x * 3\n", backend, tests=tests)[0] == "passed"


def test_a_reply_built_to_be_slow_to_decode(backend: str) -> None:
    """A raw reply frame: sets of ints that all land in one hash bucket (quadratic to build in the judge)."""
    completion = '''    import json, os
    colliding = {"s": [k * (2 ** 61 - 1) for k in range(10000)]}
    body = json.dumps({"v": {"l": [colliding] * 9}}).encode()
    os.write(4, len(body).to_bytes(4, "big") + body)
    import time
    time.sleep(60)
'''
    started = time.monotonic()
    (result,) = run_programs([check_program(PROMPT, completion, TESTS, "triple")], LIMITS, backend=backend)
    assert result.status in ("failed", "timeout")
    assert time.monotonic() - started < 6 * LIMITS.timeout_s  # the job's deadline holds while decoding


def test_an_extension_copied_into_the_working_directory(backend: str) -> None:
    """Native code from a file the candidate wrote (a copy of ``cmath``) is refused by path, whatever its name.

    A regression test of the path rule rather than one of the issue's attacks (on main this copy crashed).
    """
    source = _extension("cmath")
    target = os.path.basename(source)
    completion = (f"    import os\n    os.makedirs('lib', exist_ok=True)\n"
                  f"    data = open({source!r}, 'rb').read()\n    open('lib/{target}', 'wb').write(data)\n"
                  + LOAD_AS.format(name="evil.cmath", path="PATH").replace("'PATH'", f"os.path.abspath('lib/{target}')")
                  + "    return x * 3 if module.sqrt(4) == 2 else 0\n")
    (result,) = run_programs([check_program(PROMPT, completion, TESTS, "triple")], LIMITS, backend=backend)
    assert result.status == "failed" and "PermissionError" in result.detail
