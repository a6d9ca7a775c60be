"""The GBDT pilot of paper Appendix K.3 at CPU scale: does TEViD detect overfitting in boosting?

    python -m experiments.gbdt_pilot                       # shipped TEViD checkpoint, full pilot
    python -m experiments.gbdt_pilot --checkpoint PATH     # start from another TEViD checkpoint
    python -m experiments.gbdt_pilot --quick --checkpoint PATH   # every stage, in seconds
    python -m experiments.gbdt_pilot --write-results       # also write docs/results.md

1. **Runs.** LightGBM binary classifiers on offline data standing in for Higgs: scikit-learn's
   ``make_classification`` (64 features, 8 informative, 8 redundant, 15 % flipped labels, one
   data set per ``data_seed``), trained on 400–2,000 examples and validated on 2,000, for a fixed
   number of rounds. Learning rate (log-uniform in ``lr_range``, 0.01–0.3), ``num_leaves``
   (4–128), ``min_data_in_leaf`` (1–100), ``feature_fraction`` and ``lambda_l2`` vary, so some
   runs keep improving to the end and others overfit early (about half of them). Every round's
   :class:`~tevid_hpo.lightgbm.FeatureImportanceFrames` frame and validation log-loss are
   recorded.
2. **Labels** (privileged, offline, as in Appendix A). A run *overfits* when its validation
   log-loss diverges: the rule fires at the first round ``t`` at which the loss has stayed more
   than ``delta`` (2 %) above its running minimum for ``patience`` (3) consecutive rounds;
   ``fire = t``, ``onset`` = the round of that minimum. Runs where it never fires are Healthy. A
   frame is labelled Overfitting from the onset on (``frame_event_labels``), Healthy before.
3. **Fine-tuning.** Runs are split (seeded, stratified by label) into fine-tuning, calibration and
   held-out runs. A TEViD is initialised from the given checkpoint (its encoder *and* head — the
   head's Healthy/Overfitting outputs are reused — so with ``--train head`` only the head moves)
   and fine-tuned with :func:`core_models.train.finetune` on the streaming windows of the
   fine-tuning runs for up to ``finetune_epochs`` epochs, keeping the epoch whose model
   classifies the calibration runs' clips best (early stopping on calibration data;
   ``--last-epoch`` keeps the last). Temperature and abstention (``tau_u`` = 0.35) come from
   :func:`core_models.calibration.calibrate` on the calibration runs; the Overfitting alert
   threshold is the one with the best stop-decision accuracy on the calibration runs
   (:func:`choose_alert_threshold`, the pilot's own metric). ``--operating-point far`` keeps
   ``calibrate``'s instead: run-level false alarms ≤ ``target_far`` on the healthy calibration
   runs, which with 16 of them allows no alarm at all and, because the fine-tuned Overfitting
   probability saturates at the same ceiling on every confident run, puts the threshold on
   that ceiling (64.6 % held-out accuracy with 20 epochs, 85.4 % with 6). Held-out runs enter
   none of these choices.
4. **Evaluation** on held-out runs, each retrained twice — once with
   :class:`~tevid_hpo.lightgbm.TEViDLightGBMCallback` and once with LightGBM's own
   ``early_stopping(patience)`` — from the same seed (LightGBM is deterministic with one thread,
   so both see the recorded trajectory). A *stop decision* is "this run overfits" when the method
   stops before the last round; its accuracy is measured against the run label (95 % BCa
   bootstrap over runs). Also: detection lead over the labelling rule (``fire - stop``, rounds,
   overfitting runs the method stopped), rounds trained per run, and the validation log-loss of
   the model each method returns (its best iteration) above the run's best.

The fine-tuned GBDT diagnostician is saved with ``--out DIR`` (``DIR/model.*``), loadable by
``Diagnostician.from_pretrained(DIR)`` and usable in ``TEViDLightGBMCallback``. A later run with
the same ``--out``, base checkpoint and settings reuses it instead of fine-tuning again
(:func:`load_finetuned`), so ``--write-results`` after a run costs minutes, not the fine-tune.

Example:
    >>> rule = divergence([1.0, 0.9, 0.8, 0.85, 0.86, 0.87, 0.9], delta=0.02, patience=3)
    >>> rule
    (2, 5)
    >>> divergence([1.0, 0.9, 0.8, 0.79], delta=0.02, patience=3) is None
    True
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightgbm as lgb
import numpy as np
import torch
from sklearn.datasets import make_classification

from core_models.calibration import calibrate, evidential_probs, run_alert_scores
from core_models.checkpoint import checkpoint_digest
from core_models.clips import ClipDataset
from core_models.metrics import RunPrediction, bootstrap_ci
from core_models.train import FinetuneConfig, finetune, predict, seed_everything
from data_factory.labelers import RunLabel, frame_event_labels
from data_factory.labels import HEALTHY, KNOWN_LABELS, OVERFITTING
from experiments.report import write_section
from tevid_hpo.diagnostician import DEFAULT_CHECKPOINT, Diagnostician
from tevid_hpo.lightgbm import FeatureImportanceFrames, TEViDLightGBMCallback

__all__ = ["GBDTRun", "PilotConfig", "RecordedRun", "choose_alert_threshold", "divergence",
           "main", "run_pilot", "stop_scores"]

SECTION = "gbdt_pilot"


# ====================================================================================== config
@dataclass(frozen=True)
class PilotConfig:
    """Everything the pilot's numbers depend on (recorded with them).

    Example:
        >>> PilotConfig.quick().n_runs < PilotConfig().n_runs
        True
    """

    n_runs: int = 160
    rounds: int = 200
    every: int = 1
    n_features: int = 64
    n_informative: int = 8
    n_redundant: int = 8
    flip_y: float = 0.15
    n_valid: int = 2000
    train_sizes: tuple[int, ...] = (400, 1000, 2000)
    lr_range: tuple[float, float] = (0.01, 0.3)
    n_datasets: int = 4
    delta: float = 0.02
    patience: int = 3
    es_patience: int = 10
    calib_fraction: float = 0.2
    held_out_fraction: float = 0.3
    finetune_epochs: int = 20
    finetune_lr: float = 3e-4
    batch_size: int = 32
    clip_stride: int = 2
    train: str = "all"
    target_far: float = 0.05
    operating_point: str = "accuracy"
    select_epoch: bool = True
    seed: int = 0

    @classmethod
    def quick(cls) -> PilotConfig:
        """A tiny configuration that runs every stage in seconds on one core."""
        # Higher learning rates than the full pilot: in 40 rounds about half the runs overfit.
        return cls(n_runs=16, rounds=40, n_features=16, n_informative=4, n_redundant=2,
                   n_valid=500, train_sizes=(200, 600), lr_range=(0.05, 0.5), n_datasets=2,
                   es_patience=5, finetune_epochs=2, clip_stride=2)


@dataclass(frozen=True)
class GBDTRun:
    """One boosting run of the corpus."""

    run_id: str
    data_seed: int
    n_train: int
    learning_rate: float
    num_leaves: int
    min_data_in_leaf: int
    feature_fraction: float
    lambda_l2: float
    seed: int

    def params(self) -> dict[str, Any]:
        """LightGBM parameters (deterministic, one thread, quiet)."""
        return {"objective": "binary", "metric": "binary_logloss",
                "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                "min_data_in_leaf": self.min_data_in_leaf,
                "feature_fraction": self.feature_fraction, "lambda_l2": self.lambda_l2,
                "seed": self.seed, "deterministic": True, "num_threads": 1, "verbose": -1,
                "force_row_wise": True}


@dataclass
class RecordedRun:
    """A run's full trajectory: frames, validation log-loss, label."""

    run: GBDTRun
    losses: np.ndarray
    frames: torch.Tensor
    steps: np.ndarray
    label: RunLabel

    @property
    def events(self) -> np.ndarray:
        """Per-frame labels (Overfitting from the onset on)."""
        return frame_event_labels(self.label, self.steps)


