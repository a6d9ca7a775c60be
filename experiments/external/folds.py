"""Parts of external-dev, so one part can train or calibrate and another judge.

external-dev grew in blocks: 58 written-out rows (v1–v3), which every checkpoint up to attempts
row 16 used as its transfer set (calibration and the run-memory choice), and 120 drawn rows (v4,
:func:`experiments.external.suite._draw`). A change that *uses* dev runs — fine-tuning on them,
calibrating on more of them — is judged on a part it did not use. The parts, by the row index in
the run id (``external-dev-NN-…``):

==============  ==============================================================================
``all``         every dev run
``written``     rows 0–57 (the transfer set of rows 14 and 16)
``drawn``       rows 58–177
``drawn-even``  drawn rows with an even index
``drawn-odd``   drawn rows with an odd index
==============  ==============================================================================

Parts join with ``+`` (``written+drawn-even``: every dev run but the odd drawn ones).
External-test has no parts: nothing may use it (:class:`experiments.evaluate.LeakageGuard`).

``python -m experiments.external.folds --checkpoint CKPT --part drawn-odd`` prints a checkpoint's
own-alert outcome on one part (the suite's own definitions: :func:`~experiments.external.report
.summarise`); ``--baseline CKPT2`` adds the other checkpoint and the paired bootstrap interval of
the AUPRC difference.

Example:
    >>> in_part("external-dev-07-mlp-digits-lr_jump-6d87fafc843d", "written")
    True
    >>> [in_part(f"external-dev-{i}-mlp-digits-healthy", "drawn-odd") for i in (58, 59, 177)]
    [False, True, True]
    >>> in_part("external-test-03-mlp_norm-wine-healthy", "all")
    False
    >>> [in_part(f"external-dev-{i}-mlp-digits-healthy", "written+drawn-even") for i in (3, 58, 59)]
    [True, True, False]
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from collections.abc import Sequence
from typing import Any

from experiments.external.suite import DEV_HALF

__all__ = ["PARTS", "WRITTEN_ROWS", "compare_parts", "in_part", "part_outcome"]

#: external-dev's rows before the drawn block.
WRITTEN_ROWS = 58
#: The parts :func:`in_part` knows.
PARTS: tuple[str, ...] = ("all", "written", "drawn", "drawn-even", "drawn-odd")
_ROW = re.compile(rf"^{DEV_HALF}-(\d+)-")


def in_part(run_id: str, part: str) -> bool:
    """Whether the external-dev run ``run_id`` belongs to ``part`` — one of :data:`PARTS` or
    several joined with ``+`` (any other run: never).

    Raises:
        ValueError: for an unknown part.
    """
    names = part.split("+")
    bad = [p for p in names if p not in PARTS]
    if bad:
        raise ValueError(f"unknown external-dev part {bad[0]!r}; choose from {list(PARTS)}, "
                         "joined with '+'")
    if len(names) > 1:
        return any(in_part(run_id, p) for p in names)
    m = _ROW.match(run_id)
    if m is None:
        return False
    row = int(m.group(1))
    return {"all": True, "written": row < WRITTEN_ROWS, "drawn": row >= WRITTEN_ROWS,
            "drawn-even": row >= WRITTEN_ROWS and row % 2 == 0,
            "drawn-odd": row >= WRITTEN_ROWS and row % 2 == 1}[part]


def part_outcome(checkpoint: str, part: str, key: str | None = None) -> dict[str, Any]:
    """A checkpoint's own alert on the counted recordings of one external-dev ``part``:
    detections, false alarms (and how many in epoch 0), median delay, event-time AUPRC.

    The same scoring as ``python -m experiments.external --half dev --no-record
    --no-baselines --checkpoint CKPT``, restricted afterwards to the part's runs.
    """
    import numpy as np

    from core_models.metrics import event_time_auprc
    from experiments.evaluate import LeakageGuard
    from experiments.external.methods import score_methods
    from experiments.external.record import store_for
    from experiments.external.report import summarise
    from experiments.external.truth import truth_of
    from tevid_hpo import Diagnostician

    store = store_for(key=key)
    runs = [store.load(rid) for rid in store.list() if in_part(rid, part)]
    runs = [r for r in runs if (r.path / "frames.safetensors").exists()]
    truths = {r.run_id: truth_of(r) for r in runs}
    counted = [r for r in runs if truths[r.run_id].counted]
    diag = Diagnostician.from_pretrained(checkpoint, device="cpu")
    methods = score_methods({DEV_HALF: counted}, truths, None, LeakageGuard([], factors=()),
                            diag=diag, log=lambda *_: None)
    own = methods["tevid"]
    df = summarise(own, DEV_HALF, counted, truths)
    pos, ref = df[df.positive], df[df.reference]
    delays = pos.delay.dropna()
    return {"part": part, "checkpoint": str(checkpoint), "runs": len(counted),
            "detections": int(pos.detected.sum()), "positives": len(pos),
            "false_alarms": int(ref.false_alarm.sum()), "references": len(ref),
            "false_alarms_epoch0": int((ref.false_alarm & ref.first_epoch).sum()),
            "median_delay": float(np.median(delays)) if len(delays) else None,
            "auprc": float(event_time_auprc(list(own.preds[DEV_HALF]))),
            "preds": list(own.preds[DEV_HALF])}


def compare_parts(checkpoint: str, baseline: str, part: str, key: str | None = None,
                  n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Both checkpoints' :func:`part_outcome` on ``part`` and the paired run-level bootstrap
    interval of their event-time AUPRC difference (``checkpoint`` minus ``baseline``: the same
    resamples of the same runs, :func:`core_models.metrics.paired_bootstrap_ci`)."""
    from core_models.metrics import event_time_auprc, paired_bootstrap_ci

    a, b = part_outcome(checkpoint, part, key), part_outcome(baseline, part, key)
    ci = paired_bootstrap_ci(event_time_auprc, a["preds"], b["preds"], n_resamples=n_resamples,
                             seed=seed)
    return {"checkpoint": a, "baseline": b,
            "auprc_difference": {"estimate": ci.estimate, "low": ci.low, "high": ci.high}}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m experiments.external.folds --checkpoint CKPT --part PART``."""
    ap = argparse.ArgumentParser(prog="python -m experiments.external.folds",
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
