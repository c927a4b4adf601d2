"""Runs inside the sandbox (stdlib only, ``python -I -S``): executes untrusted candidate programs.

Never imported by the node: :mod:`knexa_node.learn.sandbox` copies this file
into a throw-away working directory and starts it there, inside nsjail or
under the rlimit guard. Reads ``jobs.json`` (a list of
``{"program": str, "timeout": float}``), forks one child per job and prints
one JSON line per job: ``{"i": n, "status": "passed"|"failed"|"timeout", "detail": str}``.

The child, before it runs a line of the candidate: gets its own process
group, points stdin/stdout/stderr at /dev/null (so a candidate cannot print
a forged result line), sets memory/CPU/file-size rlimits, and installs an
audit hook that refuses process creation, sockets, ctypes, and any file access outside the working directory and the
interpreter's own library. The hook cannot be removed once installed.
A job passes only if the child reports a per-job random token after the
tests ran, so ``os._exit(0)`` inside a candidate is a failure, not a pass. A
candidate written to dig the token out of memory (frames, ``gc``) could still
forge a pass: the stdlib needs ``sys._getframe``, so that is not blocked. The
sandbox protects the host; it does not make Pass@k cheat-proof against a
model trained to game it.
"""

import json
import os
import resource
import secrets
import select
import signal
import sys
import time

_BLOCKED_EVENTS = {
    "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
    "subprocess.Popen", "pty.spawn", "os.add_dll_directory", "sys.setrecursionlimit",
    "os.putenv", "os.unsetenv", "os.chroot", "os.setuid", "resource.setrlimit", "resource.prlimit",
}
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "_ctypes.", "winreg.", "mmap.", "webbrowser.")
_LIST_EVENTS = {"os.listdir", "os.scandir", "glob.glob", "os.walk"}
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod",
                "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree", "os.chdir",
                "shutil.copyfile", "shutil.move"}
_BLOCKED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing"}


def _install_guard(workdir: str, read_roots: tuple) -> None:
    def inside(path, roots) -> bool:
        if isinstance(path, int):
            return False  # raw file descriptors: a candidate must not reach the result pipe
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            path = os.fspath(path)
        full = os.path.realpath(os.path.join(workdir, path))
        return any(full == root or full.startswith(root + os.sep) for root in roots)

    def hook(event, args):
        if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].split(".")[0] in _BLOCKED_IMPORTS:
            raise PermissionError(f"sandbox: import of {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            roots = (workdir,) if writing else (workdir,) + read_roots
            if path is None or not inside(path, roots):
                raise PermissionError(f"sandbox: access to {path!r} is not allowed")
        elif event in _LIST_EVENTS:
            # The import system lists the library's directories; listing elsewhere is refused.
            if args and args[0] is not None and not inside(args[0], (workdir,) + read_roots):
                raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")
        elif event in _PATH_EVENTS:
            if args and not inside(args[0], (workdir,)):
                raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

    sys.addaudithook(hook)


def _child(program: str, token: bytes, write_fd: int, memory_mb: int, cpu_s: int, read_roots: tuple) -> None:
    os.setpgid(0, 0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    code = compile(program, "<candidate>", "exec")
    pipe = os.fdopen(write_fd, "wb", buffering=0)
    _install_guard(os.getcwd(), read_roots)
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as exc:  # the candidate's failure, whatever it is (SystemExit included)
        try:
            pipe.write(f"{type(exc).__name__}: {exc}"[:300].encode("utf-8", "replace"))
        except BaseException:
            pass
        os._exit(1)
    pipe.write(token)
    os._exit(0)


def _wait(pid: int, timeout: float) -> bool:
    """True if the child ended within ``timeout``; uses a pidfd so no polling."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        return bool(ready)
    finally:
        os.close(fd)


def main() -> None:
    memory_mb, cpu_s = int(sys.argv[1]), int(sys.argv[2])
    with open("jobs.json", encoding="utf-8") as handle:
        jobs = json.load(handle)
    os.remove("jobs.json")
    read_roots = tuple(sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}))
    for index, job in enumerate(jobs):
        token = secrets.token_hex(16).encode()
        read_fd, write_fd = os.pipe()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            try:
                _child(job["program"], token, write_fd, memory_mb, cpu_s, read_roots)
            except BaseException:
                pass
            os._exit(2)
        os.close(write_fd)
        finished = _wait(pid, float(job["timeout"]))
        if not finished:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, wait_status = os.waitpid(pid, 0)
        with os.fdopen(read_fd, "rb") as reader:
            message = reader.read(4096)
        if not finished:
            status, detail = "timeout", f"killed after {job['timeout']} s"
        elif message == token:
            status, detail = "passed", ""
        elif os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) in (signal.SIGXCPU, signal.SIGKILL):
            status, detail = "timeout", f"CPU limit ({signal.Signals(os.WTERMSIG(wait_status)).name})"
        elif os.WIFSIGNALED(wait_status):
            status, detail = "failed", f"killed by {signal.Signals(os.WTERMSIG(wait_status)).name}"
        else:
            status, detail = "failed", message.decode("utf-8", "replace")[:300]
        print(json.dumps({"i": index, "status": status, "detail": detail,
                          "seconds": round(time.monotonic() - started, 4)}), flush=True)


if __name__ == "__main__":
    main()