# ====================================================================================== corpus
def sample_runs(cfg: PilotConfig) -> list[GBDTRun]:
    """The corpus's hyperparameters, drawn from ``cfg.seed``."""
    rng = np.random.default_rng(cfg.seed)
    runs = []
    for i in range(cfg.n_runs):
        runs.append(GBDTRun(
            run_id=f"gbdt-{i:04d}", data_seed=int(rng.integers(cfg.n_datasets)),
            n_train=int(rng.choice(cfg.train_sizes)),
            learning_rate=float(np.exp(rng.uniform(*np.log(cfg.lr_range)))),
            num_leaves=int(rng.choice([4, 8, 16, 32, 64, 128])),
            min_data_in_leaf=int(rng.choice([1, 5, 20, 50, 100])),
            feature_fraction=float(rng.choice([0.5, 0.8, 1.0])),
            lambda_l2=float(rng.choice([0.0, 1.0, 10.0])), seed=int(rng.integers(2 ** 31))))
    return runs


_DATA_CACHE: dict[tuple[Any, ...], tuple[np.ndarray, ...]] = {}


def make_data(cfg: PilotConfig, data_seed: int, n_train: int) -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_valid, y_valid)`` of one data set (the validation part is shared
    by all training sizes of that data set)."""
    key = (cfg.n_features, cfg.n_informative, cfg.n_redundant, cfg.flip_y, cfg.n_valid,
           max(cfg.train_sizes), data_seed)
    if key not in _DATA_CACHE:
        x, y = make_classification(n_samples=cfg.n_valid + max(cfg.train_sizes),
                                   n_features=cfg.n_features, n_informative=cfg.n_informative,
                                   n_redundant=cfg.n_redundant, flip_y=cfg.flip_y,
                                   random_state=1000 + data_seed)
        _DATA_CACHE[key] = (x[cfg.n_valid:], y[cfg.n_valid:], x[:cfg.n_valid], y[:cfg.n_valid])
    xt, yt, xv, yv = _DATA_CACHE[key]
    return xt[:n_train], yt[:n_train], xv, yv


def _datasets(cfg: PilotConfig, run: GBDTRun) -> tuple[lgb.Dataset, lgb.Dataset]:
    xt, yt, xv, yv = make_data(cfg, run.data_seed, run.n_train)
    train = lgb.Dataset(xt, yt, params={"verbose": -1})
    return train, lgb.Dataset(xv, yv, reference=train)


def divergence(losses: Sequence[float], delta: float = 0.02, patience: int = 3
               ) -> tuple[int, int] | None:
    """The overfitting rule on a validation log-loss curve: ``(onset, fire)`` or ``None``.

    Causal: ``fire`` is the first round ``t`` at which the loss has been above
    ``(1 + delta) ·`` (its minimum so far) for ``patience`` consecutive rounds ending at ``t``;
    ``onset`` is the round of that minimum (known only in hindsight, like every onset).
    """
    best, best_at, streak = math.inf, 0, 0
    for t, value in enumerate(losses):
        if value < best:
            best, best_at = value, t
        streak = streak + 1 if value > (1.0 + delta) * best else 0
        if streak >= patience:
            return best_at, t
    return None


def record_run(cfg: PilotConfig, run: GBDTRun, frame_size: int) -> RecordedRun:
    """Train one run for ``cfg.rounds`` rounds, recording its frames and validation loss."""
    dtrain, dvalid = _datasets(cfg, run)
    evals: dict[str, Any] = {}
    booster = lgb.train(run.params(), dtrain, cfg.rounds, valid_sets=[dvalid],
                        valid_names=["valid"], callbacks=[lgb.record_evaluation(evals)])
    losses = np.asarray(evals["valid"]["binary_logloss"], dtype=np.float64)
    frames = FeatureImportanceFrames(frame_size).replay(booster, every=cfg.every)
    rule = divergence(losses, cfg.delta, cfg.patience)
    label = (RunLabel(OVERFITTING, rule[0], rule[1], evidence={"rule": "logloss_divergence"})
             if rule else RunLabel(HEALTHY, None, None))
    return RecordedRun(run, losses, torch.stack([f.tensor for f in frames]),
                       np.array([f.step for f in frames]), label)


def split_runs(runs: Sequence[RecordedRun], cfg: PilotConfig
               ) -> tuple[list[RecordedRun], list[RecordedRun], list[RecordedRun]]:
    """Fine-tuning / calibration / held-out runs, stratified by label."""
    rng = np.random.default_rng(cfg.seed + 1)
    parts: tuple[list[RecordedRun], list[RecordedRun], list[RecordedRun]] = ([], [], [])
    for label in (HEALTHY, OVERFITTING):
        group = [r for r in runs if r.label.label == label]
        order = rng.permutation(len(group))
        n_test = round(cfg.held_out_fraction * len(group))
        n_cal = round(cfg.calib_fraction * len(group))
        for k, i in enumerate(order):
            parts[2 if k < n_test else 1 if k < n_test + n_cal else 0].append(group[i])
    return parts


# ================================================================================= fine-tuning
def _as_store_runs(runs: Sequence[RecordedRun]) -> list[SimpleNamespace]:
    # ClipDataset reads `.frames.tensor` / `.frames.steps`, the layout of a stored factory run.
    return [SimpleNamespace(frames=SimpleNamespace(tensor=r.frames, steps=r.steps)) for r in runs]


def _stream_logits(model: torch.nn.Module, runs: Sequence[RecordedRun], window: int
                   ) -> list[np.ndarray]:
    out = []
    for r in runs:
        ds = ClipDataset(_as_store_runs([r]), [r.events], window=window)
        out.append(predict(model, ds, batch_size=64, device="cpu", temperature=1.0)["logits"])
    return out


def stop_scores(logits: Sequence[np.ndarray], runs: Sequence[RecordedRun], temperature: float,
                tau_u: float, k: int, rounds: int) -> np.ndarray:
    """Per run, the largest Overfitting threshold at which the alert rule *stops* it.

    The rule is :class:`~core_models.calibration.ConsecutiveAlert`'s (``k`` consecutive
    non-abstained diagnoses with ``p ≥ tau``), and a stop is an alert before the last round
    (the pilot's stop decision), so a diagnosis of the last round is left out. The run stops at
    threshold ``tau`` iff ``tau ≤`` its score; ``-inf`` when no ``k`` diagnoses qualify.

    Example:
        >>> z = np.zeros((5, 5)); z[1:4, 1] = 8.0        # Overfitting evidence at rounds 1-3
        >>> rec = SimpleNamespace(steps=np.arange(5))
        >>> stop_scores([z], [rec], 1.0, 0.35, 3, rounds=5).round(3).tolist()
        [0.571]
        >>> stop_scores([z[:4]], [SimpleNamespace(steps=np.arange(4))], 1.0, 0.35, 3, 4).tolist()
        [-inf]
    """
    ov = KNOWN_LABELS.index(OVERFITTING)
    out = []
    for z, rec in zip(logits, runs):
        probs, vacuity = evidential_probs(z, temperature)
        if len(rec.steps) and rec.steps[-1] >= rounds - 1:     # an alert there is no stop
            probs, vacuity = probs[:-1], vacuity[:-1]
        out.append(run_alert_scores(probs, vacuity, tau_u, k)[ov])
    return np.asarray(out, dtype=np.float64)


def choose_alert_threshold(scores: Sequence[float], overfit: Sequence[bool], floor: float = 0.5
                           ) -> tuple[float, float]:
    """The Overfitting threshold with the best stop-decision accuracy on calibration runs.

    Runs stop iff ``score ≥ tau`` (:func:`stop_scores`), so the decisions only change at the
    scores: every interval between consecutive distinct scores (within ``[floor, 1]``) is one
    candidate. Among the most accurate intervals the widest wins and ``tau`` is its midpoint —
    the largest margin to the calibration runs on either side, because fine-tuned evidence
    saturates and many runs share nearly the same top probability, where a threshold would be a
    knife edge. ``floor`` (0.5, as in :func:`~core_models.calibration.fit_class_thresholds`)
    keeps one class at a time above its threshold. Returns ``(tau, calibration accuracy)``.

    Example:
        >>> choose_alert_threshold([0.03, 0.05, 0.86, 0.86, 0.70, 0.86], [0, 0, 0, 1, 1, 1])
        (0.6, 0.8333333333333334)
        >>> choose_alert_threshold([0.1, 0.2], [0, 0])      # never stop
        (0.75, 1.0)
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(overfit, dtype=bool)
    points = np.unique(np.r_[floor, 1.0, s[(s > floor) & (s < 1.0)]])
    best: tuple[float, float, float] | None = None            # (accuracy, width, tau)
    for a, b in pairwise(points):
        acc = float(np.mean((s >= b) == y))
        cand = (acc, float(b - a), float((a + b) / 2))
        if best is None or cand[:2] > best[:2]:
            best = cand
    assert best is not None
    return best[2], best[0]


def finetune_diagnostician(checkpoint: str | Path, train: Sequence[RecordedRun],
                           calib: Sequence[RecordedRun], cfg: PilotConfig,
                           quiet: bool = False) -> tuple[Diagnostician, dict[str, Any]]:
    """Fine-tune the checkpoint's TEViD on ``train`` runs, calibrate it on ``calib`` runs.

    Only these two sets of runs enter: with ``cfg.select_epoch`` the epoch whose model
    classifies the calibration clips best is kept (early stopping on calibration data), and
    with ``cfg.operating_point == "accuracy"`` the Overfitting alert threshold is the one that
    maximises stop-decision accuracy on the calibration runs (:func:`choose_alert_threshold`)
    instead of the ``target_far`` one.
    """
    base = Diagnostician.from_pretrained(checkpoint, device="cpu")
    model = base.model
    window = model.profile.window
    if cfg.train == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("head."))
    dataset = ClipDataset(_as_store_runs(train), [r.events for r in train], window=window,
                          stride=cfg.clip_stride)
    val = (ClipDataset(_as_store_runs(calib), [r.events for r in calib], window=window,
                       stride=cfg.clip_stride) if cfg.select_epoch else None)
    seed_everything(cfg.seed)
    ft = FinetuneConfig(epochs=cfg.finetune_epochs, batch_size=cfg.batch_size,
                        base_lr=cfg.finetune_lr, lr_batch_ref=None, warmup_epochs=1.0,
                        kl_anneal_epochs=max(1.0, cfg.finetune_epochs / 2), seed=cfg.seed,
                        device="cpu", progress=not quiet, amp=False)
    states: list[dict[str, torch.Tensor]] = []          # the weights at every epoch end

    def snapshot(m: torch.nn.Module, _row: dict[str, float]) -> None:
        states.append({k: v.detach().clone() for k, v in m.state_dict().items()})

    result = finetune(model, dataset, ft, val_dataset=val,
                      on_epoch_end=snapshot if val is not None else None)
    epoch = len(result.history) - 1
    if states and len(states) == len(result.history):
        # Clip accuracy, not the validation loss: the loss's KL weight grows over the first
        # epochs (annealing), so losses of different epochs are not comparable. Ties: earliest.
        accs = [h.get("val_acc", -math.inf) for h in result.history]
        epoch = int(np.argmax(accs))
        model.load_state_dict(states[epoch])
    for p in model.parameters():
        p.requires_grad_(True)
    logits = _stream_logits(model, calib, window)
    clip_labels = np.concatenate([[KNOWN_LABELS.index(x) for x in r.events] for r in calib])
    calibration = calibrate(np.concatenate(logits), clip_labels,
                            [(z, r.label.label) for z, r in zip(logits, calib)],
                            target_far=cfg.target_far)
    scores = stop_scores(logits, calib, calibration.temperature, calibration.tau_u,
                         calibration.consecutive, cfg.rounds)
    overfit = [r.label.label == OVERFITTING for r in calib]
    far_tau = calibration.tau_c[OVERFITTING]
    point = {"far_tau": far_tau, "far_calib_acc": float(np.mean((scores >= far_tau) == overfit))}
    if cfg.operating_point == "accuracy":
        tau, acc = choose_alert_threshold(scores, overfit)
        calibration.tau_c[OVERFITTING] = tau
        point.update(accuracy_tau=tau, accuracy_calib_acc=acc)
    elif cfg.operating_point != "far":
        raise ValueError(f"operating_point must be 'accuracy' or 'far', got {cfg.operating_point!r}")
    diag = Diagnostician(model, calibration, device="cpu", metadata={
        "trained": True, "kind_of_runs": "lightgbm", "frames": "FeatureImportanceFrames",
        "base_checkpoint": str(base.source or checkpoint), "pilot_config": asdict(cfg),
        "finetune_clips": len(dataset), "finetune_history": result.history,
        "selected_epoch": epoch, "operating_point": point,
        "produced_by": "python -m experiments.gbdt_pilot"})
    info = {"clips": len(dataset), "clip_labels": dataset.label_counts(),
            "final_loss": result.history[-1]["loss"] if result.history else None,
            "selected_epoch": epoch,
            "val_acc": [h.get("val_acc") for h in result.history],
            "val_vacuity": [h.get("val_vacuity") for h in result.history],
            "calib_runs": [r.run.run_id for r in calib], "operating_point": point,
            **calibration.to_dict()}
    return diag, info


