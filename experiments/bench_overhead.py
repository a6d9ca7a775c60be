"""Capture overhead: training steps of a small CNN with and without ``StateCapture``.

Paired and interleaved in one process: two identical models train on the same batches; each
round times one block of ``every`` steps of each (order alternating per round), so slow drift of
the machine hits both arms alike. Reports the ratio of medians, the median of per-round ratios
with a 95 % BCa bootstrap interval, and writes them to ``docs/results.md``.

    python -m experiments.bench_overhead [--rounds 200] [--every 10] [--frame-size 32]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from scipy.stats import bootstrap
from torch import nn

from data_factory.architectures import small_cnn
from data_factory.capture import StateCapture
from experiments.report import write_section


def measure(rounds: int = 200, every: int = 10, frame_size: int = 32, batch: int = 64,
            image_size: int = 16, seed: int = 0, threads: int = 1, stats: bool = False) -> dict[str, float]:
    """Time ``rounds`` paired blocks of ``every`` steps; returns summary numbers."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    plain = small_cnn(in_channels=3, num_classes=10)
    captured = copy.deepcopy(plain)
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (plain, captured)}
    xs = torch.randn(every, batch, 3, image_size, image_size)
    ys = torch.randint(0, 10, (every, batch))

    def block(model: nn.Module, cap: StateCapture | None) -> float:
        opt = opts[id(model)]
        start = time.perf_counter()
        for i in range(every):
            loss = nn.functional.cross_entropy(model(xs[i]), ys[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cap is not None:
                cap.step()
            opt.step()
        return time.perf_counter() - start

    with StateCapture(captured, every=every, frame_size=frame_size, stats=stats) as cap:
        for _ in range(5):  # warm-up: allocator, layer discovery, first-frame statistics
            block(plain, None), block(captured, cap)
        base, with_cap = [], []
        for r in range(rounds):
            if r % 2:
                base.append(block(plain, None)), with_cap.append(block(captured, cap))
            else:
                with_cap.append(block(captured, cap)), base.append(block(plain, None))
    base, with_cap = np.array(base), np.array(with_cap)
    ratios = with_cap / base
    ci = bootstrap((ratios,), np.median, confidence_level=0.95, method="BCa",
                         n_resamples=2000, random_state=seed).confidence_interval
    return {"median_ratio": float(np.median(ratios)), "ci_low": float(ci.low), "ci_high": float(ci.high),
            "ratio_of_medians": float(np.median(with_cap) / np.median(base)),
            "ms_per_step_plain": 1e3 * float(np.median(base)) / every,
            "ms_per_step_capture": 1e3 * float(np.median(with_cap)) / every,
            "params": sum(p.numel() for p in plain.parameters())}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--frame-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/results.md alone")
    args = parser.parse_args(argv)
    rows = []
    for stats_on in (False, True):
        res = measure(rounds=args.rounds, every=args.every, frame_size=args.frame_size,
                      seed=args.seed, threads=args.threads, stats=stats_on)
        rows.append(f"| `stats={stats_on}`{' (default)' if not stats_on else ' (factory)'} | "
                    f"{res['ms_per_step_plain']:.2f} | {res['ms_per_step_capture']:.2f} | "
                    f"{res['median_ratio']:.3f} ({res['ci_low']:.3f}–{res['ci_high']:.3f}) | "
                    f"{res['ratio_of_medians']:.3f} |")
    body = (
        "## Capture overhead (foundation issue; target ≤ 1.05×)\n\n"
        f"Small CNN ({res['params']:,} parameters, 3×16×16 inputs, batch 64), SGD, "
        f"`StateCapture(every={args.every}, frame_size={args.frame_size})`, {args.rounds} paired "
        "interleaved blocks of `every` steps per row. `stats=True` also records the raw per-layer "
        "summaries the scalar baselines use.\n\n"
        "| capture | ms/step plain | ms/step with capture | median paired ratio (95 % BCa) | ratio of medians |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows)
    )
    print(body)
    if not args.no_write:
        write_section("capture-overhead", body, command="python -m experiments.bench_overhead",
                      rounds=args.rounds, every=args.every, frame_size=args.frame_size, seed=args.seed,
                      threads=args.threads)
    return res


if __name__ == "__main__":
    main()
