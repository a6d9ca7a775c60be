"""``python -m experiments.external`` — record, label and score the external suite, write the tables.

    python -m experiments.external                     # the whole suite (make external)
    python -m experiments.external --smoke --results /tmp/r.md   # a few short runs, end to end
    python -m experiments.external --workers 1 --resamples 200 --no-baselines
    python -m experiments.external --half dev --no-record --checkpoint ckpt   # score a checkpoint
    python -m experiments.external --half train      # record the external-train pool only

Steps (each cached and resumable): record every run of both halves under a ``TrialMonitor``
(:mod:`.record`); build / find the labelled factory corpus the trained baselines learn from
(:mod:`.corpus`); label every recording (:mod:`.truth`); score every method (:mod:`.methods`);
write the ``external-*`` sections of ``docs/results.md`` and ``docs/figures/external_runs.png``
(:mod:`.report`) and ``summary.json`` next to the recordings (``summary-dev-<hash>.json`` when
``--checkpoint`` is scored: one file per checkpoint).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from experiments.cli import sigterm_as_interrupt
from experiments.external.pipeline import run_external


def main(argv: list[str] | None = None) -> dict:
    """Parse the command line and run :func:`~experiments.external.pipeline.run_external`."""
    ap = argparse.ArgumentParser(prog="python -m experiments.external", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="only the short smoke runs (make test)")
    ap.add_argument("--workers", type=int, default=2, help="recording processes")
    ap.add_argument("--resamples", type=int, default=1000, help="BCa bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baselines", action="store_true",
                    help="skip the Table 3 baselines (no factory corpus needed)")
    ap.add_argument("--results", type=Path, default=None,
                    help="results file (default docs/results.md; --smoke writes nothing unless set)")
    ap.add_argument("--figures", type=Path, default=None, help="figure directory")
    ap.add_argument("--root", type=Path, default=None, help="recordings root (default the cache)")
    ap.add_argument("--no-record", action="store_true",
                    help="score only what is recorded already (train nothing)")
    ap.add_argument("--key", default=None,
                    help="use the recordings of this cache key (default: the current frame and "
                         "capture code's and checkpoint's)")
    ap.add_argument("--half", choices=("dev", "test", "train"), default=None,
                    help="record and score one half only (default both); train: record the "
                         "external-train pool (trained on, never scored)")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="labelled factory corpus the trained baselines learn from (default: "
                         "the full corpus if built, else a quick one)")
    ap.add_argument("--checkpoint", default=None,
                    help="TEViD checkpoint scored offline on the recordings (default shipped)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    t0 = time.time()
    with sigterm_as_interrupt():   # the recording pool's workers end with the command
        summary = run_external(smoke=args.smoke, workers=args.workers,
                               n_resamples=args.resamples, seed=args.seed,
                               baselines=not args.no_baselines, results=args.results,
                               figures=args.figures, root=args.root, key=args.key,
                               record=not args.no_record, half=args.half,
                               checkpoint=args.checkpoint, corpus=args.corpus)
    print(json.dumps({"seconds": round(time.time() - t0, 1),
                      "runs": summary.get("runs")}, indent=1))
    return summary


if __name__ == "__main__":
    main()
