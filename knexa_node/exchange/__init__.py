"""The knowledge exchange (``/knexa/exchange/1.0.0``): sealed, signed packages between two members.

Map (pure cores first, the trio driver last; nothing here imports torch or libp2p):

- :mod:`.errors`      stable failure codes, :class:`ExchangeError`, :class:`ExchangeOutcome`, :class:`ExchangeStateError`
- :mod:`.sealing`     per-exchange X25519 keys bound to identities; secretstream chunk sealing
- :mod:`.membership`  the consortium allow-list
- :mod:`.proposals`   checks on a CPM-signed pairing proposal
- :mod:`.replay`      the persistent replay cache (proposals, feedback)
- :mod:`.policy`      :class:`ExchangePolicy`, what a node enforces, from its config
- :mod:`.frames`      the frames of one exchange and their bounds
- :mod:`.states`      both sessions' states, events and literal transition tables
- :mod:`.teacher`     teacher state machine (sans I/O)
- :mod:`.student`     student state machine (sans I/O)
- :mod:`.driver`      ``serve_exchange`` / ``fetch_package`` over any :class:`FramedStream`
- :mod:`.framed`      a FramedStream over a plain ``trio.abc.Stream``

Import from the submodules; this file stays empty of imports on purpose.
"""
