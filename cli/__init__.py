"""Command lines (installed as ``knexa_cli``): ``knexa-node`` and ``knexa-cpm``.

Thin clients: they parse arguments, call into ``knexa_node``/``knexa_cpm`` or a
running daemon's control endpoint, and print (``--json`` for scripts).
"""
