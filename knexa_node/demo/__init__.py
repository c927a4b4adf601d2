"""``knexa-node demo``: a whole consortium on one machine, as separate processes on 127.0.0.1.

- :mod:`.plan`        homes, identities and configs of the CPM and the nodes
- :mod:`.processes`   starting, watching and stopping the daemons
- :mod:`.orchestrate` the run: wait for rounds, live progress, final evaluation, audit
- :mod:`.report`      per-node table, JSON summary, learning-curve PNG
- :mod:`.central`     the Central-KD baseline (a central server, so one process by design)
"""
