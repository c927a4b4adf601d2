"""Runs inside the sandbox (stdlib only, ``python -I -S``): a judge that checks untrusted candidates from outside.

Never imported by the node: :mod:`knexa_node.learn.sandbox` copies this file
into a throw-away working directory and starts it there, inside nsjail or
under the guard, with the batch as JSON on stdin. It prints one JSON line per
job on stdout: ``{"i": n, "status": "passed"|"failed"|"timeout"|"error", "detail": str}``.

Why this shape (the verdict must not be forgeable by the code it judges):

- **Two processes per job.** This process is the *judge*; for each job it
  forks one *candidate* process that executes ``prompt + completion`` and
  then only answers calls: it receives the arguments of one call of the entry
  point over a pipe and sends back the return value (or the exception's type
  name and message) as data. The test code (``assert f(3) == 7`` lines or
  HumanEval's ``check(candidate)``) runs here, in the judge, with the prompt's
  own definitions and a proxy in the entry point's place. The pass/fail
  decision is the judge's alone: there is no token for the candidate to find,
  and it never holds the judge's stdout.
- **Plain data only.** Values cross the pipe as tagged JSON of None, bool,
  int, float, complex, str, bytes, list, tuple, dict, set and frozenset, each
  checked by exact type; anything else (an object with a lying ``__eq__``, a
  subclass of int) is refused. The judge decodes the bytes itself, so what it
  compares are fresh builtin values: a candidate can choose its return values
  and nothing else.
- **Pristine builtins.** The judge never executes candidate code, and each
  job's tests get a fresh copy of the builtins captured at start: a candidate
  that rebinds ``abs`` or ``isinstance`` changes its own process only.
- **Out of reach.** The judge makes itself non-dumpable (``PR_SET_DUMPABLE``
  0), so a process of the same user cannot ptrace it, read ``/proc/<pid>/mem``
  or its fds, or take an fd with ``pidfd_getfd``; under the guard as root it
  is also another user (candidates drop to ``nobody``). The candidate keeps
  two pipe fds and ``/dev/null``; it may not create processes or threads
  (``RLIMIT_NPROC`` 0, which holds even for native code), so it cannot leave
  its process group, and it is killed when its job ends. Inside nsjail the
  judge is PID 1 of its namespace and also kills every other process there
  after each job.
- **Fast.** One interpreter per batch; a fork per candidate from a judge that
  has already imported the common stdlib, so a candidate costs a fork and its
  own code, and a call costs a pipe round trip.

The audit hook installed in each candidate (no process creation, new
interpreters, code objects built by hand, sockets, ctypes, extension modules
outside the standard library's allowed list, files outside its directory) is
a guard that keeps honest-but-wrong code from doing harm; the verdict does not
rest on it. A plain program (no entry point) is executed in a candidate
process and passes when it runs to its end: such a program judges itself, and
only jobs with an entry point get a verdict from outside.
"""

import builtins
import ctypes
import fcntl
import gc
import json
import math
import os
import resource
import select
import signal
import sys
import time

NOBODY = 65534
MAX_FRAME = 4 << 20  # bytes of one encoded value; test values are small
MAX_DEPTH = 64
MAX_VALUES = 100_000  # plain values in one reply
MAX_MEMBERS = 10_000  # of one set or dict: colliding keys make building it quadratic
_PR_SET_DUMPABLE = 4
_CLONE_NEWNET = 0x40000000

# Imported here, before any fork: candidates find them loaded (no per-candidate import cost). Candidates that
# drop to nobody may be unable to read the library at all (an interpreter under /root): for them a wider set.
_PRELOAD = ("math", "re", "string", "collections", "itertools", "functools", "operator", "heapq", "bisect",
            "typing", "hashlib")
_PRELOAD_FOR_NOBODY = ("cmath", "collections.abc", "random", "statistics", "fractions", "decimal", "copy",
                       "datetime", "json", "textwrap", "enum", "dataclasses", "array", "numbers", "time", "calendar",
                       "unicodedata", "struct", "binascii", "base64", "abc", "types", "contextlib", "difflib",
                       "pprint", "zlib", "keyword", "codecs")

