"""knexa CPM: the Central Profiler/Matchmaker.

- ``bandit``    LinUCB and friends (pure numpy)
- ``features``  pairwise context features built from two profiles
- ``policies``  the policy interface and ``make_policy`` (linucb, knexa, random, heuristic, oracle)
- ``sim``       the synthetic federation used by benchmarks and tests
- ``state``     crash-safe persistence of the matchmaker
- ``service``   the CPM daemon on ``knexa_node.net`` and ``knexa_node.wire``

Only ``service`` touches the network.
"""
