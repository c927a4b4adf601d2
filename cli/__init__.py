"""Command lines (installed as ``knexa_cli``): ``knexa-node`` and ``knexa-cpm``.

Thin clients: they parse arguments, call into ``knexa_node``/``knexa_cpm`` or a
running daemon's control endpoint, and print (``--json`` for scripts).

- :mod:`.node`               ``knexa-node``: the node's typer app
- :mod:`.node_daemon`        ``start``, ``status``, ``peers``, ``stop`` (and the CPM's ``round open``)
- :mod:`.services`           what ``start`` installs into the bare daemon; start-up errors as one-line exits
- :mod:`.node_audit`         ``knexa-node audit``: verify, show, export, cross-check, repair
- :mod:`.audit_layout`       how ``audit show`` lays out entries for the width it has
- :mod:`.node_doctor`        ``knexa-node doctor``: one line per check (ok / warn / fail) with advice
- :mod:`.node_demo`          ``knexa-node demo``: a local consortium with live progress and a report
- :mod:`.node_study`         ``knexa-node study``: policies x seeds of a lock-step consortium, with intervals and a PNG
- :mod:`.node_model`         ``knexa-node model import-gguf|import`` and ``knexa-node eval``
- :mod:`.cpm`                ``knexa-cpm``: the matchmaker's typer app
- :mod:`.cpm_simulate`       ``knexa-cpm simulate``: compare matchmaking policies
- :mod:`.identity_commands`  ``init`` and ``id``, shared by both command lines
- :mod:`.common`             error exits, JSON output, home resolution
- :mod:`.lazy`               :func:`load`: a heavy module imported only by the command that needs it
"""
