"""DP layer overhead on a logits package, as a ratio to the same package without DP; and its utility.

A logits package here is, per transfer-set position, the top-k token ids and
their log-probabilities, taken from a (positions x vocab) logits matrix and
packed as bytes. "No DP" = log-softmax, top-k, pack. "DP" = the same plus
calibrating sigma (dp-accounting), centring, clipping and Gaussian noise.
The logits are synthetic (normal, scale 3): the overhead does not depend on
their values, the utility figures do, so treat those as indicative only.

Utility: top-1 agreement of the released argmax with the noise-free
teacher, for one release (a single position) and for a whole package of
--positions rows under the configured epsilon, at several k.

    .venv/bin/python bench/dp_overhead.py [--positions 512] [--vocab 32000] [--k 16] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from knexa_node.privacy.dp import GaussianRelease, noisy_decoding_logits, privatize_rows, privatize_top_k, top1_agreement, top_k


def package_plain(logits: np.ndarray, k: int) -> bytes:
    ids, values = top_k(logits, k)
    return ids.tobytes() + values.astype(np.float32).tobytes()


def package_dp(logits: np.ndarray, k: int, epsilon: float, delta: float, rng: np.random.Generator) -> bytes:
    mechanism = GaussianRelease.calibrate(epsilon, delta, 1.0, releases=logits.shape[0])
    ids, values = privatize_top_k(logits, k, mechanism, rng)
    return ids.tobytes() + values.tobytes()


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--positions", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(args.positions, args.vocab)).astype(np.float32)

    plain, dp = [], []
    for _ in range(args.repeat):  # interleaved so that machine load hits both alike
        plain.append(timed(package_plain, logits, args.k))
        dp.append(timed(package_dp, logits, args.k, args.epsilon, args.delta, rng))
    m_plain, m_dp = statistics.median(plain), statistics.median(dp)
    print(f"logits package: {args.positions} positions x {args.vocab} vocab -> top-{args.k}; {args.repeat} runs, medians")
    print(f"no DP: {m_plain * 1e3:.1f} ms   DP: {m_dp * 1e3:.1f} ms   overhead ratio DP / no DP: {m_dp / m_plain:.3f}")
    ids, values = top_k(logits, args.k)
    only = [timed(lambda: privatize_rows(values, GaussianRelease.calibrate(args.epsilon, args.delta, 1.0, args.positions), rng))
            for _ in range(args.repeat)]
    print(f"the DP step alone (calibrate sigma + centre + clip + noise): {statistics.median(only) * 1e3:.2f} ms")

    step = rng.normal(0, 3, size=(16, 50257)).astype(np.float32)
    mech = GaussianRelease.calibrate(args.epsilon, args.delta, 1.0, releases=16 * 128)
    base = [timed(lambda: step.argmax(axis=-1)) for _ in range(args.repeat * 4)]
    noisy = [timed(noisy_decoding_logits, step, args.k, mech, rng) for _ in range(args.repeat * 4)]
    print(f"decoding step (16 x 50257): noisy_decoding_logits {statistics.median(noisy) * 1e3:.1f} ms "
          f"(plain argmax {statistics.median(base) * 1e3:.2f} ms)")

    print(f"\ntop-1 agreement with the noise-free teacher (delta {args.delta}; chance = 1/k)")
    print(f"{'epsilon':>8} {'k':>3} {'sigma(1 row)':>12} {'agree(1 row)':>12} {'sigma(pkg)':>11} {'agree(pkg)':>10}")
    sample = logits[:256]
    for epsilon in (args.epsilon, 8.0, 64.0, 512.0):
        for k in (2, 4, args.k):
            one = GaussianRelease.calibrate(epsilon, args.delta, 1.0, releases=1)
            pkg = GaussianRelease.calibrate(epsilon, args.delta, 1.0, releases=args.positions)
            agree_one = np.mean([top1_agreement(sample[i : i + 1], *privatize_top_k(sample[i : i + 1], k, one, rng))
                                 for i in range(len(sample))])
            agree_pkg = top1_agreement(sample, *privatize_top_k(sample, k, pkg, rng))
            print(f"{epsilon:>8g} {k:>3} {one.sigma:>12.3f} {agree_one:>12.3f} {pkg.sigma:>11.2f} {agree_pkg:>10.3f}")


if __name__ == "__main__":
    main()
