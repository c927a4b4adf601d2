"""What refusing a hostile knowledge package costs, before and after budgeted decoding (issue 15, finding 5).

"before" is the old path: ``msgpack.unpackb`` with the codec's old limits
builds the whole value, and only then is it checked. "after" is
:func:`knexa_node.learn.package.decode_package`, which checks every count and
length at its header (under the default limits and under limits sized for a
192-item transfer set). For honest packages "before" is msgpack alone (the old
decoder's per-item checks came on top of it). For each package it prints the median time to
refuse (or decode) it and the peak of Python allocations (tracemalloc) while
doing so (a separate run), also as a multiple of the package's size. Honest packages of both
kinds show what the streaming decoder costs where nothing is refused.

    .venv/bin/python bench/package_decode.py [--mib 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from typing import Any, Callable

import msgpack
import numpy as np

from knexa_node.learn.package import MAX_ITEMS, KnowledgePackage, LogitItem, PackageError, PackageLimits, decode_package, encode_package


def _old_decode(data: bytes) -> Any:
    """The codec before this change: build everything, then look."""
    body = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True, max_str_len=len(data),
                           max_bin_len=len(data), max_array_len=1 << 20, max_map_len=1024, max_ext_len=0)
    if not isinstance(body, dict) or body.get("v") != 1:
        raise PackageError("bad package")
    return body


def hostile_packages(size: int) -> dict[str, bytes]:
    head = {"v": 1, "kind": "text", "tokenizer": "t", "round": 0}
    prefix = b"\x85" + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in head.items())
    # items: an array of one-byte empty maps (the amplification of the issue), up to the array limit per level
    count = 4
    per = (size - 256) // count - 5
    inner = b"\xdd" + per.to_bytes(4, "big") + b"\x80" * per
    empty_maps = prefix + msgpack.packb("items") + b"\xdd" + count.to_bytes(4, "big") + inner * count
    # the same bytes under a field the schema does not know
    unknown = prefix + msgpack.packb("junk") + b"\xdd" + count.to_bytes(4, "big") + inner * count
    # many small strings: as many tiny text items as the format's ceiling allows
    n_items = MAX_ITEMS
    strings = msgpack.packb({**head, "items": [{"id": f"{i:08d}", "text": "x"} for i in range(n_items)]})
    return {"empty maps in items": empty_maps, "empty maps, unknown field": unknown,
            f"{n_items} tiny text items": strings}


def honest_packages() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    texts = {f"task/{i}": "def f(x):\n    return x + 1\n" * 4 for i in range(192)}
    text = encode_package(KnowledgePackage("text", "t" * 64, 3, texts=texts))
    logits = {f"task/{i}": LogitItem(rng.integers(0, 32000, 65, dtype=np.int32),
                                     rng.integers(0, 32000, (65, 20), dtype=np.int32),
                                     -rng.random((65, 20)).astype(np.float16))
              for i in range(192)}
    logit = encode_package(KnowledgePackage("logits", "t" * 64, 3, logits=logits, k=20))
    return {"honest text (192 items)": text, "honest logits (192 items, k=20)": logit}


def _run(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except Exception as exc:  # both paths refuse, each with its own exception type
        return f"refused ({type(exc).__name__})"
    return "decoded"


def measure(fn: Callable[[], Any], repeat: int) -> tuple[float, int, str]:
    """Median seconds (without tracemalloc, which slows allocation), then the peak of one traced run."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = _run(fn)
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    _run(fn)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=4.0, help="size of each hostile package")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sized = PackageLimits.for_transfer(192, 192)
    cases = {**hostile_packages(int(args.mib * 1024 * 1024)), **honest_packages()}
    print(f"{'package':34} {'MiB':>6}  {'decoder':28} {'seconds':>8} {'peak KiB':>9} {'x size':>7}  result")
    for name, data in cases.items():
        mib = len(data) / 2**20
        for label, fn in (("before: unpackb, then check", lambda: _old_decode(data)),
                          ("after: default limits", lambda: decode_package(data, max_size=256 << 20)),
                          ("after: limits for 192 items", lambda: decode_package(data, max_size=256 << 20,
                                                                                 limits=sized))):
            seconds, peak, result = measure(fn, args.repeat)
            print(f"{name:34} {mib:6.2f}  {label:28} {seconds:8.3f} {peak / 1024:9.1f} {peak / len(data):7.2f}  {result}")


if __name__ == "__main__":
    main()
