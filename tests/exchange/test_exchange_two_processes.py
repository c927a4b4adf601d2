"""Teacher and student in two real processes over loopback TCP: keys derived apart must agree.

The authors' code derived session keys with a direction-dependent label and
never noticed, because both sides ran in one process (DESIGN.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from knexa_node.crypto import Signer
from knexa_node.exchange.driver import fetch_package
from knexa_node.exchange.framed import TrioFramedStream
from knexa_node.exchange.sealing import CHUNK_SIZE

SCRIPT = Path(__file__).with_name("teacher_process.py")


async def _read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        data = await stream.receive_some(4096)
        if not data:
            raise EOFError(f"teacher process ended; output so far: {bytes(buffer)!r}")
        buffer += data
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


@pytest.mark.slow
async def test_exchange_between_two_processes(cast):
    teacher_seed, payload_seed, size = os.urandom(32), os.urandom(16), 2 * CHUNK_SIZE + 777
    teacher = Signer(teacher_seed)
    cast.teacher = teacher
    args = {"teacher_seed": teacher_seed.hex(), "cpm": cast.cpm.peer_id, "student": cast.student.peer_id, "round": 3,
            "payload_seed": payload_seed.hex(), "payload_size": size}
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[2])}
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process([sys.executable, str(SCRIPT), json.dumps(args)],
                                                   stdout=subprocess.PIPE, env=env)
        try:
            buffer = bytearray()
            ready = await _read_line(process.stdout, buffer)
            assert ready.startswith("READY ")
            tcp = await trio.open_tcp_stream("127.0.0.1", int(ready.split()[1]))
            outcome = await fetch_package(TrioFramedStream(tcp), remote=teacher.peer_id, signer=cast.student,
                                          policy=cast.policy(), proposal_envelope=cast.proposal(), current_round=3)
            teacher_report = json.loads(await _read_line(process.stdout, buffer))
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
    assert (outcome.status, outcome.code) == ("done", ""), outcome.reason
    assert outcome.payload == hashlib.shake_256(payload_seed).digest(size)
    assert teacher_report == {"status": "done", "code": "", "payload_hash": outcome.payload_hash.hex(),
                              "receipt": outcome.receipt_envelope.hex()}
