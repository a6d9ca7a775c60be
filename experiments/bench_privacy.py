"""Capture overhead in DP mode, for ``make bench`` (:mod:`experiments.bench_overhead` adds the row;
:func:`~experiments.bench_overhead.privacy_watcher` lives there with the other watchers).

A DP capture does per-sample work the plain one does not: one log-RMS map per sample instead of
per batch, a clip, a noise draw and an accountant step per capture step.

    python -m experiments.bench_privacy [--rounds 100]    # prints only; make bench writes the row
"""

from __future__ import annotations

import argparse

from experiments.bench_overhead import measure, privacy_watcher


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print the DP-mode overhead row (same protocol as :func:`experiments.bench_overhead.measure`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--frame-size", type=int, default=32)
    args = parser.parse_args(argv)
    res = measure(privacy_watcher(args.every, args.frame_size), rounds=args.rounds, every=args.every)
    print(f"DP capture: {res['ms_per_step_plain']:.2f} → {res['ms_per_step_watched']:.2f} ms/step, "
          f"median paired ratio {res['median_ratio']:.3f} ({res['ci_low']:.3f}–{res['ci_high']:.3f})")
    return res


if __name__ == "__main__":
    main()
