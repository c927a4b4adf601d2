"""systemd readiness: the message format, and a real `knexa-node start` talking to a fake NOTIFY_SOCKET."""

import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from knexa_node.daemon.sdnotify import SystemdNotifier, notify_message, socket_address

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_message_is_one_line_per_key_and_bounded():
    message = notify_message({"READY": "1", "STATUS": "round 3\nof 5  " + "x" * 500})
    lines = message.decode().splitlines()
    assert lines[0] == "READY=1"
    assert lines[1].startswith("STATUS=round 3 of 5 x") and len(lines[1]) <= len("STATUS=") + 200
    with pytest.raises(ValueError):
        notify_message({"ready": "1"})


def test_addresses():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@knexa-test") == b"\0knexa-test"
    with pytest.raises(ValueError):
        socket_address("relative/path")
    assert not SystemdNotifier.from_environ({}).enabled
    assert not SystemdNotifier.from_environ({"NOTIFY_SOCKET": "relative"}).enabled  # logged, not raised
    assert not SystemdNotifier.from_environ({}).ready("x")


def test_send_failure_does_not_raise(tmp_path):
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens"))
    assert notifier.ready("up") is False
    assert notifier.stopping() is False


def _receive(sock: socket.socket, timeout: float) -> dict[str, str]:
    ready, _, _ = select.select([sock], [], [], timeout)
    assert ready, "no notification within the hang bound"
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


@pytest.mark.slow
def test_real_daemon_notifies_ready_and_stopping(tmp_path):
    home = tmp_path / "h"
    subprocess.run([str(BIN / "knexa-node"), "init", "--home", str(home), "--listen", "/ip4/127.0.0.1/tcp/0"],
                   check=True, capture_output=True, env=ENV, timeout=60)
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        proc = subprocess.Popen([str(BIN / "knexa-node"), "start", "--home", str(home), "--log-format", "json"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**ENV, "NOTIFY_SOCKET": str(path)})
        try:
            ready_line = json.loads(proc.stdout.readline())
            first = _receive(sock, 60)
            assert first["READY"] == "1" and first["MAINPID"] == str(proc.pid)
            assert ready_line["peer_id"] in first["STATUS"]
            proc.send_signal(signal.SIGTERM)
            last = _receive(sock, 30)
            assert last["STOPPING"] == "1"
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()
