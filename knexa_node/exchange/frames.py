"""The frames of ``/knexa/exchange/1.0.0`` and their size bounds.

One exchange, each line one frame of the length-prefixed stream::

    student -> teacher   ExchangeRequest envelope (signed by the student)
    teacher -> student   ExchangeRefused envelope  (then close)          -- or --
    teacher -> student   PackageHeader envelope (signed by the teacher)
    teacher -> student   secretstream header (24 raw bytes)
    teacher -> student   sealed chunk 1 .. n (raw; chunk n tagged FINAL)
    student -> teacher   Receipt envelope (signed)  or  ExchangeRefused envelope

Control frames are small and bounded tightly; only chunk frames may be large.
"""

from __future__ import annotations

from typing import TypeVar

from knexa_node.crypto import Signer
from knexa_node.exchange.errors import MALFORMED, REFUSED_BY_PEER, ExchangeError
from knexa_node.exchange.sealing import CHUNK_OVERHEAD, CHUNK_SIZE
from knexa_node.wire import Envelope, ExchangeRefused, Message, WireError, open_envelope, seal_envelope

PROTOCOL_ID = "/knexa/exchange/1.0.0"
MAX_CONTROL_FRAME = 64 * 1024
MAX_CHUNK_FRAME = CHUNK_SIZE + CHUNK_OVERHEAD
NO_PROPOSAL = bytes(16)  # proposal_id of a refusal sent before any proposal was read

M = TypeVar("M", bound=Message)


def refusal_frame(signer: Signer, proposal_id: bytes, error: ExchangeError) -> bytes:
    """A signed ``ExchangeRefused`` telling the other side the stable code and why."""
    pid = proposal_id if len(proposal_id) == 16 else NO_PROPOSAL
    return seal_envelope(signer, ExchangeRefused(proposal_id=pid, code=error.code, reason=error.reason[:512])).to_bytes()


def peer_refusal(message: ExchangeRefused) -> ExchangeError:
    """The error that a received refusal becomes: ``refused-by-peer:<their code>``."""
    code = message.code if all(c.isalnum() or c == "-" for c in message.code) and len(message.code) <= 40 else "unknown"
    return ExchangeError(f"{REFUSED_BY_PEER}:{code}", message.reason[:512])


def malformed(exc: WireError, what: str) -> ExchangeError:
    return ExchangeError(MALFORMED, f"{what}: {exc}")


def open_peer_frame(frame: bytes, *, remote: str, expect: type[M], what: str,
                    wrong_signer: str) -> tuple[Envelope, M]:
    """Open a control frame the other side signed: ``expect``, or its refusal.

    Undecodable bytes, a frame signed by anyone but ``remote`` (raised with the code
    ``wrong_signer``) and the peer's ``ExchangeRefused`` all become :class:`ExchangeError`.
    """
    try:
        envelope, message = open_envelope(frame, max_size=MAX_CONTROL_FRAME, expect=(expect, ExchangeRefused))
    except WireError as exc:
        raise malformed(exc, what) from None
    if envelope.sender != remote:
        raise ExchangeError(wrong_signer, f"{what} signed by {envelope.sender}, not {remote}")
    if isinstance(message, ExchangeRefused):
        raise peer_refusal(message)
    if not isinstance(message, expect):  # open_envelope's `expect` makes this unreachable
        raise ExchangeError(MALFORMED, f"{what}: got {type(message).__name__}")
    return envelope, message