_BLOCKED_EVENTS = {
    "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
    "subprocess.Popen", "pty.spawn", "os.add_dll_directory", "sys.setrecursionlimit",
    "os.putenv", "os.unsetenv", "os.chroot", "os.setuid", "resource.setrlimit", "resource.prlimit",
    "cpython.PyInterpreterState_New", "code.__new__", "sys.addaudithook", "_thread.start_new_thread",
}
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "_ctypes.", "winreg.", "mmap.", "webbrowser.", "sqlite3.")
_LIST_EVENTS = {"os.listdir", "os.scandir", "glob.glob", "os.walk"}
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod",
                "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree", "os.chdir",
                "shutil.copyfile", "shutil.move"}
# Refused when any dotted part of a module name is one of these.
_BLOCKED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing",
                    "_xxsubinterpreters", "_xxinterpchannels", "_interpreters", "_interpchannels", "_interpqueues",
                    "_testcapi", "_testinternalcapi", "mmap", "_socket", "socket", "sqlite3", "_sqlite3"}
# Extension modules (native code) a candidate may load: these file stems, from the library's own
# lib-dynload directory, under whatever name. The rest can start interpreters, processes or sockets.
_ALLOWED_EXTENSIONS = {"math", "cmath", "_json", "_struct", "_datetime", "_heapq", "_bisect", "array", "_random",
                       "_sha1", "_sha256", "_sha512", "_sha3", "_md5", "_blake2", "_hashlib", "binascii", "_decimal",
                       "unicodedata", "zlib", "_statistics", "_contextvars", "_pickle", "_csv", "_opcode", "_queue",
                       "_zoneinfo", "_bz2", "_lzma", "_typing", "_elementtree", "pyexpat", "select", "_uuid",
                       "_multibytecodec", "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr",
                       "_codecs_tw"}


class Unsupported(ValueError):
    """A value that is not plain data."""


# --- the codec: tagged JSON of plain values -------------------------------------------------------

