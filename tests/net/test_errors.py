"""A failed dial names its innermost reasons, not only py-libp2p's "no addresses established ..."."""

import socket

import multiaddr
import pytest
from libp2p.peer.id import ID
from libp2p.exceptions import MultiError
from libp2p.network.exceptions import SwarmException

from knexa_node.crypto import Signer
from knexa_node.net.errors import PeerUnreachable, describe_failure
from knexa_node.testing import swarm


def _raised_from(outer: Exception, cause: BaseException) -> Exception:
    try:
        raise outer from cause
    except Exception as exc:
        return exc


def test_the_reasons_inside_a_multi_error_are_named_once_each():
    inner = MultiError([ConnectionRefusedError("refused on :1"), TimeoutError("handshake on :2")])
    exc = _raised_from(SwarmException("unable to connect, no addresses established (with exceptions)"), inner)
    text = describe_failure(exc)
    assert text.startswith("SwarmException: unable to connect")
    assert "ConnectionRefusedError: refused on :1" in text and "TimeoutError: handshake on :2" in text
    assert text.count("refused on :1") == 1  # the MultiError's own text would repeat it


def test_a_long_chain_is_cut_to_the_limit():
    exc = _raised_from(RuntimeError("x" * 1000), ValueError("y" * 1000))
    assert len(describe_failure(exc, limit=300)) == 300


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_dialing_a_closed_port_says_the_connection_was_refused():
    async with swarm(1, connect="none") as (net,):
        absent = Signer.generate().peer_id
        addr = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{_closed_port()}")
        net.host.get_peerstore().add_addrs(ID.from_base58(absent), [addr], 60)
        with pytest.raises(PeerUnreachable) as caught:
            await net.connect(absent)
        message = str(caught.value)
        assert "no addresses established" in message
        assert "refused" in message.lower(), message
