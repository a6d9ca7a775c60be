"""How a candidate is trained: :class:`TrainSettings` and the :class:`CandidateTrainer` evaluator.

The trainer builds a candidate's :class:`~tevid_hpo.nas.network.CellNet`, trains it on an
in-memory data set (scikit-learn digits by default) under an optional
:class:`~tevid_hpo.nas.hook.TEViDHook`, reports to an Optuna trial when given one, and returns a
:class:`~tevid_hpo.nas.results.CandidateResult`. :class:`Evaluator` is what a search needs from
any trainer.

Example:
    >>> TrainSettings(epochs=2).batch_size
    64
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
import torch
from torch import nn

from core_models.train import cosine_lr
from data_factory.datasets import TensorData, digits
from tevid_hpo.decision import TEVID
from tevid_hpo.nas.hook import TEViDHook
from tevid_hpo.nas.network import CellNet
from tevid_hpo.nas.results import CandidateResult
from tevid_hpo.nas.space import Candidate
from tevid_hpo.pruners import REASON_ATTR

__all__ = ["CandidateTrainer", "Evaluator", "TrainSettings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """How every candidate is trained (NAS-Bench-201's recipe, shrunk).

    SGD with Nesterov momentum, weight decay, a per-step cosine schedule from the candidate's
    learning rate to 0 over ``epochs``; cross-entropy; batches drawn in a per-candidate seeded
    order.

    Example:
        >>> TrainSettings(epochs=3).epochs
        3
    """

    epochs: int = 5
    batch_size: int = 64
    channels: int = 8
    cells_per_stage: int = 1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "channels", "cells_per_stage"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class Evaluator(Protocol):
    """What a search needs from a trainer: ``num_classes`` and a call per candidate."""

    num_classes: int

    def __call__(self, candidate: Candidate, trial: optuna.Trial | None = None
                 ) -> CandidateResult: ...


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return float(acc)


def _seed_of(settings: TrainSettings, candidate: Candidate) -> int:
    # zlib's CRC is stable across processes (Python's str hash is salted): the same candidate
    # trains identically in a standalone search and as an Optuna trial.
    return settings.seed * 1_000_003 + zlib.crc32(candidate.key.encode())


class CandidateTrainer:
    """Train a :class:`Candidate`'s :class:`CellNet` on an in-memory data set, under a hook.

    Every step is passed to the hook's monitor, and the run ends as soon as
    :meth:`TEViDHook.check` gives a reason (alerts are checked after every step, the cost rule
    after every diagnosis). With an Optuna ``trial`` the monitor writes its diagnosis to it, the
    validation accuracy is reported after every epoch and ``trial.should_prune()`` is asked
    (so the study's pruner — e.g. Hyperband — can also end it); a stop by the hook is recorded as
    the trial's ``"tevid_prune_reason"`` (read it with :func:`tevid_hpo.pruners.prune_reason`).
    The trainer never raises :class:`optuna.TrialPruned` itself: it returns a
    :class:`CandidateResult` with ``pruned=True``, and its caller decides.

    Args:
        data: train/val/test tensors (default: scikit-learn digits at 16×16, split seed 0).
        settings: the training recipe.
        hook: a :class:`TEViDHook`, or ``None`` to train every candidate to the end (plain
            BANANAS).

    Example:
        >>> from tevid_hpo.nas import Candidate, Cell
        >>> trainer = CandidateTrainer(settings=TrainSettings(epochs=1))   # no hook
        >>> r = trainer(Candidate(Cell(("nor_conv_3x3",) * 6), 0.1))
        >>> r.epochs, r.pruned, len(r.val_curve), r.test_accuracy is not None
        (1.0, False, 1, True)
    """

    def __init__(self, data: TensorData | None = None, settings: TrainSettings = TrainSettings(),
                 hook: TEViDHook | None = None) -> None:
        self.data = data if data is not None else digits(image_size=16, seed=0)
        self.settings = settings
        self.hook = hook
        self.num_classes = self.data.num_classes

    def build(self, candidate: Candidate) -> CellNet:
        """The candidate's network, freshly initialised from its seed."""
        torch.manual_seed(_seed_of(self.settings, candidate))
        return CellNet(candidate.cell, in_channels=int(self.data.x_train.shape[1]),
                       num_classes=self.num_classes, channels=self.settings.channels,
                       cells_per_stage=self.settings.cells_per_stage)

    def __call__(self, candidate: Candidate, trial: optuna.Trial | None = None
                 ) -> CandidateResult:
        s, d = self.settings, self.data
        start = time.perf_counter()
        model = self.build(candidate)
        opt = torch.optim.SGD(model.parameters(), lr=candidate.lr, momentum=s.momentum,
                              weight_decay=s.weight_decay, nesterov=s.momentum > 0)
        n = len(d.x_train)
        steps_per_epoch = math.ceil(n / s.batch_size)
        total = s.epochs * steps_per_epoch
        g = torch.Generator().manual_seed(_seed_of(s, candidate))
        hook = self.hook
        curve: list[float] = []
        reason: dict[str, Any] | None = None
        step = 0
        with (hook.monitor(model, trial, optimizer=opt) if hook is not None
              else contextlib.nullcontext()) as mon:
            for epoch in range(s.epochs):
                order = torch.randperm(n, generator=g)
                for b in range(steps_per_epoch):
                    for group in opt.param_groups:
                        group["lr"] = cosine_lr(step, total, 0, candidate.lr)
                    idx = order[b * s.batch_size:(b + 1) * s.batch_size]
                    loss = nn.functional.cross_entropy(model(d.x_train[idx]), d.y_train[idx])
                    opt.zero_grad()
                    loss.backward()
                    step += 1
                    if hook is not None and mon is not None:
                        diagnosis = mon.step(loss=loss.item(), epoch=epoch)
                        reason = hook.check(mon, step / steps_per_epoch, s.epochs,
                                            use_cost=diagnosis is not None, curve=curve)
                        if reason is not None:
                            break
                    opt.step()
                if reason is not None:
                    break
                curve.append(_accuracy(model, d.x_val, d.y_val))
                if mon is not None:
                    mon.epoch_end(epoch)
                if trial is not None:
                    trial.report(curve[-1], epoch)
                    if trial.should_prune():
                        reason = dict(trial.user_attrs.get(REASON_ATTR) or {
                            "pruner": type(trial.study.pruner).__name__, "rule": "wrapped",
                            "report_step": epoch})
                        break
        pruned = reason is not None
        if hook is not None:
            hook.record(curve)  # a rival for the standing of the candidates after this one
        if reason is not None and trial is not None and reason.get("pruner") == TEVID:
            trial.set_user_attr(REASON_ATTR, reason)
        val = curve[-1] if curve and len(curve) * steps_per_epoch == step else _accuracy(
            model, d.x_val, d.y_val)
        result = CandidateResult(
            candidate, val, step / steps_per_epoch, pruned, reason, curve,
            test_accuracy=None if pruned else _accuracy(model, d.x_test, d.y_test),
            alert=mon.alert if mon is not None else None,
            diagnoses=len(mon.history) if mon is not None else 0,
            seconds=time.perf_counter() - start,
            trial_number=getattr(trial, "number", None))
        logger.info("%s lr=%g: val %.3f after %.2f epochs%s", candidate.cell, candidate.lr,
                    result.val_accuracy, result.epochs,
                    f" (pruned: {reason})" if pruned else "")
        return result
