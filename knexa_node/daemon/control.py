"""The local control endpoint: a Unix socket in the home, newline-delimited JSON.

Request: ``{"cmd": "status", "args": {...}}``; response: ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "..."}``. One request per line; a client may send
several. The socket is created mode 0600 inside the 0700 home; only the
owner of the home can talk to the daemon. Lines are capped and every read
has a deadline, so a stuck client costs one task, never the daemon.

:func:`call` is the synchronous client used by the command line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

logger = logging.getLogger(__name__)

CommandHandler = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_LINE = 64 * 1024
READ_TIMEOUT_S = 30.0
MAX_CLIENTS = 16


class ControlError(Exception):
    """The daemon is not running, did not answer, or answered with an error."""


class ControlServer:
    def __init__(self, path: Path, commands: dict[str, CommandHandler]) -> None:
        self.path = Path(path)
        self.commands = commands
        self._limiter = trio.CapacityLimiter(MAX_CLIENTS)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        # Stale after kill -9; the daemon lock (held by us) proves nobody else serves it.
        self.path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._client, stream)
        finally:
            self.path.unlink(missing_ok=True)
            with trio.CancelScope(shield=True):
                await listener.aclose()

    async def _client(self, stream: trio.SocketStream) -> None:
        async with stream, self._limiter:
            buffer = b""
            while True:
                try:
                    with trio.fail_after(READ_TIMEOUT_S):
                        while b"\n" not in buffer:
                            data = await stream.receive_some(65536)
                            if not data:
                                return
                            buffer += data
                            if len(buffer) > MAX_LINE:
                                await _send(stream, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                                return
                except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                line, buffer = buffer.split(b"\n", 1)
                response = await self.handle_line(line)
                try:
                    await _send(stream, response)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'request must be {"cmd": <name>, "args": {...}}'}
        args = request.get("args", {})
        if not isinstance(args, dict):
            return {"ok": False, "error": "args must be an object"}
        handler = self.commands.get(request["cmd"])
        if handler is None:
            return {"ok": False, "error": f"unknown command {request['cmd']!r} (known: {', '.join(sorted(self.commands))})"}
        try:
            result = await handler(args)
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # a command's failure is the client's answer, not the daemon's end
            logger.exception("control command %s failed", request["cmd"])
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "result": result}


async def _send(stream: trio.SocketStream, response: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(response, default=str).encode() + b"\n")


def call(path: Path, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 15.0) -> Any:
    """Send one command to the daemon of ``path`` and return its result (raises :class:`ControlError`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no daemon is running on {Path(path).parent} (no answer on {path})") from None
        except OSError as exc:
            raise ControlError(f"cannot reach the daemon on {path}: {exc.strerror}") from None
        try:
            sock.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ControlError("the daemon closed the connection without answering")
                data += chunk
        except socket.timeout:
            raise ControlError(f"the daemon did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"control connection failed: {exc.strerror}") from None
    finally:
        sock.close()
    try:
        response = json.loads(data)
    except json.JSONDecodeError:
        raise ControlError("the daemon answered something that is not JSON") from None
    if not response.get("ok"):
        raise ControlError(str(response.get("error", "unknown error")))
    return response.get("result")
