"""Typed errors of the network layer (callers never see py-libp2p's exception zoo)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice


class NetError(Exception):
    """Base of every error raised by :mod:`knexa_node.net`."""


class PeerUnreachable(NetError):
    """No connection to the peer could be made (no address known, dial failed or timed out)."""


class StreamTimeout(NetError):
    """A read, write or stream opening did not finish within its deadline."""


class StreamClosed(NetError):
    """The peer closed or reset the stream (or the connection died) before the expected bytes came."""


def describe_failure(exc: BaseException, limit: int = 600) -> str:
    """One line naming ``exc`` and the causes beneath it.

    py-libp2p's "no addresses established a successful connection" hides why
    in a chain of ``__cause__`` and ``MultiError.errors``; an operator (and a
    failed test) needs the innermost reasons.
    """
    leaves = (err for err in causes(exc) if not _inner_errors(err))  # a MultiError's own text only repeats its errors
    parts = [f"{type(err).__name__}: {err}".replace("\n", " ") for err in islice(leaves, 8)]
    return " <- ".join(parts)[:limit]


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then every error beneath it (a MultiError's or ExceptionGroup's members, the
    ``__cause__`` / unsuppressed ``__context__`` chain), each once, depth first."""
    seen: set[int] = set()

    def walk(err: BaseException) -> Iterator[BaseException]:
        if id(err) in seen:
            return
        seen.add(id(err))
        yield err
        for sub in _inner_errors(err):
            yield from walk(sub)
        cause = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if cause is not None:
            yield from walk(cause)

    return walk(exc)


def _inner_errors(err: BaseException) -> list[BaseException]:
    return [sub for sub in _sub_errors(err) if isinstance(sub, BaseException)]


def _sub_errors(err: BaseException) -> list[object]:
    for name in ("errors", "exceptions"):  # libp2p's MultiError, Python's ExceptionGroup
        value = getattr(err, name, None)
        if isinstance(value, (list, tuple)):
            return list(value)
    return []
