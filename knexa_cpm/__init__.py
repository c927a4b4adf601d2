"""knexa CPM: the Central Profiler/Matchmaker.

- ``bandit``    LinUCB and friends (pure numpy)
- ``features``  pairwise context features built from two profiles
- ``matching``  a round's pairings from scored candidates: greedy (the paper) or the best total (networkx)
- ``trust``     per-agent trust as a teacher, from the rewards its packages earned
- ``policies``  the policy interface and ``make_policy`` (linucb, knexa, random, heuristic, oracle)
- ``rounds``    the bookkeeping of one round (:class:`RoundBook`), a pure state machine
- ``sim``       the synthetic federation used by benchmarks and tests
- ``runner``    policies against the synthetic federation, summarized (``knexa-cpm simulate``)
- ``plot``      learning curves and cumulative regret of a simulation, as a PNG
- ``state``     crash-safe persistence of the matchmaker
- ``service``   the CPM daemon on ``knexa_node.net`` and ``knexa_node.wire``

Only ``service`` touches the network; nothing here imports torch (tests/foundation/test_maps.py).
"""
