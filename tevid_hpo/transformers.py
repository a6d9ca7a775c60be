"""Hugging Face ``Trainer``: a ``TrainerCallback`` that diagnoses the model and stops on an alert.

``Trainer(..., callbacks=[TEViDTrainerCallback()])``:

* ``on_train_begin`` attaches a :class:`~tevid_hpo.monitor.TrialMonitor` to the model (on the
  world's process zero only) with the Trainer's optimizer (the event's ``optimizer``, created by
  then), whose learning rate a telemetry diagnostician reads; and a forward hook on the model
  that keeps the training loss it returns (``outputs["loss"]``, as ``Trainer.compute_loss``
  reads it) for the monitor's non-finite-loss rule;
* ``on_pre_optimizer_step`` steps the monitor once per *optimizer step*: after the gradients of
  all ``gradient_accumulation_steps`` micro-batches are accumulated and clipped, just before
  ``optimizer.step()`` — where a hand-written loop calls ``mon.step()``;
* ``on_epoch_end`` calls ``epoch_end``;
* ``on_log`` adds the latest diagnosis to the training logs (``tevid/label``,
  ``tevid/p_instability``, … see :func:`tevid_hpo.loggers.scalars`), in the ``logs`` dict seen
  by the callbacks after this one and in ``trainer.state.log_history``;
* a confirmed alert whose label is in ``prune_on`` sets ``control.should_training_stop`` (and
  ``should_log``, so the step's logs carry ``tevid/stopped`` — the label's index — and
  ``tevid/stop_reason``, one line); the reason is also logged (``tevid_hpo.transformers``,
  WARNING) and kept in :attr:`TEViDTrainerCallback.stop_reason`.

Alerts are checked every ``every`` optimizer steps, just before a capture step hands its frame
to the diagnostician (when the previous capture's diagnosis is due anyway), and at epoch ends,
as in :mod:`tevid_hpo.lightning`.

The Trainer puts its reporting callbacks (``report_to``: TensorBoard, MLflow, W&B) *before* the
user's, so they have already written a log when this callback adds the diagnosis to it. To send
diagnoses to TensorBoard or MLflow, pass ``loggers=[TensorBoardLogger(...), MLflowLogger()]``
(:mod:`tevid_hpo.loggers`); ``state.log_history`` (and so the Trainer's saved
``trainer_state.json``) has them either way.

**With an Optuna trial** (``TEViDTrainerCallback(trial)``) the monitor writes the diagnosis to
the trial (user attribute ``"tevid"``, read by :class:`~tevid_hpo.pruners.TEViDPruner`), and a
TEViD stop records ``"tevid_prune_reason"`` and raises :class:`optuna.TrialPruned` out of
``trainer.train()`` at ``on_train_end``, the way the Trainer's own Optuna search prunes.

**Several processes** (``torchrun``/``accelerate launch``): only process zero monitors, and each
decision is sent to every process with ``torch.distributed.broadcast_object_list`` so all of
them stop at the same step. (This path is not exercised by the test suite, which runs on one
process.)

**Monitoring never fails the training**: a failure inside capture or diagnosis, or in this
callback's own code, is logged once, kept in :attr:`TEViDTrainerCallback.error`, written to the
trial as ``"tevid_error"``, and training continues without TEViD.

Example:
    >>> from transformers import TrainerCallback
    >>> issubclass(TEViDTrainerCallback, TrainerCallback)
    True
    >>> TEViDTrainerCallback(prune_on=("Instability",)).prune_on
    ('Instability',)

(``docs/transformers.md`` has a runnable training example, run by the test suite.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("tevid_hpo.transformers needs Hugging Face transformers: "
                      "pip install 'tevid-hpo[transformers]'") from err

from tevid_hpo.callback_core import RunMonitor, RunResults
from tevid_hpo.decision import DEFAULT_PRUNE_ON, describe
from tevid_hpo.diagnostician import Diagnosis, Diagnostician
from tevid_hpo.loggers import PREFIX, DiagnosisLogger, label_index, scalars

__all__ = ["TEViDTrainerCallback"]

logger = logging.getLogger(__name__)


def _loss_of(output: Any) -> torch.Tensor | None:
    """The loss a model's forward returned, as ``Trainer.compute_loss`` finds it."""
    if isinstance(output, Mapping):
        loss = output.get("loss")
    else:
        loss = getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