def encode(value, depth: int = 0):
    """A JSON-ready tree for ``value``; exact types only (a subclass is not plain data)."""
    if depth > MAX_DEPTH:
        raise Unsupported("nested too deep")
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is float or kind is str:
        return value
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        tag = {list: "l", tuple: "t", set: "s", frozenset: "f"}[kind]
        return {tag: [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    raise Unsupported(f"{kind.__name__} is not plain data")


def decode(tree, deadline: float = math.inf):
    """The plain value of a tree made by :func:`encode`; anything else raises :class:`Unsupported`.

    Bounded in nesting, in values (:data:`MAX_VALUES`) and in time: a set or dict of keys crafted to
    collide in one hash bucket costs quadratic time, so the deadline is checked as values are built.
    """
    count = [0]

    def build(node, depth: int):
        count[0] += 1
        if count[0] > MAX_VALUES or depth > MAX_DEPTH:
            raise Unsupported("too many or too deeply nested values")
        if count[0] % 1024 == 0 and time.monotonic() > deadline:
            raise Unsupported("too slow to decode")
        kind = type(node)
        if node is None or kind is bool or kind is int or kind is float or kind is str:
            return node
        if kind is not dict or len(node) != 1:
            raise Unsupported("not a tagged value")
        ((tag, body),) = node.items()
        if tag in ("l", "t") and type(body) is list:
            items = [build(v, depth + 1) for v in body]
            return items if tag == "l" else tuple(items)
        if tag in ("s", "f", "d") and type(body) is list:
            if len(body) > MAX_MEMBERS:
                raise Unsupported(f"a set or dict of more than {MAX_MEMBERS} members")
            out = {} if tag == "d" else set()
            for number, item in enumerate(body):
                if number % 256 == 255 and time.monotonic() > deadline:  # one insertion may cost len(out)
                    raise Unsupported("too slow to decode")
                try:
                    if tag != "d":
                        out.add(build(item, depth + 1))
                    elif type(item) is list and len(item) == 2:
                        out[build(item[0], depth + 1)] = build(item[1], depth + 1)
                    else:
                        raise Unsupported("a bad dict entry")
                except TypeError:
                    raise Unsupported("an unhashable set member or dict key") from None
            return frozenset(out) if tag == "f" else out
        if tag == "b" and type(body) is str:
            try:
                return bytes.fromhex(body)
            except ValueError:
                raise Unsupported("bad bytes") from None
        if tag == "c" and type(body) is list and len(body) == 2 and all(type(v) in (int, float) for v in body):
            return complex(body[0], body[1])
        raise Unsupported("an unknown tag")

    return build(tree, 0)


def frame(message) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return len(data).to_bytes(4, "big") + data


# --- the candidate process ------------------------------------------------------------------------

def _install_guard(workdir: str, read_roots: tuple, dynload: str) -> None:
    def inside(path, roots) -> bool:
        if isinstance(path, int):
            return False  # raw file descriptors: a candidate must not reach the pipes by number
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            path = os.fspath(path)
        full = os.path.realpath(os.path.join(workdir, path))
        return any(full == root or full.startswith(root + os.sep) for root in roots)

    def hook(event, args):
        if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import":
            name, filename = args[0], args[1]
            if any(part in _BLOCKED_IMPORTS for part in str(name).split(".")):
                raise PermissionError(f"sandbox: import of {name} is not allowed")
            if filename is not None and not str(filename).endswith(".py"):
                # Native code, however it is named: only allowed stems from the library's own directory.
                full = os.path.realpath(os.fsdecode(filename) if isinstance(filename, bytes) else str(filename))
                stem = os.path.basename(full).split(".")[0]
                if os.path.dirname(full) != dynload or stem not in _ALLOWED_EXTENSIONS:
                    raise PermissionError(f"sandbox: loading {full} is not allowed")
        elif event == "open":
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


def _read_exact(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _candidate(job: dict, calls_fd: int, replies_fd: int, scratch: str, config: dict) -> None:
    """The forked child: contain itself, run the candidate's program, then answer calls. Never returns."""
    os.setpgid(0, 0)
    os.chdir(scratch)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    high_calls = fcntl.fcntl(calls_fd, fcntl.F_DUPFD, 10)  # out of the way first: the pipes may sit on 3 or 4
    high_replies = fcntl.fcntl(replies_fd, fcntl.F_DUPFD, 10)
    os.dup2(high_calls, 3)
    os.dup2(high_replies, 4)
    # The judge's stdout, stdin, and every other fd are gone (close_range(2): one call however wide).
    os.closerange(5, max(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1 << 16))
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    limit = int(config["memory_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (int(config["cpu_s"]), int(config["cpu_s"])))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no process, no thread: nothing outlives the job
    try:
        code = compile(job["program"], "<candidate>", "exec")
    except BaseException as exc:  # a syntax error is the candidate's failure
        _write_all(4, frame({"x": [type(exc).__name__, str(exc)[:300]]}))
        os._exit(1)
    _install_guard(os.getcwd(), tuple(config["read_roots"]), config["dynload"])
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except BaseException as exc:  # the candidate's failure, whatever it is (SystemExit included)
        _write_all(4, frame({"x": [type(exc).__name__, str(exc)[:300]]}))
        os._exit(1)
    entry = job["entry_point"]
    function = namespace.get(entry) if entry else None
    if entry and not callable(function):
        _write_all(4, frame({"x": ["NameError", f"{entry} is not defined by the candidate"]}))
        os._exit(1)
    _write_all(4, frame({"ready": True}))
    while True:
        size = int.from_bytes(_read_exact(3, 4), "big")
        args, kwargs = json.loads(_read_exact(3, size))
        try:
            value = function(*decode(args), **decode(kwargs))
        except BaseException as exc:
            reply = {"e": [type(exc).__name__, str(exc)[:300]]}
        else:
            try:
                reply = {"v": encode(value)}
            except Unsupported as exc:
                reply = {"u": str(exc)}
        _write_all(4, frame(reply))


# --- the judge --------------------------------------------------------------------------------------

class Verdict(BaseException):
    """Ends a job from inside the tests; a BaseException so that test code cannot catch it."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


_ENDS_LOOPS = (StopIteration, StopAsyncIteration)


class CandidateError(Exception):
    """The candidate raised an exception that is not a builtin one."""


class Channel:
    """The judge's end of one candidate's pipes, every wait bounded by the job's deadline."""

    def __init__(self, calls_fd: int, replies_fd: int, deadline: float, pristine: dict) -> None:
        self.calls_fd, self.replies_fd, self.deadline, self.pristine = calls_fd, replies_fd, deadline, pristine
        os.set_blocking(calls_fd, False)

    def _wait(self, readable: bool) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Verdict("timeout", "wall-clock limit")
        fds = [self.replies_fd] if readable else [self.calls_fd]
        ready = select.select(fds, [], [], left) if readable else select.select([], fds, [], left)
        if not any(ready):
            raise Verdict("timeout", "wall-clock limit")

    def _read(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            self._wait(True)
            chunk = os.read(self.replies_fd, min(left, 1 << 20))
            if not chunk:
                raise Verdict("gone", "the candidate ended")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def receive(self) -> dict:
        size = int.from_bytes(self._read(4), "big")
        if size > MAX_FRAME:
            raise Verdict("failed", f"a reply of {size} bytes (limit {MAX_FRAME})")
        try:
            message = json.loads(self._read(size))
        except (ValueError, RecursionError):
            raise Verdict("failed", "an unreadable reply") from None
        if type(message) is not dict or len(message) != 1:
            raise Verdict("failed", "an unreadable reply")
        return message

    def send(self, message) -> None:
        view = memoryview(frame(message))
        while view:
            self._wait(False)
            try:
                view = view[os.write(self.calls_fd, view):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise Verdict("gone", "the candidate ended") from None

    def ready(self) -> None:
        message = self.receive()
        if "x" in message:
            name, text = _error_parts(message["x"])
            raise Verdict("failed", f"{name}: {text}")
        if message != {"ready": True}:
            raise Verdict("failed", "an unreadable reply")

    def call(self, *args, **kwargs):
        try:
            self.send([encode(list(args)), encode(kwargs)])
        except Unsupported as exc:
            raise Verdict("error", f"the tests pass a value that is not plain data: {exc}") from None
        message = self.receive()
        if "v" in message:
            try:
                return decode(message["v"], self.deadline)
            except (Unsupported, RecursionError, ValueError) as exc:
                raise Verdict("failed", f"the candidate returned no plain data: {exc}") from None
        if "e" in message:
            name, text = _error_parts(message["e"])
            kind = self.pristine.get(name)
            # Not StopIteration: raised from inside map() or a generator it would end a test loop early.
            if isinstance(kind, type) and issubclass(kind, Exception) and not issubclass(kind, _ENDS_LOOPS):
                try:
                    error = kind(text)
                except TypeError:
                    error = CandidateError(f"{name}: {text}")
            else:
                error = CandidateError(f"{name}: {text}")
            raise error
        if "u" in message:
            raise Verdict("failed", f"the candidate returned no plain data: {str(message['u'])[:200]}")
        raise Verdict("failed", "an unreadable reply")


def _error_parts(body) -> tuple:
    if type(body) is list and len(body) == 2 and all(type(v) is str for v in body):
        return body[0][:100], body[1][:300]
    raise Verdict("failed", "an unreadable reply")


def _judge(job: dict, channel: Channel, pristine: dict) -> None:
    """Run the job's tests against the candidate behind ``channel``; returns if they pass."""
    channel.ready()
    tests, entry = job["tests"], job["entry_point"]
    if not entry:
        return  # a plain program: it ran to its end
    namespace = {"__name__": "__main__", "__builtins__": dict(pristine)}
    try:
        prompt = compile(job["prompt"], "<prompt>", "exec")
    except SyntaxError:
        prompt = None  # a prompt that is not a module on its own: its helpers are not needed by the tests
    if prompt is not None:
        exec(prompt, namespace)  # the problem's own code (signature, docstring, helpers), not the candidate's

    def candidate(*args, **kwargs):
        return channel.call(*args, **kwargs)

    namespace[entry] = candidate
    exec(compile(tests, "<tests>", "exec"), namespace)
    if "def check(" in tests:
        namespace["check"](candidate)


def _end(pid: int) -> int:
    """Kill the candidate (and, as PID 1 of a namespace, everything else there); its wait status."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status = os.waitpid(pid, 0)
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    return status


def run_job(index: int, job: dict, config: dict, pristine: dict) -> dict:
    started = time.monotonic()
    scratch = os.path.join(config["workdir"], f"c{index}")
    os.mkdir(scratch, 0o700)
    if os.geteuid() == 0:
        os.chown(scratch, NOBODY, NOBODY)
    calls_read, calls_write = os.pipe()
    replies_read, replies_write = os.pipe()
    gc.freeze()  # the child's collections then skip the judge's objects: fewer copy-on-write page faults
    pid = os.fork()
    if pid == 0:
        try:
            os.close(calls_write)
            os.close(replies_read)
            _candidate(job, calls_read, replies_write, scratch, config)
        finally:
            os._exit(2)
    os.close(calls_read)
    os.close(replies_write)
    status, detail = "passed", ""
    try:
        _judge(job, Channel(calls_write, replies_read, started + float(config["timeout"]), pristine), pristine)
    except Verdict as verdict:
        status, detail = verdict.status, verdict.detail
    except Exception as exc:  # the tests failed (AssertionError, or the candidate's exception they did not expect)
        status, detail = "failed", f"{type(exc).__name__}: {exc}"[:300]
    finally:
        wait_status = _end(pid)
        os.close(calls_write)
        os.close(replies_read)
        _remove_tree(scratch)
    if status == "gone":
        if os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) in (signal.SIGXCPU, signal.SIGKILL):
            status, detail = "timeout", f"CPU limit ({signal.Signals(os.WTERMSIG(wait_status)).name})"
        elif os.WIFSIGNALED(wait_status):
            status, detail = "failed", f"killed by {signal.Signals(os.WTERMSIG(wait_status)).name}"
        else:
            status, detail = "failed", "the candidate ended before the tests did"
    return {"i": index, "status": status, "detail": detail[:300], "seconds": round(time.monotonic() - started, 4)}


def _remove_tree(path: str) -> None:
    try:
        os.rmdir(path)  # most candidates write nothing
        return
    except OSError:
        pass
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            full = os.path.join(root, name)
            os.unlink(full) if os.path.islink(full) else os.rmdir(full)
    os.rmdir(path)


def _harden(isolate_network: bool) -> None:
    """Non-dumpable (no ptrace, /proc/<pid>/mem or pidfd_getfd by the same user); no network if we can."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    # Python's own SIGINT handler is the one signal a namespace's init (the judge in nsjail) would take
    # from a candidate; without it the kernel drops every signal sent to it from inside.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if isolate_network and os.geteuid() == 0:
        libc.unshare(_CLONE_NEWNET)  # best effort (a container may refuse); nsjail has its own


def _others_can_enter(path: str) -> bool:
    """Every directory from / down to ``path`` is o+x: a candidate dropped to nobody can import from it."""
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def main() -> None:
    config = json.loads(sys.stdin.buffer.read())
    _harden(bool(config.get("isolate_network")))
    locked_out = os.geteuid() == 0 and not _others_can_enter(os.path.dirname(os.path.realpath(select.__file__)))
    for name in _PRELOAD + (_PRELOAD_FOR_NOBODY if locked_out else ()):
        try:
            __import__(name)
        except ImportError:
            pass
    pristine = dict(builtins.__dict__)
    config["workdir"] = os.getcwd()
    config["read_roots"] = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    config["dynload"] = os.path.dirname(os.path.realpath(select.__file__))  # lib-dynload: select is an extension
    for index, job in enumerate(config["jobs"]):
        print(json.dumps(run_job(index, job, config, pristine)), flush=True)


if __name__ == "__main__":
    main()
