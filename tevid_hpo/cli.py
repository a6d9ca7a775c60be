"""The ``tevid-hpo`` command line.

Example:
    $ tevid-hpo --help
    $ tevid-hpo demo
    $ tevid-hpo capture-demo
    $ tevid-hpo show tevid_runs/capture-demo/runs/diverging-sgd-lr20 --gif
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Share of a channel's pixels at the clip above which a frame counts as saturated in that channel.
SATURATED = 0.01


def saturation_summary(clipped: np.ndarray, channels: Sequence[str]) -> str:
    """One line per channel: how much of a run sits at the clip (``clipped`` is ``N×6``).

    The first frame is left out of the count: it is the reference, so it is centred by design.

    Example:
        >>> import numpy as np
        >>> c = np.zeros((4, 2)); c[1:, 1] = [1.0, 1.0, 0.005]
        >>> print(saturation_summary(c, ["act0", "grad0"]))
        saturation (share of pixels at the clip, frames after the first):
          act0   max 0.000  frames >1%: 0/3
          grad0  max 1.000  frames >1%: 2/3
    """
    later = np.asarray(clipped, dtype=float)[1:]
    lines = ["saturation (share of pixels at the clip, frames after the first):"]
    for k, name in enumerate(channels):
        col = later[:, k] if later.size else np.zeros(0)
        peak = float(col.max()) if col.size else 0.0
        lines.append(f"  {name:<6} max {peak:.3f}  frames >{SATURATED:.0%}: "
                     f"{int((col > SATURATED).sum())}/{len(col)}")
    return "\n".join(lines)


def _cmd_show(args: argparse.Namespace) -> int:
    from data_factory.frames import CHANNELS
    from data_factory.store import RunStoreError, load_run
    from tevid_hpo.render import render_gif, render_strip

    try:
        run = load_run(args.run_dir)
        frames = list(run.frames)
    except RunStoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.run_dir) / ("video.gif" if args.gif else "video.png")
    if args.gif:
        render_gif(frames, out, max_frames=args.max_frames)
    else:
        render_strip(frames, out, max_frames=args.max_frames, title=run.run_id)
    print(saturation_summary(run.frames.clipped, CHANNELS))
    print(out)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tevid_hpo.optuna_demo import run_demo

    run_demo(out_dir=args.out, n_trials=args.trials, epochs=args.epochs, seed=args.seed)
    return 0


def _cmd_capture_demo(args: argparse.Namespace) -> int:
    from tevid_hpo.capture_demo import run_capture_demo

    run_capture_demo(args.out, epochs=args.epochs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="tevid-hpo",
        description="Diagnosis-driven pruning for hyperparameter search: capture internal-state "
                    "videos of training runs and stop doomed trials early.")
    sub = parser.add_subparsers(dest="command", required=True)

    from tevid_hpo.optuna_demo import DEFAULT_EPOCHS, DEFAULT_TRIALS

    demo = sub.add_parser("demo", help="an Optuna study on digits, once with HyperbandPruner and "
                                       "once with TEViDPruner, side by side")
    demo.add_argument("--out", default="tevid_runs", help="output directory (SQLite storage, runs)")
    demo.add_argument("--trials", type=int, default=DEFAULT_TRIALS)
    demo.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)

    cdemo = sub.add_parser("capture-demo",
                           help="train two small runs (healthy, diverging), capture and render them")
    cdemo.add_argument("--out", default="tevid_runs/capture-demo", help="output directory")
    cdemo.add_argument("--epochs", type=int, default=6)
    cdemo.set_defaults(func=_cmd_capture_demo)

    show = sub.add_parser("show", help="render a stored run's internal-state video (PNG or GIF)")
    show.add_argument("run_dir", help="a run directory written by RunStore")
    show.add_argument("--out", help="output file (default RUN_DIR/video.png or .gif)")
    show.add_argument("--gif", action="store_true", help="write an animated GIF instead of a PNG strip")
    show.add_argument("--max-frames", type=int, default=16, help="frames shown (sampled evenly)")
    show.set_defaults(func=_cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tevid-hpo`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
