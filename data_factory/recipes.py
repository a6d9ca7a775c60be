"""Procedural training recipes: optimizer, its settings, schedule, batch size, weight decay, label
smoothing and gradient clipping, all drawn from a run's seed within an optimizer family.

Families (:data:`RECIPE_FAMILIES`): ``sgd`` (momentum 0 or 0.9, Nesterov or not), ``adam`` (Adam
or AdamW with drawn betas), ``rmsprop`` (alpha, momentum), ``adagrad`` and ``lion`` (timm). The
schedules are ``torch.optim.lr_scheduler`` objects stepped on a throw-away optimizer; the runner
reads their per-step multipliers (:func:`lr_factors`) and still multiplies the intervention's
``lr_factor(step)`` on top, exactly as for a registry run.

Example:
    >>> r = sample_recipe("sgd", seed=0)
    >>> r == sample_recipe("sgd", seed=0), 16 <= r.batch_size <= 128
    (True, True)
    >>> f = lr_factors(r, total_steps=100)
    >>> f.shape, bool((f > 0).all())
    ((100,), True)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from data_factory.procedural import family_of

__all__ = ["RECIPE_FAMILIES", "Recipe", "build_recipe_optimizer", "lr_factors", "lr_range",
           "recipe_family", "sample_recipe"]

#: optimizer family → log10 range of its peak learning rate
RECIPE_FAMILIES: dict[str, tuple[float, float]] = {
    "sgd": (-2.0, -0.7), "adam": (-3.5, -2.3), "rmsprop": (-3.7, -2.7),
    "adagrad": (-2.3, -1.0), "lion": (-3.8, -2.8)}
SCHEDULES: tuple[str, ...] = ("constant", "warmup_cosine", "step", "onecycle")
#: Architecture families trained at higher learning rates, as practitioners train them: recurrent
#: nets learned nothing in 16 epochs at the ranges above (a GRU at the unigram rate in 8 of 8
#: SGD draws of the first procedural corpus). Adaptive optimizers get ``ADAPTIVE_SHIFT`` decades
#: more; SGD the classic RNN recipe, a large step under a tight clip (``RECURRENT_SGD``).
RECURRENT: frozenset[str] = frozenset({"gru", "lstm"})
ADAPTIVE_SHIFT: float = 0.5
RECURRENT_SGD: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class Recipe:
    """One drawn training recipe (JSON-serialisable through ``dataclasses.asdict``).

    Attributes:
        family: optimizer family; optimizer: the ``torch.optim`` (or timm) class name.
        lr: peak learning rate; kwargs: the optimizer's other settings.
        weight_decay, batch_size, label_smoothing: as named.
        clip_norm: global gradient-norm clip (0: none).
        schedule: one of :data:`SCHEDULES`; warmup: warm-up share of the run (warmup_cosine).
    """

    family: str
    optimizer: str
    lr: float
    kwargs: dict[str, Any] = field(default_factory=dict)
    weight_decay: float = 0.0
    batch_size: int = 32
    label_smoothing: float = 0.0
    clip_norm: float = 0.0
    schedule: str = "constant"
    warmup: float = 0.0


def recipe_family(name: str) -> str | None:
    """The recipe family of a spec's optimizer name, or ``None`` for a registry optimizer.

    Example:
        >>> recipe_family("procedural:adam"), recipe_family("adamw")
        ('adam', None)
    """
    return family_of(name, tuple(RECIPE_FAMILIES), "recipe family")


def lr_range(family: str, arch: str | None = None) -> tuple[float, float]:
    """The log10 range of the peak learning rate drawn for optimizer ``family`` on an ``arch``
    family.

    Example:
        >>> lr_range("sgd"), lr_range("sgd", "lstm")
        ((-2.0, -0.7), (0.0, 1.0))
    """
    lo, hi = RECIPE_FAMILIES[family]
    if arch in RECURRENT:
        return RECURRENT_SGD if family == "sgd" else (lo + ADAPTIVE_SHIFT, hi + ADAPTIVE_SHIFT)
    return lo, hi


def sample_recipe(family: str, seed: int, arch: str | None = None) -> Recipe:
    """Draw a recipe of optimizer ``family`` from ``seed`` for an ``arch`` family (``None``: a
    feed-forward net; :data:`RECURRENT` families draw larger learning rates).

    Example:
        >>> {sample_recipe("adam", s).optimizer for s in range(20)} == {"Adam", "AdamW"}
        True
        >>> sample_recipe("adam", 0, arch="gru").lr > sample_recipe("adam", 0).lr
        True
    """
    if family not in RECIPE_FAMILIES:
        raise KeyError(f"unknown recipe family {family!r}; choose from {sorted(RECIPE_FAMILIES)}")
    rng = np.random.default_rng([seed, 7919 + sorted(RECIPE_FAMILIES).index(family)])
    recurrent = arch in RECURRENT
    lo, hi = lr_range(family, arch)
    lr = round(float(10 ** rng.uniform(lo, hi)), 6)
    kwargs: dict[str, Any]
    if family == "sgd":
        momentum = float(rng.choice([0.0, 0.9]))
        name, kwargs = "SGD", {"momentum": momentum, "nesterov": bool(momentum > 0 and rng.random() < 0.5)}
        if momentum == 0.0 and not recurrent:
            lr = round(lr * 3, 6)  # plain SGD needs a larger step for the same progress
    elif family == "adam":
        name = "AdamW" if rng.random() < 0.5 else "Adam"
        kwargs = {"betas": (round(float(rng.uniform(0.8, 0.95)), 3),
                            float(rng.choice([0.98, 0.99, 0.999])))}
    elif family == "rmsprop":
        name, kwargs = "RMSprop", {"alpha": float(rng.choice([0.9, 0.99])),
                                   "momentum": float(rng.choice([0.0, 0.5, 0.9]))}
    elif family == "adagrad":
        name, kwargs = "Adagrad", {}
    else:
        name, kwargs = "Lion", {"betas": (float(rng.choice([0.9, 0.95])), 0.99)}
    weight_decay = float(rng.choice([0.0, 1e-4, 5e-4, 1e-2]))
    batch_size = int(rng.choice([16, 24, 32, 48, 64, 96, 128]))
    label_smoothing = float(rng.choice([0.0, 0.0, 0.05, 0.1]))
    clip_norm = float(rng.choice([0.0, 0.0, 1.0, 5.0]))
    if recurrent and family == "sgd":
        clip_norm = float(rng.choice([0.25, 0.5, 1.0]))  # a step of 1-10 needs a tight clip
    return Recipe(
        family=family, optimizer=name, lr=lr, kwargs=kwargs, weight_decay=weight_decay,
        batch_size=batch_size, label_smoothing=label_smoothing, clip_norm=clip_norm,
        schedule=str(rng.choice(SCHEDULES)), warmup=round(float(rng.uniform(0.02, 0.1)), 3))


def build_recipe_optimizer(recipe: Recipe, params: Iterable[torch.Tensor], lr: float | None = None,
                           weight_decay: float | None = None) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params`` (``lr``/``weight_decay`` override the recipe's, as an
    intervention's plan does).

    Example:
        >>> opt = build_recipe_optimizer(sample_recipe("lion", 1), torch.nn.Linear(2, 2).parameters())
        >>> type(opt).__name__
        'Lion'
    """
    lr = recipe.lr if lr is None else float(lr)
    wd = recipe.weight_decay if weight_decay is None else float(weight_decay)
    if recipe.optimizer == "Lion":
        from timm.optim import Lion

        return Lion(params, lr=lr, weight_decay=wd, **recipe.kwargs)
    return getattr(torch.optim, recipe.optimizer)(params, lr=lr, weight_decay=wd, **recipe.kwargs)