# ================================================================================== evaluation
def evaluate_run(cfg: PilotConfig, rec: RecordedRun, diag: Diagnostician) -> dict[str, Any]:
    """Retrain a held-out run under TEViD and under ``early_stopping``; compare the stops."""
    out: dict[str, Any] = {"run_id": rec.run.run_id, "label": rec.label.label,
                           "onset": rec.label.onset, "fire": rec.label.fire_time,
                           "rounds": cfg.rounds}
    best = float(rec.losses.min())
    methods = {"tevid": TEViDLightGBMCallback(diag, every=cfg.every),
               "es": lgb.early_stopping(cfg.es_patience, verbose=False)}
    for name, stopper in methods.items():
        dtrain, dvalid = _datasets(cfg, rec.run)
        evals: dict[str, Any] = {}
        # lightgbm.train returns the model truncated to its best iteration after an early
        # stop, so the rounds actually trained are counted from the recorded evaluations.
        booster = lgb.train(rec.run.params(), dtrain, cfg.rounds, valid_sets=[dvalid],
                            valid_names=["valid"],
                            callbacks=[stopper, lgb.record_evaluation(evals)])
        trained = len(evals["valid"]["binary_logloss"])
        # LightGBM's early_stopping also raises at the last round (to set best_iteration):
        # only a stop before it is a stop.
        out[f"{name}_stop"] = trained - 1 if trained < cfg.rounds else None
        out[f"{name}_rounds"] = trained
        kept = booster.best_iteration if booster.best_iteration > 0 else trained
        out[f"{name}_regret"] = float(rec.losses[kept - 1]) - best
    if methods["tevid"].stopped_at != out["tevid_stop"]:  # pragma: no cover - consistency
        raise RuntimeError("TEViD callback and recorded evaluations disagree")
    out["none_regret"] = float(rec.losses[-1]) - best
    return out


