"""The daemon: the trio main loop of ``knexa-node start`` and ``knexa-cpm start``.

Map:

- :mod:`.daemon`   :class:`Daemon`: lock, network, control socket, services, signals, ready line;
                   extension points ``add_service``, ``add_command``, ``add_status``
- :mod:`.control`  the Unix-socket control endpoint (NDJSON) and its client :func:`call`
- :mod:`.lock`     one daemon per home (flock; survives kill -9)
- :mod:`.logs`     one structured event line per event (human or JSON), ready and join lines
- :mod:`.rounds`   the last ``RoundOpen`` a node saw, and the CPM's announcement
- :mod:`.refusals` how often a refusal of an outsider reaches the audit log (one entry per peer per interval)
"""
