"""The daemon: the trio main loop of ``knexa-node start`` and ``knexa-cpm start``.

Map:

- :mod:`.daemon`   :class:`Daemon`: lock, network, control socket, services, signals, ready line;
                   extension points ``add_service``, ``add_command``, ``add_status``
- :mod:`.control`  the Unix-socket control endpoint (NDJSON) and its client :func:`call`
- :mod:`.lock`     one daemon per home (flock; survives kill -9)
- :mod:`.logs`     one structured event line per event (human or JSON), ready and join lines
- :mod:`.rounds`   the last ``RoundOpen`` a node saw, and the CPM's announcement
- :mod:`.metrics`  optional Prometheus metrics on a tiny trio HTTP responder

The node's learning role, which ``knexa-node start`` installs into the daemon:

- :mod:`.node_services`  what ``start`` adds: the learner, the exchanges and the rounds
- :mod:`.participant`    the node's part in a round: train, profile, exchange, distil, report
- :mod:`.exchanges`      both exchange roles inside the daemon, their audit log and checkpoints
- :mod:`.packaging`      the teacher's package for one proposal: guardrail, DP, encoded once
- :mod:`.learner`        the agent behind one lock, its work in worker threads
- :mod:`.datasets`       the node's five data sets, from its config
"""
