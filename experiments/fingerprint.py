"""Static-fingerprint probe (issue 24 point 2): how well does a run's FIRST frame alone predict its
label? A diagnostician should need dynamics; if a still frame at step 0 already names the label,
the corpus leaks it through the architecture / recipe of each cell.

The probe is a standardised multinomial logistic regression (scikit-learn) on the first frame's
pixels (average-pooled to ``pool×pool`` per channel) and its per-layer summaries (``stats``),
trained on the corpus' train runs and scored on its val runs: balanced accuracy and macro
one-vs-rest AUROC, each with a run-bootstrap interval (:func:`core_models.metrics.bootstrap`).
The label is the intervention family recorded in each run's meta (the ground truth the factory
planted). Chance: balanced accuracy ``1 / #classes``, AUROC 0.5.

Usage::

    python -m experiments.fingerprint /tmp/fp_corpus [--pool 8] [--resamples 1000] [--target arch]

Example:
    >>> import numpy as np
    >>> x = np.r_[np.zeros((10, 3)), np.ones((10, 3))]
    >>> y = np.array(["Healthy"] * 10 + ["Instability"] * 10)
    >>> scores(*fit_probe(x, y, x, y), resamples=0)["balanced_accuracy"]
    1.0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core_models.metrics.bootstrap import bootstrap_ci
from core_models.metrics.record import RunPrediction
from data_factory.labels import KNOWN_LABELS
from data_factory.store import RunStore

__all__ = ["first_frame_features", "fit_probe", "load_features", "scores"]


def first_frame_features(tensor: torch.Tensor, stats: np.ndarray, pool: int = 8) -> np.ndarray:
    """Features of one frame: ``6×pool×pool`` average-pooled pixels, then the frame's stats.

    Example:
        >>> first_frame_features(torch.zeros(6, 32, 32), np.ones(4), pool=2).shape
        (28,)
    """
    pooled = torch.nn.functional.adaptive_avg_pool2d(tensor.float()[None], pool)[0]
    return np.nan_to_num(np.r_[pooled.reshape(-1).numpy(), np.asarray(stats, dtype=np.float32)],
                         nan=0.0, posinf=1e3, neginf=-1e3)


def load_features(root: str | Path, pool: int = 8, target: str = "label"
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (features, targets)}`` from the first frame of every run under ``root``; stats
    columns are aligned by name (a run lacking one reads 0). ``target``: ``"label"`` (the
    intervention family) or ``"arch"`` (the meta's ``arch_family``: how well a still frame names
    the architecture)."""
    rows: dict[str, list[tuple[np.ndarray, dict[str, float], str]]] = {}
    names: list[str] = []
    for run in RunStore(root):
        frames = run.frames
        if len(frames) == 0:
            continue
        stats = dict(zip(frames.stat_names, map(float, frames.stats[0])))
        names += [n for n in frames.stat_names if n not in names]
        pixels = first_frame_features(frames.tensor[0], np.zeros(0), pool)
        rows.setdefault(run.meta["split"], []).append(
            (pixels, stats, run.meta["intervention"]["family"] if target == "label"
             else str(run.meta["arch_family"])))
    return {split: (np.stack([np.r_[p, [s.get(n, 0.0) for n in names]] for p, s, _ in items]),
                    np.array([label for *_, label in items])) for split, items in rows.items()}


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fit on train; return ``(val labels, val class probabilities, class names)``."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    model.fit(np.nan_to_num(x_train), y_train)
    return y_val, model.predict_proba(np.nan_to_num(x_val)), list(model.classes_)


def _metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> tuple[float, float]:
    pred = np.array(classes)[probs.argmax(1)]
    bal = float(balanced_accuracy_score(labels, pred))
    present = [c for c in classes if c in set(labels)]
    if len(present) < 2:
        return bal, float("nan")
    aucs = [roc_auc_score(labels == c, probs[:, classes.index(c)]) for c in present
            if 0 < (labels == c).sum() < len(labels)]
    return bal, float(np.mean(aucs))


def scores(labels: np.ndarray, probs: np.ndarray, classes: list[str], resamples: int = 1000
           ) -> dict[str, Any]:
    """Balanced accuracy and macro AUROC on val, with 95 % run-bootstrap intervals.

    Example:
        >>> s = scores(np.array(["Healthy", "Instability"] * 5), np.tile([[0.5, 0.5]], (10, 1)),
        ...            ["Healthy", "Instability"], resamples=0)
        >>> s["macro_auroc"], s["chance_balanced_accuracy"]
        (0.5, 0.5)
    """
    bal, auc = _metrics(labels, probs, classes)
    out: dict[str, Any] = {"n_val": len(labels), "classes": sorted(set(labels)),
                           "balanced_accuracy": bal, "macro_auroc": auc,
                           "chance_balanced_accuracy": 1.0 / len(set(labels)), "chance_auroc": 0.5}
    if resamples:
        known = list(KNOWN_LABELS)
        full = np.zeros((len(labels), len(known)))
        for j, c in enumerate(classes):
            full[:, known.index(c)] = probs[:, j]
        # one 'diagnosis' per run (its first frame); event label = run label, no onset needed
        runs = [RunPrediction(str(i), str(lab), [0], [0], full[i:i + 1], [0.0],
                              event_labels=[str(lab)])
                for i, lab in enumerate(labels)]

        def metric(k: int):
            def fn(rs: list[RunPrediction]) -> float:
                ls = np.array([r.label for r in rs])
                ps = np.stack([np.asarray(r.probs)[0] for r in rs])
                return _metrics(ls, ps, known)[k]
            return fn

        for k, name in enumerate(("balanced_accuracy", "macro_auroc")):
            ci = bootstrap_ci(metric(k), runs, n_resamples=resamples, method="percentile")
            out[f"{name}_ci"] = [round(float(ci.low), 3), round(float(ci.high), 3)]
    return out


def main() -> None:
    """Command line: probe one corpus root and print the scores as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--target", choices=("label", "arch"), default="label",
                        help="arch: 5-fold CV balanced accuracy of the architecture family")
    args = parser.parse_args()
    feats = load_features(args.root, args.pool, args.target)
    if args.target == "arch":  # val holds out families, so score the architecture by CV instead
        from sklearn.model_selection import cross_val_score

        x = np.concatenate([f[0] for f in feats.values()])
        y = np.concatenate([f[1] for f in feats.values()])
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        cv = cross_val_score(probe, x, y, cv=5, scoring="balanced_accuracy")
        print(json.dumps({"root": str(args.root), "n_runs": len(y), "families": sorted(set(y)),
                          "cv_balanced_accuracy": round(float(cv.mean()), 3),
                          "chance": round(1 / len(set(y)), 3)}, indent=1))
        return
    (x_tr, y_tr), (x_va, y_va) = feats["train"], feats["val"]
    out = scores(*fit_probe(x_tr, y_tr, x_va, y_va), resamples=args.resamples)
    out.update(root=str(args.root), n_train=len(y_tr), features=int(x_tr.shape[1]))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
