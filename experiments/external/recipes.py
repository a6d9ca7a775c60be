"""Training recipes as users set them: optimizer, learning-rate schedule, batch size, regularisation.

A :class:`Recipe` is plain data (it goes into the committed suite spec and the cache key);
:func:`build_optimizer` turns it into a ``torch.optim`` optimizer and a per-*step* scheduler.
Every schedule has a closed form (``LambdaLR`` or ``OneCycleLR``), so a scenario that rescales
the learning rate after the scheduler's step (:mod:`experiments.external.scenarios`) never
compounds.

Example:
    >>> import torch
    >>> r = Recipe("sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
    ...            warmup_epochs=1, batch_size=32, epochs=4)
    >>> opt, sched = build_optimizer(r, torch.nn.Linear(2, 2).parameters(), steps_per_epoch=10)
    >>> type(opt).__name__, round(opt.param_groups[0]["lr"], 4)
    ('SGD', 0.005)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

__all__ = ["OPTIMIZERS", "SCHEDULES", "Recipe", "build_optimizer"]

#: Optimizer names a recipe may use.
OPTIMIZERS: tuple[str, ...] = ("sgd", "sgd_nesterov", "adam", "adamw", "rmsprop", "adagrad",
                               "nadam", "radam", "adamax", "asgd")
#: Learning-rate schedules a recipe may use.
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step", "onecycle")


@dataclass(frozen=True)
class Recipe:
    """How one run is trained.

    Attributes:
        optimizer: one of :data:`OPTIMIZERS` (``sgd`` uses ``momentum``; ``sgd_nesterov`` is
            SGD with Nesterov momentum).
        lr: peak learning rate.
        momentum: SGD / RMSprop momentum.
        weight_decay: L2 (decoupled for AdamW).
        schedule: one of :data:`SCHEDULES`: constant; linear warm-up then cosine to 0; step decay
            ×0.1 at 50 % and 75 % of training; OneCycle (``torch.optim.lr_scheduler.OneCycleLR``).
        warmup_epochs: warm-up length of ``cosine`` (0: none).
        batch_size: mini-batch size.
        epochs: epochs to train.
        label_smoothing: cross-entropy label smoothing.
        clip: gradient-norm clipping threshold (``None``: off).
        train_subset: train on the first N training samples only (``None``: all).
    """

    optimizer: str
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    batch_size: int = 32
    epochs: int = 8
    label_smoothing: float = 0.0
    clip: float | None = None
    train_subset: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from {SCHEDULES}")
        if not (self.lr > 0 and self.batch_size >= 1 and self.epochs >= 1):
            raise ValueError("lr must be > 0, batch_size and epochs >= 1")

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able fields."""
        return asdict(self)


def _lambda(r: Recipe, total: int, spe: int):
    warm = round(r.warmup_epochs * spe)
    if r.schedule == "constant":
        return lambda s: 1.0
    if r.schedule == "step":
        return lambda s: 0.1 ** ((s >= 0.5 * total) + (s >= 0.75 * total))

    def cosine(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        t = (s - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return cosine


def build_optimizer(r: Recipe, params: Iterable[torch.nn.Parameter], steps_per_epoch: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer and the per-step scheduler of recipe ``r`` (call ``sched.step()`` after
    every ``optimizer.step()``).

    Example:
        >>> r = Recipe("adagrad", lr=0.01, schedule="onecycle", epochs=2)
        >>> opt, s = build_optimizer(r, torch.nn.Linear(2, 2).parameters(), 5)
        >>> type(s).__name__
        'OneCycleLR'
    """
    params = list(params)
    o, wd = r.optimizer, r.weight_decay
    if o in ("sgd", "sgd_nesterov"):
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=r.lr, momentum=r.momentum if o == "sgd" else max(r.momentum, 0.9),
            nesterov=o == "sgd_nesterov", weight_decay=wd)
    elif o == "adam":
        opt = torch.optim.Adam(params, lr=r.lr, weight_decay=wd)
    elif o == "adamw":
        opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=wd)
    elif o == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=r.lr, momentum=r.momentum, weight_decay=wd)
    elif o == "adagrad":
        opt = torch.optim.Adagrad(params, lr=r.lr, weight_decay=wd)
    else:   # the external-train pool's optimizers (experiments.external.suite.POOL)
        opt = {"nadam": torch.optim.NAdam, "radam": torch.optim.RAdam, "adamax": torch.optim.Adamax,
               "asgd": torch.optim.ASGD}[o](params, lr=r.lr, weight_decay=wd)
    total = r.epochs * steps_per_epoch
    if r.schedule == "onecycle":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=r.lr, total_steps=total + 1,
            cycle_momentum=o in ("sgd", "sgd_nesterov") and r.momentum > 0)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lambda(r, total, steps_per_epoch))
    return opt, sched