def lr_factors(recipe: Recipe, total_steps: int) -> np.ndarray:
    """Per-step multiplier of the recipe's peak lr over ``total_steps`` steps, read from the
    ``torch.optim.lr_scheduler`` the schedule names (stepped on a throw-away optimizer).

    Example:
        >>> from dataclasses import replace
        >>> f = lr_factors(replace(sample_recipe("adam", 0), schedule="step"), 8)
        >>> [round(float(v), 3) for v in f]
        [1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    """
    total = max(1, int(total_steps))
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler
    if recipe.schedule == "constant":
        return np.ones(total)
    if recipe.schedule == "warmup_cosine":
        warm = max(1, int(recipe.warmup * total))
        s: Any = sched.SequentialLR(opt, [sched.LinearLR(opt, 1.0 / warm, 1.0, warm),
                                          sched.CosineAnnealingLR(opt, max(1, total - warm), 0.05)],
                                    milestones=[warm])
    elif recipe.schedule == "step":
        s = sched.MultiStepLR(opt, [total // 2, (3 * total) // 4], gamma=0.1)
    elif recipe.schedule == "onecycle":
        s = sched.OneCycleLR(opt, max_lr=1.0, total_steps=total + 1, cycle_momentum=False)
    else:
        raise KeyError(f"unknown schedule {recipe.schedule!r}; choose from {SCHEDULES}")
    out = np.empty(total)
    for step in range(total):
        out[step] = opt.param_groups[0]["lr"]
        opt.step()
        s.step()
    return out