class TEViDTrainerCallback(RunResults, TrainerCallback):
    """Diagnose a ``transformers.Trainer`` run with TEViD; stop it on a confirmed alert.

    Args:
        trial: an ``optuna.Trial`` that receives the diagnosis (and is pruned on a TEViD
            stop), or ``None``.
        diagnostician: a :class:`~tevid_hpo.diagnostician.Diagnostician`, a checkpoint path, or
            ``None`` for the shipped default (loaded on the model's device).
        prune_on: alert labels that stop training.
        min_confidence: ignore alerts less confident than this.
        every: capture cadence in optimizer steps; ``None`` takes the diagnostician's.
        loggers: extra :class:`~tevid_hpo.loggers.DiagnosisLogger` sinks (TensorBoard,
            MLflow) handed to the monitor.
        **monitor_kwargs: passed to :class:`~tevid_hpo.monitor.TrialMonitor` (``layers``,
            ``nan_patience``, ``asynchronous``, …).

    The results (``stop_reason``, ``history``, ``alert``, ``error``, ``optimizer_steps``,
    ``trial_monitor``) are those of :class:`~tevid_hpo.callback_core.RunResults`.
    """

    def __init__(self, trial: Any | None = None, *,
                 diagnostician: Diagnostician | str | Path | None = None,
                 prune_on: Collection[str] = DEFAULT_PRUNE_ON, min_confidence: float = 0.0,
                 every: int | None = None, loggers: Sequence[DiagnosisLogger] = (),
                 **monitor_kwargs: Any) -> None:
        self.core = RunMonitor(logger, trial, diagnostician=diagnostician, prune_on=prune_on,
                               min_confidence=min_confidence, every=every, loggers=loggers,
                               monitor_kwargs=monitor_kwargs)
        self.trial = trial
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._epoch = 0
        self._logged_stop = False
        self._latest: Diagnosis | None = None

    @property
    def prune_on(self) -> tuple[str, ...]:
        """Alert labels that stop training."""
        return self.core.prune_on

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, model: nn.Module | None = None,
                       optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> None:
        self._close()
        self._epoch, self._logged_stop, self._latest = 0, False, None
        cadence = self.core.start(model, primary=state.is_world_process_zero,
                                  optimizer=optimizer)
        if self.core.active and model is not None:
            self._hook = model.register_forward_hook(self._keep_loss)
        self.core.cadence = int(_broadcast(args, cadence))

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                              control: TrainerControl, **kwargs: Any) -> None:
        decide, reason = self.core.step(self._epoch, f"optimizer step {state.global_step}")
        if decide:
            self._act(state, control, _broadcast(args, reason))

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        decide, reason = self.core.epoch_end(self._epoch)
        self._epoch += 1
        if decide:
            self._act(state, control, _broadcast(args, reason))

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is None or not state.is_world_process_zero:
            return
        # Training logs only: evaluation results have their own keys and step.
        if not any(k == "loss" or k.startswith("train_") for k in logs):
            return
        try:
            extra: dict[str, Any] = {}
            new = self.core.take_new()
            self._latest = new[-1] if new else self._latest
            if self._latest is not None and self.core.error is None:
                extra.update(scalars(self._latest))
                extra[f"{PREFIX}alerted"] = float(self.core.alerted)
            if self.stop_reason is not None and not self._logged_stop:
                self._logged_stop = True
                extra[f"{PREFIX}stopped"] = float(label_index(self.stop_reason["label"]))
                extra[f"{PREFIX}stop_reason"] = describe(self.stop_reason)
            extra = {k: v for k, v in extra.items()
                     if not isinstance(v, float) or math.isfinite(v)}
            logs.update(extra)
            # The Trainer appended this log to log_history before calling the callbacks.
            if state.log_history and all(state.log_history[-1].get(k) == v
                                          for k, v in logs.items() if k not in extra):
                state.log_history[-1].update(extra)
        except Exception as err:  # noqa: BLE001 - monitoring must never end training
            self.core.fail(err, "adding the diagnosis to the logs")

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        self._close()
        if self.trial is not None and self.stop_reason is not None:
            import optuna

            raise optuna.TrialPruned(f"TEViD: {describe(self.stop_reason)}.")

    # ------------------------------------------------------------------ internals
    def _keep_loss(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        try:
            loss = _loss_of(output)
        except Exception:  # noqa: BLE001 - an exotic output type: no loss to check
            return
        if loss is not None:
            self.core.add_loss(loss)

    def _act(self, state: TrainerState, control: TrainerControl,
             reason: dict[str, Any] | None) -> None:
        if reason is None or self.stop_reason is not None:
            return
        self.core.record_stop(reason, state.global_step, self._epoch,
                              state.is_world_process_zero)
        control.should_training_stop = True
        control.should_log = True     # so this step's logs carry the reason

    def _close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.core.close()


def _broadcast(args: TrainingArguments, obj: Any) -> Any:
    """Process zero's ``obj`` on every process (``obj`` itself in a one-process run)."""
    if args.world_size <= 1 or not (torch.distributed.is_available()
                                    and torch.distributed.is_initialized()):
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
