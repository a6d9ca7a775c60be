"""A checkpoint's own alert on one part of external-dev (:mod:`experiments.external.folds`),
alone or against another checkpoint with the paired bootstrap interval of the AUPRC difference.

    python -m experiments.external.part_scores --checkpoint CKPT --part drawn-odd
    python -m experiments.external.part_scores --checkpoint CKPT --baseline CKPT2 --part drawn

The suite's own definitions (:func:`experiments.external.methods.score_methods`,
:func:`experiments.external.report.summarise`) on the recorded runs, restricted to the part;
nothing is trained and nothing is written.

Example:
    >>> callable(part_outcome) and callable(compare_parts)
    True
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from typing import Any

from experiments.external.folds import PARTS, in_part
from experiments.external.suite import DEV_HALF

__all__ = ["compare_parts", "part_outcome"]


def _part_runs(part: str, key: str | None) -> tuple[list[Any], dict[str, Any]]:
    """The counted recordings of ``part`` and every recording's truth."""
    from experiments.external.record import store_for
    from experiments.external.truth import truth_of

    store = store_for(key=key)
    runs = [store.load(rid) for rid in store.list() if in_part(rid, part)]
    runs = [r for r in runs if (r.path / "frames.safetensors").exists()]
    truths = {r.run_id: truth_of(r) for r in runs}
    return [r for r in runs if truths[r.run_id].counted], truths


def _outcome(checkpoint: str, part: str, counted: Sequence[Any], truths: dict[str, Any]
             ) -> dict[str, Any]:
    from core_models.metrics import event_time_auprc
    from experiments.evaluate import LeakageGuard
    from experiments.external.methods import score_methods
    from experiments.external.report import alert_counts, summarise
    from tevid_hpo import Diagnostician

    diag = Diagnostician.from_pretrained(checkpoint, device="cpu")
    own = score_methods({DEV_HALF: counted}, truths, None, LeakageGuard([], factors=()),
                        diag=diag, log=lambda *_: None)["tevid"]
    counts = alert_counts(summarise(own, DEV_HALF, counted, truths))
    counts.pop("premature")
    return {"part": part, "checkpoint": str(checkpoint), "runs": len(counted), **counts,
            "auprc": float(event_time_auprc(list(own.preds[DEV_HALF]))),
            "preds": list(own.preds[DEV_HALF])}


def part_outcome(checkpoint: str, part: str, key: str | None = None) -> dict[str, Any]:
    """A checkpoint's own alert on the counted recordings of one external-dev ``part``:
    detections, false alarms (and how many in epoch 0), median delay, event-time AUPRC.

    The same scoring as ``python -m experiments.external --half dev --no-record
    --no-baselines --checkpoint CKPT``, restricted afterwards to the part's runs.
    """
    return _outcome(checkpoint, part, *_part_runs(part, key))


def compare_parts(checkpoint: str, baseline: str, part: str, key: str | None = None,
                  n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Both checkpoints' :func:`part_outcome` on ``part`` (the recordings read once) and the
    paired run-level bootstrap interval of their event-time AUPRC difference (``checkpoint``
    minus ``baseline``: the same resamples of the same runs,
    :func:`core_models.metrics.paired_bootstrap_ci`)."""
    from core_models.metrics import event_time_auprc, paired_bootstrap_ci

    counted, truths = _part_runs(part, key)
    a = _outcome(checkpoint, part, counted, truths)
    b = _outcome(baseline, part, counted, truths)
    ci = paired_bootstrap_ci(event_time_auprc, a["preds"], b["preds"], n_resamples=n_resamples,
                             seed=seed)
    return {"checkpoint": a, "baseline": b,
            "auprc_difference": {"estimate": ci.estimate, "low": ci.low, "high": ci.high}}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m experiments.external.part_scores --checkpoint CKPT --part PART``."""
    ap = argparse.ArgumentParser(prog="python -m experiments.external.part_scores",
                                 description=part_outcome.__doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--part", default="all", help=f"one of {PARTS}, or several joined with +")
    ap.add_argument("--key", default=None, help="recordings of this cache key")
    ap.add_argument("--baseline", default=None,
                    help="also score this checkpoint and print the paired AUPRC difference")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    if args.baseline is None:
        out = part_outcome(args.checkpoint, args.part, args.key)
        shown = {k: v for k, v in out.items() if k != "preds"}
    else:
        out = compare_parts(args.checkpoint, args.baseline, args.part, args.key)
        shown = {k: ({kk: vv for kk, vv in v.items() if kk != "preds"} if isinstance(v, dict)
                     else v) for k, v in out.items()}
    print(json.dumps(shown, indent=1))
    return out


if __name__ == "__main__":
    main()
