"""Teacher side of one exchange in its own process, for the two-process test.

Usage: python teacher_process.py '<json>' with teacher_seed (hex), cpm, student,
round, payload_seed (hex), payload_size. Listens on 127.0.0.1 port 0, prints
``READY <port>``, serves one exchange over TCP, prints the outcome as one JSON
line and exits. The payload is derived from the seed so the test can check it
independently.
"""

from __future__ import annotations

import hashlib
import json
import sys

import trio

from knexa_node.crypto import Signer
from knexa_node.exchange.driver import BuiltPackage, serve_exchange
from knexa_node.exchange.framed import TrioFramedStream
from knexa_node.exchange.membership import Membership
from knexa_node.exchange.policy import ExchangePolicy
from knexa_node.exchange.replay import ReplayCache


def payload_for(seed: bytes, size: int) -> bytes:
    return hashlib.shake_256(seed).digest(size)


async def main(args: dict) -> None:
    signer = Signer(bytes.fromhex(args["teacher_seed"]))
    policy = ExchangePolicy(cpm=args["cpm"], membership=Membership.from_peer_ids([args["student"], signer.peer_id]), timeout_s=30)
    payload = payload_for(bytes.fromhex(args["payload_seed"]), args["payload_size"])

    async def build(proposal, request) -> BuiltPackage:
        return BuiltPackage(payload)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print("READY", listeners[0].socket.getsockname()[1], flush=True)
    with trio.fail_after(30):
        stream = await listeners[0].accept()
    outcome = await serve_exchange(
        TrioFramedStream(stream), remote=args["student"], signer=signer, policy=policy, replay=ReplayCache(),
        build_package=build, current_round=args["round"],
    )
    print(json.dumps({"status": outcome.status, "code": outcome.code, "payload_hash": outcome.payload_hash.hex(),
                      "receipt": outcome.receipt_envelope.hex()}), flush=True)


if __name__ == "__main__":
    trio.run(main, json.loads(sys.argv[1]))
