"""Seal + sign + verify + open of a 64 MiB logits package, against raw PyNaCl secretbox in the same run.

Measures the two exchange state machines end to end in memory (teacher:
sha256, signed header, secretstream sealing; student: signature check,
opening, sha256, signed receipt; teacher: receipt check), then one exchange
through the trio drivers over loopback TCP. The baseline is
``nacl.secret.SecretBox`` encrypting and decrypting the same payload in the
same 1 MiB chunks. Prints medians of --repeat runs and their ratio.

    .venv/bin/python bench/exchange_seal_throughput.py [--mib 64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import nacl.secret
import nacl.utils
import trio

from knexa_node.crypto import Signer
from knexa_node.exchange.driver import BuiltPackage, fetch_package, serve_exchange
from knexa_node.exchange.framed import TrioFramedStream
from knexa_node.exchange.membership import Membership
from knexa_node.exchange.policy import ExchangePolicy
from knexa_node.exchange.replay import ReplayCache
from knexa_node.exchange.sealing import CHUNK_SIZE
from knexa_node.exchange.student import StudentSession
from knexa_node.exchange.teacher import TeacherSession
from knexa_node.wire import PairingProposal, seal_envelope

MIB = 1024 * 1024


def proposal(cpm: Signer, teacher: Signer, student: Signer) -> bytes:
    message = PairingProposal(proposal_id=os.urandom(16), round=1, teacher=teacher.peer_id, student=student.peer_id,
                              protocol="logits", context=(), score=0.0, expires=time.time() + 600)
    return seal_envelope(cpm, message).to_bytes()


def sessions_once(payload: bytes, cpm: Signer, teacher: Signer, student: Signer, policy: ExchangePolicy) -> float:
    start = time.perf_counter()
    s = StudentSession(student, policy, proposal_envelope=proposal(cpm, teacher, student), remote=teacher.peer_id,
                       current_round=1, now=time.time())
    t = TeacherSession(teacher, policy, remote=student.peer_id, current_round=1, now=time.time(), replay=ReplayCache())
    t.receive_request(s.request_frame())
    frames = t.package_frames(payload)
    s.receive_header(next(frames))
    s.receive_stream_header(next(frames))
    for frame in frames:
        if s.receive_chunk(frame):
            break
    opened, receipt = s.finish()
    t.receive_receipt(receipt)
    elapsed = time.perf_counter() - start
    assert opened == payload
    return elapsed


def secretbox_once(payload: bytes) -> float:
    box = nacl.secret.SecretBox(nacl.utils.random(32))
    view = memoryview(payload)
    start = time.perf_counter()
    sealed = [box.encrypt(bytes(view[i : i + CHUNK_SIZE])) for i in range(0, len(payload), CHUNK_SIZE)]
    opened = b"".join(box.decrypt(c) for c in sealed)
    elapsed = time.perf_counter() - start
    assert opened == payload
    return elapsed


async def tcp_once(payload: bytes, cpm: Signer, teacher: Signer, student: Signer, policy: ExchangePolicy) -> float:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    outcomes = {}

    async def build(_: PairingProposal, request: object) -> BuiltPackage:
        return BuiltPackage(payload)

    async def teacher_side() -> None:
        stream = await listeners[0].accept()
        outcomes["t"] = await serve_exchange(TrioFramedStream(stream), remote=student.peer_id, signer=teacher, policy=policy,
                                             replay=ReplayCache(), build_package=build, current_round=1)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(teacher_side)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        outcomes["s"] = await fetch_package(TrioFramedStream(tcp), remote=teacher.peer_id, signer=student, policy=policy,
                                            proposal_envelope=proposal(cpm, teacher, student), current_round=1)
    elapsed = time.perf_counter() - start
    await listeners[0].aclose()
    assert outcomes["s"].ok and outcomes["t"].ok and outcomes["s"].payload == payload
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    payload = os.urandom(args.mib * MIB)
    cpm, teacher, student = Signer.generate(), Signer.generate(), Signer.generate()
    policy = ExchangePolicy(cpm=cpm.peer_id, membership=Membership.from_peer_ids([teacher.peer_id, student.peer_id]),
                            max_package_bytes=2 * len(payload), timeout_s=600)
    ours, base = [], []
    for _ in range(args.repeat):  # interleaved so that machine load hits both alike
        ours.append(sessions_once(payload, cpm, teacher, student, policy))
        base.append(secretbox_once(payload))
    tcp = [trio.run(tcp_once, payload, cpm, teacher, student, policy) for _ in range(max(1, args.repeat // 2))]
    mib = len(payload) / MIB
    m_ours, m_base, m_tcp = statistics.median(ours), statistics.median(base), statistics.median(tcp)
    print(f"payload: {mib:.0f} MiB, {args.repeat} runs, medians")
    print(f"seal+sign+verify+open (state machines, in memory): {m_ours:.3f} s  {mib / m_ours:.0f} MiB/s")
    print(f"raw PyNaCl SecretBox encrypt+decrypt, 1 MiB chunks: {m_base:.3f} s  {mib / m_base:.0f} MiB/s")
    print(f"ratio knexa / secretbox throughput: {m_base / m_ours:.2f}")
    print(f"full exchange via trio drivers over loopback TCP: {m_tcp:.3f} s  {mib / m_tcp:.0f} MiB/s")


if __name__ == "__main__":
    main()
