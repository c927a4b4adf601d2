"""The home lock (flock) and the control socket (NDJSON over a 0600 Unix socket)."""

import json
import os
import socket
import stat
import subprocess
import sys

import pytest
import trio

from knexa_node.daemon.control import ControlError, ControlServer, call
from knexa_node.daemon.lock import DaemonLock, LockError


def test_second_lock_on_a_home_is_refused_with_the_holder(tmp_path):
    with DaemonLock(tmp_path / "daemon.lock"):
        with pytest.raises(LockError, match=f"pid {os.getpid()}"):
            DaemonLock(tmp_path / "daemon.lock").acquire()
    DaemonLock(tmp_path / "daemon.lock").acquire()  # released


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    path = tmp_path / "daemon.lock"
    holder = subprocess.Popen([sys.executable, "-c",
                               f"from knexa_node.daemon.lock import DaemonLock; import sys, time; "
                               f"DaemonLock({str(path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError):
            DaemonLock(path).acquire()
        holder.kill()
        holder.wait(timeout=10)
        DaemonLock(path).acquire()
    finally:
        holder.kill()


async def _serve(tmp_path, nursery):
    async def echo(args):
        return {"echo": args}

    async def broken(args):
        raise RuntimeError("boom")

    path = tmp_path / "control.sock"
    await nursery.start(ControlServer(path, {"echo": echo, "broken": broken}).serve)
    return path


async def test_commands_errors_and_socket_mode(tmp_path):
    async with trio.open_nursery() as nursery:
        path = await _serve(tmp_path, nursery)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert await trio.to_thread.run_sync(lambda: call(path, "echo", {"a": 1})) == {"echo": {"a": 1}}
        with pytest.raises(ControlError, match="unknown command"):
            await trio.to_thread.run_sync(lambda: call(path, "nope"))
        with pytest.raises(ControlError, match="boom"):
            await trio.to_thread.run_sync(lambda: call(path, "broken"))

        def raw(lines: bytes) -> list:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
                sock.sendall(lines)
                sock.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            return [json.loads(line) for line in data.splitlines()]

        answers = await trio.to_thread.run_sync(raw, b'garbage\n[1]\n{"cmd": "echo", "args": 3}\n{"cmd":"echo"}\n')
        assert [a["ok"] for a in answers] == [False, False, False, True]
        big = await trio.to_thread.run_sync(raw, b"x" * (70 * 1024))
        assert big[0]["ok"] is False and "longer" in big[0]["error"]
        nursery.cancel_scope.cancel()
    assert not path.exists()


def test_no_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(ControlError, match="no daemon is running"):
        call(tmp_path / "control.sock", "status")
