"""Overhead of watching a run: ``StateCapture`` alone and the full ``TrialMonitor`` (capture +
TEViD diagnosis), against plain training steps of a small CNN, plus the latency and peak memory
of one ``Diagnostician.update()``.

Paired and interleaved in one process: two identical models train on the same batches; each
round times one block of ``every`` steps of each (order alternating per round), so slow drift of
the machine hits both arms alike. Reports the median of per-round ratios with a 95 % BCa bootstrap
interval and the ratio of medians, and writes them to ``docs/results.md``.

    python -m experiments.bench_overhead [--rounds 200] [--every 10] [--frame-size 32]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch
from scipy.stats import bootstrap
from torch import nn

from data_factory.architectures import small_cnn
from data_factory.capture import StateCapture
from experiments.report import write_section

#: builds the watcher around the model; ``None`` is plain training
Watcher = Callable[[nn.Module], AbstractContextManager] | None


def capture_watcher(every: int, frame_size: int, stats: bool) -> Watcher:
    return lambda model: StateCapture(model, every=every, frame_size=frame_size, stats=stats)


def privacy_watcher(every: int, frame_size: int, noise_multiplier: float = 1.0,
                    clip: float = 8.0, dataset_size: int = 50_000) -> Watcher:
    """A :class:`StateCapture` with a fresh :class:`DPTelemetry` around the benchmark model.

    Example:
        >>> from data_factory.architectures import small_cnn
        >>> cap = privacy_watcher(every=1, frame_size=8)(small_cnn(in_channels=3))
        >>> cap.privacy.noise_multiplier, cap.privacy.clip
        (1.0, 8.0)
    """
    from data_factory.privacy import DPTelemetry

    return lambda model: StateCapture(model, every=every, frame_size=frame_size,
                                      privacy=DPTelemetry(noise_multiplier, clip,
                                                          dataset_size=dataset_size, seed=0))


def monitor_watcher(every: int, profile: str = "cpu", asynchronous: bool = True) -> Watcher:
    from core_models.tevid import TEViD
    from tevid_hpo.diagnostician import Diagnostician
    from tevid_hpo.monitor import TrialMonitor

    # An untrained model costs exactly what a trained one does; no checkpoint needed.
    diag = Diagnostician(TEViD(profile), device="cpu")
    return lambda model: TrialMonitor(model, every=every, diagnostician=diag, device="cpu",
                                      asynchronous=asynchronous)


def measure(watcher: Watcher, rounds: int = 200, every: int = 10, batch: int = 64,
            image_size: int = 16, seed: int = 0, threads: int = 1) -> dict[str, float]:
    """Time ``rounds`` paired blocks of ``every`` steps, plain vs watched."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    plain = small_cnn(in_channels=3, num_classes=10)
    watched = copy.deepcopy(plain)
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (plain, watched)}
    xs = torch.randn(every, batch, 3, image_size, image_size)
    ys = torch.randint(0, 10, (every, batch))

    def block(model: nn.Module, ctx) -> float:
        opt = opts[id(model)]
        start = time.perf_counter()
        for i in range(every):
            loss = nn.functional.cross_entropy(model(xs[i]), ys[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if ctx is not None:
                # StateCapture.step() takes no loss; TrialMonitor.step(loss=...) checks it
                ctx.step(loss=loss.item()) if hasattr(ctx, "metrics") else ctx.step()
            opt.step()
        if ctx is not None and hasattr(ctx, "metrics"):
            _ = ctx.last   # wait for an asynchronous diagnosis: each block pays for its own capture
        return time.perf_counter() - start

    ctx_manager = watcher(watched) if watcher else None
    with ctx_manager if ctx_manager is not None else _null() as ctx:
        for _ in range(5):  # warm-up: allocator, layer discovery, first-frame statistics
            block(plain, None), block(watched, ctx)
        base, arm = [], []
        for r in range(rounds):
            if r % 2:
                base.append(block(plain, None)), arm.append(block(watched, ctx))
            else:
                arm.append(block(watched, ctx)), base.append(block(plain, None))
    base, arm = np.array(base), np.array(arm)
    ratios = arm / base
    ci = bootstrap((ratios,), np.median, confidence_level=0.95, method="BCa", n_resamples=2000,
                   random_state=seed).confidence_interval
    return {"median_ratio": float(np.median(ratios)), "ci_low": float(ci.low), "ci_high": float(ci.high),
            "ratio_of_medians": float(np.median(arm) / np.median(base)),
            "ms_per_step_plain": 1e3 * float(np.median(base)) / every,
            "ms_per_step_watched": 1e3 * float(np.median(arm)) / every,
            "params": sum(p.numel() for p in plain.parameters())}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def inference_latency(profile: str = "cpu", updates: int = 300, warmup: int = 30,
                      threads: int = 1, seed: int = 0) -> dict[str, float]:
    """Median / p90 latency of ``Diagnostician.update()`` and the process's peak RSS."""
    from core_models.profiles import get_profile
    from core_models.tevid import TEViD
    from data_factory.frames import Frame
    from tevid_hpo.diagnostician import Diagnostician

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    prof = get_profile(profile)
    diag = Diagnostician(TEViD(profile), device="cpu")
    frames = [Frame(torch.randn(6, prof.frame_size, prof.frame_size).to(torch.bfloat16), step=i)
              for i in range(updates + warmup)]
    times = []
    for i, f in enumerate(frames):
        start = time.perf_counter()
        diag.update(f)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    t = np.array(times) * 1e3
    return {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params": sum(p.numel() for p in diag.model.parameters())}


def _row(name: str, res: dict[str, float]) -> str:
    return (f"| {name} | {res['ms_per_step_plain']:.2f} | {res['ms_per_step_watched']:.2f} | "
            f"{res['median_ratio']:.3f} ({res['ci_low']:.3f}–{res['ci_high']:.3f}) | "
            f"{res['ratio_of_medians']:.3f} |")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--frame-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/results.md alone")
    args = parser.parse_args(argv)
    kw = dict(rounds=args.rounds, every=args.every, seed=args.seed, threads=args.threads)
    results = {
        "StateCapture(stats=False) (default)": measure(capture_watcher(args.every, args.frame_size, False), **kw),
        "StateCapture(stats=True) (factory)": measure(capture_watcher(args.every, args.frame_size, True), **kw),
        "TrialMonitor (capture + TEViD cpu profile, asynchronous: default)":
            measure(monitor_watcher(args.every), **kw),
        "TrialMonitor(asynchronous=False)": measure(monitor_watcher(args.every, asynchronous=False), **kw),
    }
    results["StateCapture(privacy=DPTelemetry(z=1, C=8)) (DP mode)"] = measure(
        privacy_watcher(args.every, args.frame_size), **kw)
    latency = inference_latency(threads=args.threads, seed=args.seed)
    params = next(iter(results.values()))["params"]
    body = "\n".join([
        "## Overhead of watching a run (targets: capture ≤ 1.05×, asynchronous monitor ≤ 1.05×; update ≤ 5 ms median)", "",
        f"Small CNN ({params:,} parameters, 3×16×16 inputs, batch 64), SGD, every={args.every}, "
        f"S={args.frame_size}, {args.rounds} paired interleaved blocks of `every` steps per row, "
        f"{args.threads} torch thread(s) for training on a {os.cpu_count()}-core machine: the "
        "asynchronous monitor diagnoses on its own thread, which uses a core training leaves "
        "free; with every core busy training, expect the synchronous row.", "",
        "| watcher | ms/step plain | ms/step watched | median paired ratio (95 % BCa) | ratio of medians |",
        "|---|---|---|---|---|",
        *[_row(name, res) for name, res in results.items()], "",
        f"`Diagnostician.update()` (cpu profile, {latency['params']:,} parameters, untrained weights — "
        f"same cost as trained): median {latency['median_ms']:.2f} ms, p90 {latency['p90_ms']:.2f} ms "
        f"over 300 updates; peak RSS of the benchmark process {latency['peak_rss_mb']:.0f} MB.",
    ])
    print(body)
    if not args.no_write:
        write_section("capture-overhead", body, command="python -m experiments.bench_overhead",
                      rounds=args.rounds, every=args.every, frame_size=args.frame_size, seed=args.seed,
                      threads=args.threads)
    return {**results, "latency": latency}


if __name__ == "__main__":
    main()
