"""knexa_lab: whole-consortium runs on one machine, composed above both roles.

Layers: ``cli -> knexa_lab -> (knexa_cpm, knexa_node)``. Nothing in ``knexa_node``
or ``knexa_cpm`` imports this package.

- :mod:`.plan`        homes, identities and configs of the CPM and the nodes
- :mod:`.processes`   starting, watching and stopping the daemons
- :mod:`.orchestrate` ``knexa-node demo``: wait for rounds, live progress, final evaluation, audit
- :mod:`.report`      per-node table, JSON summary, learning-curve PNG
- :mod:`.inprocess`   the demo's nodes built in one process (Central-KD and lock-step runs)
- :mod:`.central`     the Central-KD baseline (a central server, so one process by design)
- :mod:`.lockstep`    the matchmaker against real agents in one process, rounds in lock-step
- :mod:`.pooled`      the data-pooling upper bound: each model kind trained on every node's private data
- :mod:`.study`       ``knexa-node study``: settings, runs, resumable files, one run's record (no torch)
- :mod:`.pool`        one job per task in fresh one-thread processes on all cores (warm-ups, study runs)
- :mod:`.study_run`   a study's runs, one one-thread process each on all cores, each record written when done
- :mod:`.study_report` intervals over seeds, ratios paired by seed, the study's JSON, table and PNG
"""
