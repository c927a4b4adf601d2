"""Typed errors of the network layer (callers never see py-libp2p's exception zoo)."""

from __future__ import annotations


class NetError(Exception):
    """Base of every error raised by :mod:`knexa_node.net`."""


class PeerUnreachable(NetError):
    """No connection to the peer could be made (no address known, dial failed or timed out)."""


class StreamTimeout(NetError):
    """A read, write or stream opening did not finish within its deadline."""


class StreamClosed(NetError):
    """The peer closed or reset the stream (or the connection died) before the expected bytes came."""
