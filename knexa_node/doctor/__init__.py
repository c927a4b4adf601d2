"""``knexa-node doctor``: checks a node home before or while it runs, one verdict and one piece of advice each.

- :mod:`.checks`  the :class:`Check` verdict and the local checks (config, file modes, addresses, disk,
  memory guard, sandbox); pure functions of a home and its config, apart from reading files.
- :mod:`.probe`   the network checks: through the running daemon's control socket when it runs, else with a
  short-lived libp2p host under the node's own identity (bootstrap peers, the CPM, clock skew).
"""
