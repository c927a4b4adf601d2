"""The daemon: the trio main loop of ``knexa-node start`` and ``knexa-cpm start``, and the node's learning role.

Map. The role-neutral daemon (imports nothing of a role; tests/daemon/test_layers.py checks it):

- :mod:`.daemon`         :class:`Daemon`: lock, network, control socket, services, signals, ready line
- :mod:`.role`           :class:`RoleHost`: what a role sees of the daemon (``add_service``, ``add_command``,
                         ``add_status``, ``net``, ``rounds``, ...)
- :mod:`.rounds`         :class:`RoundTracker`: the one owner of the current round; the ``RoundOpen`` announcements
- :mod:`.control`        the Unix-socket control endpoint (NDJSON) and its client :func:`call`
- :mod:`.lock`           one daemon per home (flock; survives kill -9)
- :mod:`.logs`           one structured event line per event (human or JSON), ready and join lines
- :mod:`.metrics`        the Prometheus endpoint on loopback
- :mod:`.sdnotify`       systemd's readiness protocol on ``$NOTIFY_SOCKET`` (``Type=notify``)

The node's learning role (installed by :func:`.node_services.install_node`; the CPM's role is
``knexa_cpm.service.install``):

- :mod:`.node_services`  installs the role: learner, exchanges, participant
- :mod:`.round_machine`  :class:`NodeRound`: the node's round as a pure state machine (events in, actions out)
- :mod:`.participant`    :class:`Participant`: the trio driver of :class:`NodeRound`
- :mod:`.lessons`        the exchanges as student: fetch each package, distil a round's together, report each
- :mod:`.cpm_link`       signed requests to the CPM, retried with backoff
- :mod:`.unfinished`     lessons a crash left unreported (from the audit log), reported as failed at start
- :mod:`.curve`          the learning curve (``state/metrics.jsonl``)
- :mod:`.learner`        the agent behind one lock, its work in worker threads; ``evaluation_point``
- :mod:`.datasets`       the node's data splits from its config
- :mod:`.exchanges`      both sides of the knowledge exchange, the audit log and checkpoints
- :mod:`.packaging`      the teacher's package for one proposal and request: guardrail and DP on the object, encoded once
- :mod:`.refusals`       how often a refusal of an outsider reaches the audit log (one entry per peer per interval)
"""
