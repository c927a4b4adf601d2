"""Privacy of what a node sends: the guardrail filter and differential privacy on released logits.

Map:

- :mod:`.detectors`  regex detectors for secrets and personal data (Luhn-checked card numbers)
- :mod:`.ngram`      index of the node's private-data n-grams, to catch verbatim leakage
- :mod:`.guardrail`  the filter applied to every outgoing text item (redact or drop, counted, logged)
- :mod:`.dp`         Gaussian mechanism on top-k log-probabilities, sigma from ``dp-accounting``
- :mod:`.budget`     epsilon spent per peer and in total, persisted, refused beyond the budget

numpy only (no torch): the learning engine converts tensors at the edge.
"""
