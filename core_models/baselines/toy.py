"""A tiny synthetic run for documentation examples and smoke tests of the baselines.

:func:`toy_run` builds an object shaped like :class:`data_factory.store.Run` — ``meta``,
``steps`` (step, epoch, loss, lr, grad_norm, lyapunov), ``epochs`` (train/val curves), ``frames``
(a :class:`~data_factory.store.FrameSequence` with per-layer stats) — with a decaying loss that
optionally explodes from ``explode_at`` and turns NaN from ``nan_at``. It is deterministic in
``seed`` and cheap (no training).

Example:
    >>> run = toy_run(n_steps=30, every=10, explode_at=10)
    >>> len(run.frames), list(run.steps.columns)
    (3, ['step', 'epoch', 'loss', 'lr', 'grad_norm', 'lyapunov'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from data_factory.frames import STAT_NAMES
from data_factory.store import FrameSequence

__all__ = ["ToyRun", "toy_run"]

#: Stat names in the RunStore's order (sorted), for three hooked layers.
_STAT_NAMES = sorted(f"{k}{i}_{s}" for k in ("act", "grad") for i in range(3) for s in STAT_NAMES)


@dataclass
class ToyRun:
    """A Run-like record (see :class:`data_factory.store.Run`)."""

    run_id: str
    meta: dict[str, Any]
    steps: pd.DataFrame
    epochs: pd.DataFrame
    frames: FrameSequence
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path = Path(".")

    def __len__(self) -> int:
        return len(self.frames)


def toy_run(n_steps: int = 100, every: int = 10, explode_at: int | None = None,
            nan_at: int | None = None, seed: int = 0, frame_size: int = 8,
            steps_per_epoch: int = 20, run_id: str | None = None) -> ToyRun:
    """A synthetic run: loss ``2·exp(-step/200)`` plus noise, exploding ×1.1 per step from
    ``explode_at`` (gradients of the shallowest layer growing with it), NaN from ``nan_at``.

    Example:
        >>> run = toy_run(n_steps=40, explode_at=20, nan_at=35)
        >>> bool(np.isnan(run.steps.loss.iloc[-1])), run.frames.stats.shape
        (True, (4, 30))
    """
    rng = np.random.default_rng(seed)
    step = np.arange(n_steps)
    loss = 2.0 * np.exp(-step / 200.0) * np.exp(0.05 * rng.standard_normal(n_steps))
    growth = np.zeros(n_steps)
    if explode_at is not None:
        growth = np.clip(step - explode_at + 1, 0, None) * np.log(1.1)
        loss = loss * np.exp(growth)
    if nan_at is not None:
        loss[step >= nan_at] = np.nan
    grad_norm = np.exp(growth) * (1.0 + 0.05 * rng.standard_normal(n_steps))
    epoch = step // steps_per_epoch
    steps = pd.DataFrame({"step": step, "epoch": epoch, "loss": loss,
                          "lr": np.full(n_steps, 0.1), "grad_norm": grad_norm,
                          "lyapunov": rng.standard_normal(n_steps)})
    n_epochs = int(epoch.max()) + 1 if n_steps else 0
    epochs = pd.DataFrame({"epoch": np.arange(n_epochs),
                           "train_loss": [float(np.nanmean(loss[epoch == e])) if
                                          np.isfinite(loss[epoch == e]).any() else np.nan
                                          for e in range(n_epochs)],
                           "train_acc": np.linspace(0.3, 0.9, n_epochs),
                           "val_loss": np.linspace(2.0, 1.0, n_epochs),
                           "val_acc": np.linspace(0.3, 0.8, n_epochs)})
    cap = step[::every]
    nf = len(cap)
    stats = np.zeros((nf, len(_STAT_NAMES)), dtype=np.float32)
    for j, name in enumerate(_STAT_NAMES):
        kind, rest = name.split("_", 1)
        base = {"rms": 1.0, "std": 1.0, "absmax": 3.0, "mean": 0.0, "nonpos_frac": 0.5}[rest]
        if kind.startswith("grad"):
            base = base * 1e-3 if rest != "nonpos_frac" else base
            if kind == "grad0" and rest in ("rms", "std", "absmax"):
                base = base * np.exp(growth[cap])
        noise = rng.standard_normal(nf)
        stats[:, j] = (0.01 * noise if rest == "mean" else base if rest == "nonpos_frac"
                       else base * np.exp(0.01 * noise))
    finite = np.isfinite(loss[cap])
    tensor = torch.from_numpy(rng.standard_normal((nf, 6, frame_size, frame_size))
                              .astype(np.float32) + growth[cap, None, None, None].astype(
                                  np.float32)).to(torch.bfloat16)
    frames = FrameSequence(tensor=tensor, steps=cap.astype(np.int64),
                           epochs=epoch[cap].astype(np.int64), finite=finite, stats=stats,
                           stat_names=list(_STAT_NAMES), layers=["l0", "l1", "l2"])
    meta = {"steps_per_epoch": steps_per_epoch, "total_steps": n_steps, "dataset": "toy",
            "arch": "toy", "optimizer": "sgd"}
    return ToyRun(run_id=run_id or f"toy-{seed}", meta=meta, steps=steps, epochs=epochs,
                  frames=frames)
