"""Start, watch and stop daemons as child processes (each in its own session, so a stop reaches its children)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from knexa_node.daemon.control import ControlError, call
from knexa_node.identity import NodeHome


class DemoError(Exception):
    """A daemon of the demo failed to start, died, or did not answer."""


def tool(name: str) -> str:
    """The path of one of our console scripts, next to the running interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class DaemonProcess:
    def __init__(self, name: str, home: NodeHome, command: str, *, env: dict[str, str] | None = None) -> None:
        self.name, self.home = name, home
        self.argv = [tool(command), "start", "--home", str(home.root), "--log-format", "json"]
        self.stdout_path = home.logs_dir / "daemon.out"
        self.stderr_path = home.logs_dir / "daemon.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] | None = None

    def start(self) -> None:
        self.home.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self.env,
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                for line in self.stdout_path.read_text(errors="replace").splitlines():
                    if line.startswith("{"):
                        event = json.loads(line)
                        if event.get("event") == "ready":
                            self.ready = event
                            return event
            except (OSError, ValueError):
                pass
            if not self.alive():
                raise DemoError(f"{self.name} exited with status {self.proc.returncode if self.proc else '?'}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise DemoError(f"{self.name} was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def control(self, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 15.0) -> Any:
        try:
            return call(self.home.control_socket, cmd, args, timeout=timeout)
        except ControlError as exc:
            raise DemoError(f"{self.name}: {exc}") from None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Ask politely (control socket), then SIGTERM, then SIGKILL the whole process group."""
        if self.proc is None:
            return None
        if self.alive():
            try:
                call(self.home.control_socket, "stop", timeout=3.0)
            except ControlError:
                self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._signal(signal.SIGKILL)  # stray children of a daemon that already exited
        return self.proc.returncode

    def _signal(self, signum: int) -> None:
        if self.proc is None:  # never started: nothing to signal
            return
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
