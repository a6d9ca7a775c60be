"""Do the frames carry evidence the training scalars lack? Late fusion of two trained variants.

Issue 24 asks the internal-state frames to add something over the training scalars. Before
changing training, this probe asks it of two checkpoints already trained (the pipeline's
``tevid_frames`` and ``tevid_scalars`` Table 12 variants): each one's per-step Dirichlet
``alpha`` is recovered from its probabilities and vacuity (``alpha = p · K / u``), the two are
fused and the fused diagnoses scored by event-time AUPRC next to each alone. Fusion rules
(:func:`fuse`): ``evidence`` adds the frames' evidence ``w·(alpha_f − 1)`` to the scalars'
``alpha`` (subjective-logic evidence pooling), ``probs`` averages probabilities with weight
``w``, ``logpool`` pools log-probabilities. Scores are raw per-step diagnoses (no run memory)
on the factory's val split, and test only when asked; attempts row 16 of docs/results.md reads
val (nothing is chosen on test).

Command (about 4 minutes per split on 2 cores)::

    python -m experiments.fusion_probe --root ~/.cache/tevid-hpo/corpus-procedural-v10 \\
        --out ~/.cache/tevid-hpo/models-procedural-v10-long [--splits val test]

Example:
    >>> import numpy as np
    >>> from core_models.metrics import RunPrediction
    >>> p = np.array([[0.6, 0.1, 0.1, 0.1, 0.1]])
    >>> a = RunPrediction("r", "Healthy", [0], [0.0], p, [0.5])          # alpha = [6, 1, 1, 1, 1]
    >>> b = RunPrediction("r", "Healthy", [0], [0.0], p[:, ::-1], [0.5])  # alpha = [1, 1, 1, 1, 6]
    >>> fused = fuse([a], [b], "evidence", 1.0)[0]                         # alpha = [6, 1, 1, 1, 6]
    >>> fused.probs.round(3).tolist(), round(float(fused.vacuity[0]), 3)
    ([[0.4, 0.067, 0.067, 0.067, 0.4]], 0.333)
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from core_models.metrics import RunPrediction, event_time_auprc, event_time_auprc_by_label

__all__ = ["dirichlet_alpha", "fuse", "main"]

Rule = Literal["evidence", "probs", "logpool"]


def dirichlet_alpha(run: RunPrediction) -> np.ndarray:
    """Per-step Dirichlet parameters of an evidential run: ``alpha = p · K / u`` (``S = K / u``).

    Example:
        >>> p = np.array([[0.6, 0.1, 0.1, 0.1, 0.1]])
        >>> dirichlet_alpha(RunPrediction("r", "Healthy", [0], [0.0], p, [0.5])).round(6).tolist()
        [[6.0, 1.0, 1.0, 1.0, 1.0]]
    """
    k = run.probs.shape[1]
    return run.probs * (k / np.clip(run.vacuity, 1e-9, None))[:, None]


def fuse(frames: Sequence[RunPrediction], scalars: Sequence[RunPrediction], rule: Rule,
         weight: float) -> list[RunPrediction]:
    """The scalars' diagnoses with the frames' fused in by ``rule`` at ``weight`` (see the module
    documentation); runs are matched by ``run_id``. Vacuity is that of the fused ``alpha`` for
    ``evidence`` and the scalars' own otherwise."""
    if rule not in ("evidence", "probs", "logpool"):
        raise ValueError(f"rule must be 'evidence', 'probs' or 'logpool', got {rule!r}")
    by_id = {r.run_id: r for r in frames}
    out = []
    for s in scalars:
        f = by_id[s.run_id]
        if rule == "evidence":
            alpha = dirichlet_alpha(s) + weight * (dirichlet_alpha(f) - 1.0)
            total = alpha.sum(1)
            out.append(dataclasses.replace(s, probs=alpha / total[:, None],
                                           vacuity=s.probs.shape[1] / total))
            continue
        if rule == "probs":
            probs = (weight * f.probs + s.probs) / (1.0 + weight)
        else:
            log = weight * np.log(np.clip(f.probs, 1e-9, 1)) + np.log(np.clip(s.probs, 1e-9, 1))
            probs = np.exp(log - log.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
        out.append(dataclasses.replace(s, probs=probs))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Score ``tevid_frames``, ``tevid_scalars`` and their fusions on each split; print a table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="factory corpus (labels.csv)")
    ap.add_argument("--out", type=Path, required=True,
                    help="pipeline out dir with tevid_frames/ and tevid_scalars/")
    ap.add_argument("--splits", nargs="+", default=["val"], choices=["val", "test"])
    ap.add_argument("--weights", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    args = ap.parse_args(argv)

    # Imported here: torch and the corpus loaders are not needed for the fusion arithmetic.
    from data_factory.store import RunStore
    from experiments.evaluate.records import predictions, tevid_run_scores
    from experiments.pipeline import load_labels, split_runs
    from tevid_hpo.diagnostician import Diagnostician

    root, out = args.root.expanduser(), args.out.expanduser()
    store, labels = RunStore(root), load_labels(root)
    for split in args.splits:
        runs, _ = split_runs(store, labels, split)
        preds = {}
        for name in ("tevid_frames", "tevid_scalars"):
            diag = Diagnostician.from_pretrained(out / name / "default", device="cpu")
            preds[name], _ = predictions(partial(tevid_run_scores, diag, name=name), runs, labels,
                                         evidential=True)
        rows = [("frames only", event_time_auprc(preds["tevid_frames"])),
                ("scalars only", event_time_auprc(preds["tevid_scalars"]))]
        for rule in ("evidence", "probs", "logpool"):
            for w in args.weights:
                fused = fuse(preds["tevid_frames"], preds["tevid_scalars"], rule, w)
                rows.append((f"{rule}, frames weight {w:g}", event_time_auprc(fused)))
        print(f"\n{split} ({len(runs)} runs), event-time AUPRC of the raw per-step diagnoses")
        print("| diagnoses | AUPRC |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value:.3f} |")
        print("\nper event label against the healthy steps (AUPRC; random = the label's share)")
        for name in ("tevid_frames", "tevid_scalars"):
            by_label = event_time_auprc_by_label(preds[name])
            print(f"- {name}: " + ", ".join(f"{k} {v:.3f} ({r:.3f})" for k, (v, r) in by_label.items()))


if __name__ == "__main__":
    main()
