"""The stopping rules users already rely on, with the thresholds their documentation gives.

Each rule reads a recorded run (per-step ``loss`` / ``grad_norm`` / ``grad_absmean``, per-epoch
``train_loss`` / ``val_loss``) and returns the step at which it would have stopped the run, or
``None``:

* ``lightning_es`` — Lightning's own ``EarlyStopping(monitor="val_loss", mode="min",
  patience=3, check_finite=True, divergence_threshold=ln K)`` fed each epoch's validation loss
  (its ``_evaluate_stopping_criteria``, the code the Trainer runs). Lightning documents no default
  ``divergence_threshold`` (``None`` disables it); ``ln K`` — the loss of a uniform guess over K
  classes — is the natural user choice. ``lightning_divergence`` is the same callback with
  ``patience`` out of reach, i.e. only its non-finite / divergence checks.
* ``optuna_nan`` — Optuna's ``ThresholdPruner(upper=inf)`` on the per-epoch validation loss,
  i.e. only its NaN handling (Threshold / SuccessiveHalving / Hyperband prune at the first NaN;
  Median / Percentile / Patient / Wilcoxon use ``nanmedian`` and never prune on NaN — they would
  score 0 here).
* SageMaker-Debugger-style rules at their smdebug defaults (``docs/rules/FirstPartyRules.md`` of
  awslabs/sagemaker-debugger): ``sm_loss_not_decreasing`` (``num_steps=10``, ``diff_percent=0``:
  every 10 steps the loss must be below the loss 10 steps earlier), ``sm_exploding_tensor``
  (any non-finite loss or gradient), ``sm_vanishing_gradient`` (mean absolute gradient below
  ``1e-7``), ``sm_overfit`` (``start_step=0, patience=1, ratio_threshold=0.1``: the validation
  loss exceeds the training loss by more than 10 % of it — values from the SageMaker developer
  guide's rule list, not found in the stored smdebug sources).

Example:
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> ep = pd.DataFrame({"epoch": range(3), "train_loss": [1.0, .5, .4],
    ...                    "val_loss": [1.0, float("nan"), 1.0]})
    >>> st = pd.DataFrame({"step": range(30), "epoch": np.arange(30) // 10, "loss": 1.0,
    ...                    "grad_norm": 1.0, "grad_absmean": 1e-3})
    >>> run = SimpleNamespace(meta={"steps_per_epoch": 10, "n_classes": 4}, epochs=ep, steps=st)
    >>> optuna_nan(run), lightning_divergence(run)
    (19, 19)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["USER_RULES", "lightning_divergence", "lightning_es", "optuna_nan",
           "sm_exploding_tensor", "sm_loss_not_decreasing", "sm_overfit",
           "sm_vanishing_gradient"]


def _epoch_end(run: Any, epoch: int) -> int:
    return (int(epoch) + 1) * int(run.meta["steps_per_epoch"]) - 1


def _lightning(run: Any, patience: int) -> int | None:
    import torch
    from lightning.pytorch.callbacks import EarlyStopping

    es = EarlyStopping(monitor="val_loss", mode="min", patience=patience, check_finite=True,
                       divergence_threshold=math.log(float(run.meta["n_classes"])))
    for e, v in zip(run.epochs["epoch"], run.epochs["val_loss"]):
        stop, _ = es._evaluate_stopping_criteria(torch.tensor(float(v)))
        if stop:
            return _epoch_end(run, e)
    return None


def lightning_es(run: Any) -> int | None:
    """Lightning ``EarlyStopping`` at its defaults plus ``divergence_threshold=ln K``."""
    return _lightning(run, patience=3)


def lightning_divergence(run: Any) -> int | None:
    """Only the non-finite and divergence checks of Lightning's ``EarlyStopping``."""
    return _lightning(run, patience=10 ** 9)


def optuna_nan(run: Any) -> int | None:
    """Optuna's ``ThresholdPruner(upper=inf)`` on the per-epoch validation loss."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=float("inf")))
    trial = study.ask()
    for e, v in zip(run.epochs["epoch"], run.epochs["val_loss"]):
        trial.report(float(v), int(e))
        if trial.should_prune():
            return _epoch_end(run, e)
    return None


def sm_loss_not_decreasing(run: Any, num_steps: int = 10, diff_percent: float = 0.0
                           ) -> int | None:
    """smdebug ``LossNotDecreasing``: every ``num_steps`` the loss must have dropped."""
    loss = run.steps["loss"].to_numpy(dtype=float)
    steps = run.steps["step"].to_numpy()
    for t in range(num_steps, len(loss), num_steps):
        prev, cur = loss[t - num_steps], loss[t]
        if not (cur < prev * (1 - diff_percent / 100.0)):
            return int(steps[t])
    return None


def sm_exploding_tensor(run: Any) -> int | None:
    """smdebug ``ExplodingTensor`` (``only_nan=False``): a non-finite loss or gradient."""
    st = run.steps
    bad = ~np.isfinite(st["loss"].to_numpy(dtype=float)) | ~np.isfinite(
        st["grad_norm"].to_numpy(dtype=float))
    idx = np.flatnonzero(bad)
    return int(st["step"].iloc[idx[0]]) if idx.size else None


def sm_vanishing_gradient(run: Any, threshold: float = 1e-7) -> int | None:
    """smdebug ``VanishingGradient``: mean absolute gradient below ``threshold``."""
    st = run.steps
    g = st["grad_absmean"].to_numpy(dtype=float)
    idx = np.flatnonzero(np.isfinite(g) & (g < threshold))
    return int(st["step"].iloc[idx[0]]) if idx.size else None


def sm_overfit(run: Any, start_step: int = 0, patience: int = 1,
               ratio_threshold: float = 0.1) -> int | None:
    """SageMaker ``overfit``: ``(val − train) / train > ratio_threshold`` for ``patience``
    consecutive evaluations (each epoch here)."""
    streak = 0
    for e, tr, va in zip(run.epochs["epoch"], run.epochs["train_loss"], run.epochs["val_loss"]):
        if _epoch_end(run, e) < start_step:
            continue
        ratio = (va - tr) / tr if tr and math.isfinite(tr) and math.isfinite(va) else 0.0
        streak = streak + 1 if ratio > ratio_threshold else 0
        if streak >= patience:
            return _epoch_end(run, e)
    return None


#: Rule name → (display name, rule).
USER_RULES: dict[str, tuple[str, Callable[[Any], int | None]]] = {
    "lightning_es": ("Lightning EarlyStopping (patience 3, check_finite, divergence ln K)",
                     lightning_es),
    "lightning_divergence": ("Lightning EarlyStopping, check_finite + divergence only",
                             lightning_divergence),
    "optuna_nan": ("Optuna ThresholdPruner/Hyperband NaN handling", optuna_nan),
    "sm_loss_not_decreasing": ("SageMaker loss_not_decreasing (10 steps)", sm_loss_not_decreasing),
    "sm_exploding_tensor": ("SageMaker exploding_tensor", sm_exploding_tensor),
    "sm_vanishing_gradient": ("SageMaker vanishing_gradient (1e-7)", sm_vanishing_gradient),
    "sm_overfit": ("SageMaker overfit (ratio 0.1)", sm_overfit),
}
