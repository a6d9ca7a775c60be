"""Capture overhead in DP mode, for ``make bench`` (:mod:`experiments.bench_overhead` adds the row).

A DP capture does per-sample work the plain one does not: one log-RMS map per sample instead of
per batch, a clip, a noise draw and an accountant step per capture step.

    python -m experiments.bench_privacy [--rounds 100]    # prints only; make bench writes the row
"""

from __future__ import annotations

import argparse

from data_factory.capture import StateCapture
from data_factory.privacy import DPTelemetry
from experiments.bench_overhead import Watcher, measure


def privacy_watcher(every: int, frame_size: int, noise_multiplier: float = 1.0,
                    clip: float = 8.0, dataset_size: int = 50_000) -> Watcher:
    """A :class:`StateCapture` with a fresh :class:`DPTelemetry` around the benchmark model.

    Example:
        >>> import torch
        >>> from data_factory.architectures import small_cnn
        >>> cap = privacy_watcher(every=1, frame_size=8)(small_cnn(in_channels=3))
        >>> cap.privacy.noise_multiplier, cap.privacy.clip
        (1.0, 8.0)
    """
    return lambda model: StateCapture(model, every=every, frame_size=frame_size,
                                      privacy=DPTelemetry(noise_multiplier, clip,
                                                          dataset_size=dataset_size, seed=0))


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
