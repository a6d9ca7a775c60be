"""Optimizers of the factory, in one registry: AdamW and SGD (train), Lion and Adafactor (held out).

Each entry carries a ``reference_lr``: the peak learning rate (20-step linear warm-up, cosine decay
to 10 %, batch 32, weight decay 5e-4) at which a healthy run of a typical registry model trains
well. Each was chosen by a sweep over 13 architecture × data-set pairs covering every registry
architecture (10 epochs, validation accuracy): the grid value with the highest mean accuracy
relative to each pair's best over the grid (AdamW 3e-3: 0.93; SGD 5e-2: 0.96, 0.1 scored 0.98 but
costs the plain CNN and the ViT 10 points; Lion 2e-3: 0.98; Adafactor 5e-3: 0.95). Interventions
scale it.

All optimizers are standard ``torch.optim.Optimizer`` subclasses, so their per-parameter state is
reachable through ``opt.state`` (moments are tensors; second-moment keys contain ``"sq"``).

Example:
    >>> import torch
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = build_optimizer("lion", model.parameters())
    >>> opt.defaults["lr"] == OPTIMIZERS["lion"].reference_lr
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["OPTIMIZERS", "OptimizerSpec", "build_optimizer"]

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer.

    Attributes:
        name: registry key.
        reference_lr: peak learning rate of a healthy run of a typical registry model.
        build: ``build(params, lr, weight_decay) -> torch.optim.Optimizer``.
        description: one line on the configuration.

    Example:
        >>> OPTIMIZERS["sgd"].reference_lr > OPTIMIZERS["adamw"].reference_lr
        True
    """

    name: str
    reference_lr: float
    build: Callable[..., torch.optim.Optimizer]
    description: str = ""


def _adamw(params: Params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _sgd(params: Params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def _rmsprop(params: Params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=lr, alpha=0.99, weight_decay=weight_decay)


def _nadam(params: Params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.NAdam(params, lr=lr, weight_decay=weight_decay, decoupled_weight_decay=True)


def _lion(params: Params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    from timm.optim import Lion

    return Lion(params, lr=lr, weight_decay=weight_decay)


def _adafactor(params: Params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # timm's Adafactor, not torch.optim.Adafactor: with an explicit lr timm applies it as an
    # absolute step (torch's scales it by the parameter RMS and caps it at 1/sqrt(t)), so the
    # factory's warm-up/cosine schedule and lr interventions mean the same as for the others;
    # and its second-moment state keys (exp_avg_sq_row/col) follow the "sq" naming the
    # optimizer-state intervention relies on to keep them non-negative.
    from timm.optim import Adafactor

    return Adafactor(params, lr=lr, weight_decay=weight_decay)


OPTIMIZERS: dict[str, OptimizerSpec] = {spec.name: spec for spec in (
    OptimizerSpec("adamw", 3e-3, _adamw, "torch.optim.AdamW, betas (0.9, 0.999)"),
    OptimizerSpec("sgd", 5e-2, _sgd, "torch.optim.SGD, Nesterov momentum 0.9"),
    OptimizerSpec("rmsprop", 1e-3, _rmsprop, "torch.optim.RMSprop, alpha 0.99, no momentum"),
    OptimizerSpec("nadam", 3e-3, _nadam, "torch.optim.NAdam, decoupled weight decay"),
    OptimizerSpec("lion", 2e-3, _lion, "timm.optim.Lion, betas (0.9, 0.99)"),
    OptimizerSpec("adafactor", 5e-3, _adafactor,
                  "timm.optim.Adafactor, factored 2nd moment, no 1st moment"),
)}


def build_optimizer(name: str, params: Params, lr: float | None = None,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Build the registered optimizer ``name`` over ``params``.

    Args:
        name: a key of :data:`OPTIMIZERS`.
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        lr: learning rate; ``None`` uses the entry's ``reference_lr``.
        weight_decay: decoupled weight decay (L2 for SGD).

    Raises:
        KeyError: ``name`` is not registered (the message lists the valid names).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = build_optimizer("sgd", [w], lr=0.1)
        >>> (w * w).sum().backward(); opt.step()
        >>> round(w[0].item(), 4), sorted(opt.state[w])
        (0.62, ['momentum_buffer'])
    """
    if name not in OPTIMIZERS:
        raise KeyError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    spec = OPTIMIZERS[name]
    return spec.build(params, lr=spec.reference_lr if lr is None else float(lr),
                      weight_decay=float(weight_decay))