def _row_runs(rows: Sequence[dict[str, Any]]) -> list[RunPrediction]:
    # bootstrap_ci resamples RunPrediction objects; the decisions ride along in `meta`.
    dummy = np.tile([1.0, 0, 0, 0, 0], (1, 1))
    return [RunPrediction(r["run_id"], r["label"], [0], [0], dummy, [0.0],
                          event_labels=[r["label"]], meta=r) for r in rows]


def _accuracy(method: str):
    def metric(runs: Sequence[RunPrediction]) -> float:
        return float(np.mean([(r.meta[f"{method}_stop"] is not None) == (r.label == OVERFITTING)
                              for r in runs]))
    return metric


def summarize(rows: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per method: accuracy of stop decisions with a 95 % BCa interval, lead over the rule,
    rounds trained, validation log-loss regret, and the confusion counts."""
    runs = _row_runs(rows)
    out: dict[str, dict[str, Any]] = {}
    for method in ("tevid", "es"):
        ci = bootstrap_ci(_accuracy(method), runs, n_resamples=2000, seed=seed) if len(
            runs) >= 2 else None
        stops = [r for r in rows if r[f"{method}_stop"] is not None]
        overfit = [r for r in rows if r["label"] == OVERFITTING]
        leads = [r["fire"] - r[f"{method}_stop"] for r in stops if r["label"] == OVERFITTING]
        out[method] = {
            "accuracy": _accuracy(method)(runs),
            "ci": (ci.low, ci.high) if ci is not None else (math.nan, math.nan),
            "tp": sum(r["label"] == OVERFITTING for r in stops),
            "fp": sum(r["label"] != OVERFITTING for r in stops),
            "fn": len(overfit) - sum(r["label"] == OVERFITTING for r in stops),
            "median_lead": float(np.median(leads)) if leads else math.nan,
            "rounds": float(np.mean([r[f"{method}_rounds"] for r in rows])),
            "regret": float(np.mean([r[f"{method}_regret"] for r in rows])),
        }
    out["none"] = {"rounds": float(rows[0]["rounds"]) if rows else math.nan,
                   "regret": float(np.mean([r["none_regret"] for r in rows]))}
    both = [r for r in rows if r["label"] == OVERFITTING and r["tevid_stop"] is not None
            and r["es_stop"] is not None]
    out["tevid"]["median_vs_es"] = (float(np.median([r["es_stop"] - r["tevid_stop"]
                                                     for r in both])) if both else math.nan)
    return out


def table(summary: dict[str, dict[str, Any]], cfg: PilotConfig, n_runs: int,
          n_overfit: int) -> str:
    """The markdown table of the pilot."""
    def pct(x: float) -> str:
        return "–" if not math.isfinite(x) else f"{100 * x:.1f}"

    def num(x: float, fmt: str = ".1f") -> str:
        return "–" if not math.isfinite(x) else format(x, fmt)

    lines = [(f"Held-out runs: {n_runs} ({n_overfit} overfit by the log-loss divergence rule: "
              f"> {100 * cfg.delta:g} % above the running minimum for {cfg.patience} rounds); "
              f"{cfg.rounds} rounds each."), "",
             ("| Method | Stop-decision acc. % [95 % CI] | TP / FP / FN | Median lead vs rule "
              "(rounds) | Rounds / run | Val. log-loss regret |"),
             "|---|---|---|---|---|---|"]
    names = {"tevid": "TEViD (fine-tuned on GBDT frames)",
             "es": f"LightGBM early_stopping({cfg.es_patience})"}
    for key in ("tevid", "es"):
        s = summary[key]
        lo, hi = s["ci"]
        lines.append(f"| {names[key]} | {pct(s['accuracy'])} [{pct(lo)}, {pct(hi)}] | "
                     f"{s['tp']} / {s['fp']} / {s['fn']} | {num(s['median_lead'])} | "
                     f"{num(s['rounds'])} | {num(s['regret'], '.4f')} |")
    none = summary["none"]
    lines.append(f"| No early stopping | – | – | – | {num(none['rounds'])} | "
                 f"{num(none['regret'], '.4f')} |")
    lines += ["", (f"Median rounds by which TEViD stops before early_stopping on overfitting "
                   f"runs both stop: {num(summary['tevid']['median_vs_es'])}. Paper (Higgs, "
                   "ViT-B TEViD): 91.5 % accuracy.")]
    return "\n".join(lines)


# ====================================================================================== driver
def load_finetuned(path: Path, digest: str, cfg: PilotConfig
                   ) -> tuple[Diagnostician, dict[str, Any]] | None:
    """The diagnostician an earlier pilot saved at ``path`` (``--out``), if it was fine-tuned
    from the same base checkpoint (``digest``, :func:`core_models.checkpoint.checkpoint_digest`)
    with the same :class:`PilotConfig` — which fixes the runs and their split — else ``None``.
    Rewriting the table then costs the recording and evaluation, not the fine-tune."""
    config_path = path.with_suffix(".json")
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    same_cfg = config.get("pilot_config") == json.loads(json.dumps(asdict(cfg)))
    if config.get("base_checkpoint_digest") != digest or not same_cfg or "pilot_info" not in config:
        return None
    return Diagnostician.from_pretrained(path, device="cpu"), config["pilot_info"]


def run_pilot(cfg: PilotConfig, checkpoint: str | Path | None = None, out: Path | None = None,
              quiet: bool = False) -> dict[str, Any]:
    """Every stage; returns the summary, the table and the per-run rows."""
    say = (lambda *_: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    ckpt = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    base = Diagnostician.from_pretrained(ckpt, device="cpu")   # fail early, before the corpus
    start = time.perf_counter()
    runs = [record_run(cfg, r, base.profile.frame_size) for r in sample_runs(cfg)]
    n_over = sum(r.label.label == OVERFITTING for r in runs)
    say(f"recorded {len(runs)} runs ({n_over} overfit) in {time.perf_counter() - start:.1f}s")
    train, calib, test = split_runs(runs, cfg)
    if not any(r.label.label == OVERFITTING for r in train):
        raise RuntimeError("no overfitting run among the fine-tuning runs: widen the corpus")
    digest = checkpoint_digest(ckpt)
    saved = Path(out) / "model" if out is not None else None
    reused = load_finetuned(saved, digest, cfg) if saved is not None else None
    if reused is not None:
        diag, info = reused
        say(f"reusing the fine-tuned diagnostician in {saved} (same base checkpoint and config)")
    else:
        diag, info = finetune_diagnostician(ckpt, train, calib, cfg, quiet=quiet)
        say(f"fine-tuned on {info['clips']} clips: {json.dumps(info, default=str)}")
        if saved is not None:
            diag.save_pretrained(saved, base_checkpoint_digest=digest, pilot_info=info)
    rows = [evaluate_run(cfg, r, diag) for r in test]
    summary = summarize(rows, cfg.seed)
    text = table(summary, cfg, len(rows), sum(r["label"] == OVERFITTING for r in rows))
    return {"summary": summary, "table": text, "rows": rows, "finetune": info,
            "runs": {"train": len(train), "calib": len(calib), "test": len(test)},
            "seconds": time.perf_counter() - start}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.gbdt_pilot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None,
                        help="TEViD checkpoint to start from (default: the shipped one)")
    parser.add_argument("--quick", action="store_true", help="tiny corpus, every stage")
    parser.add_argument("--runs", type=int, help="number of boosting runs")
    parser.add_argument("--rounds", type=int, help="boosting rounds per run")
    parser.add_argument("--every", type=int, help="frame cadence in rounds")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs")
    parser.add_argument("--train", choices=("all", "head"), help="what fine-tuning updates")
    parser.add_argument("--operating-point", choices=("accuracy", "far"),
                        help="Overfitting alert threshold: best stop-decision accuracy on the "
                             "calibration runs (default) or false alarms <= target_far")
    parser.add_argument("--last-epoch", action="store_true",
                        help="keep the last fine-tuning epoch instead of the one that is best "
                             "on the calibration clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="save the GBDT diagnostician as OUT/model.*")
    parser.add_argument("--write-results", action="store_true",
                        help=f"write the table into docs/results.md (section {SECTION!r})")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    cfg = PilotConfig.quick() if args.quick else PilotConfig()
    overrides = {k: v for k, v in {"n_runs": args.runs, "rounds": args.rounds,
                                   "every": args.every, "finetune_epochs": args.epochs,
                                   "train": args.train,
                                   "operating_point": args.operating_point,
                                   "select_epoch": False if args.last_epoch else None,
                                   }.items() if v is not None}
    cfg = replace(cfg, seed=args.seed, **overrides)
    if args.checkpoint is None:
        from core_models.checkpoint import checkpoint_paths

        if not checkpoint_paths(DEFAULT_CHECKPOINT)[0].is_file():
            parser.error(f"no shipped TEViD checkpoint at {DEFAULT_CHECKPOINT}.safetensors "
                         "(produced by `make pipeline`); pass --checkpoint PATH")
    torch.set_num_threads(1)
    result = run_pilot(cfg, args.checkpoint, args.out, quiet=args.quiet)
    print(result["table"])
    if args.write_results:
        command = "python -m experiments.gbdt_pilot " + " ".join(argv if argv is not None
                                                                  else sys.argv[1:])
        write_section(SECTION, "## GBDT pilot (Appendix K.3)\n\n" + result["table"],
                      command.strip(), checkpoint=args.checkpoint or "shipped",
                      **{k: v for k, v in asdict(cfg).items()
                         if k in ("n_runs", "rounds", "every", "finetune_epochs",
                                  "operating_point", "select_epoch", "seed")})
    return result


if __name__ == "__main__":
    main()
