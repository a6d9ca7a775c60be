"""Lightning 2.x: a callback that diagnoses the LightningModule and stops it on a confirmed alert.

``Trainer(callbacks=[TEViDCallback()])`` is all it takes:

* ``on_fit_start`` attaches a :class:`~tevid_hpo.monitor.TrialMonitor` to the LightningModule
  (on global rank 0 only: one diagnosis per run, not per process) with the fit's first optimizer
  (``trainer.optimizers[0]``, set up by then), whose learning rate a telemetry diagnostician
  reads;
* ``on_before_optimizer_step`` steps it once per *optimizer step* — after the gradients of all
  ``accumulate_grad_batches`` micro-batches are accumulated (and unscaled under AMP), which is
  where a hand-written loop calls ``mon.step()`` — with the step's loss (the sum of its
  micro-batches' normalised losses, i.e. their mean, recorded in ``on_before_backward``) for the
  non-finite-loss rule;
* ``on_train_epoch_end`` calls ``epoch_end`` (the epoch's diagnoses are then all recorded);
* every new diagnosis is logged with ``pl_module.log`` (``tevid/label``, ``tevid/p_instability``,
  … see :func:`tevid_hpo.loggers.scalars`), so it reaches whatever Lightning logger the
  Trainer has (CSV, TensorBoard, MLflow, W&B) and ``trainer.callback_metrics``;
* a confirmed alert whose label is in ``prune_on`` sets ``trainer.should_stop = True``: Lightning
  finishes the current batch, runs validation as after early stopping, and ``fit`` returns. The
  reason is logged (``tevid_hpo.lightning``, WARNING, e.g. ``TEViD stopped training at step 41:
  Instability at step 30 (epoch 1, diagnosis, confidence 0.93)``), logged as ``tevid/stopped`` (the
  label's index) and kept in :attr:`TEViDCallback.stop_reason`.

**When decisions are taken.** Alerts are checked every ``every`` optimizer steps (the capture
cadence), just *before* a capture step hands its frame to the diagnostician, and at each
training epoch's end. With the monitor's default background diagnosis the previous capture's
diagnosis is then due anyway, so checking costs no extra wait; an alert is acted on at most one
capture after the frame that confirmed it (10 optimizer steps with the default cadence).

**Distributed (DDP).** Only global rank 0 monitors; at every decision point it decides and the
decision (with its reason) is sent to all ranks with ``trainer.strategy.broadcast``, so every
process sets ``should_stop`` at the same step (a rank that stopped alone would hang the others in
the next collective). The decision points are counted in optimizer steps, identical on every
rank, and broadcasts happen even after monitoring failed on rank 0.

**With an Optuna trial** — ``TEViDCallback(trial=trial, monitor="val_acc")`` — it also does what
``optuna_integration.PyTorchLightningPruningCallback(trial, monitor)`` does: after each
validation (not the sanity check) it reports ``trainer.callback_metrics[monitor]`` at the epoch
and asks ``trial.should_prune()``; the monitor writes the diagnosis to the trial (user attribute
``"tevid"``, read by :class:`~tevid_hpo.pruners.TEViDPruner`). On a TEViD stop it records
``"tevid_prune_reason"`` on the trial (:func:`tevid_hpo.pruners.prune_reason`). In one process
either pruning raises :class:`optuna.TrialPruned` out of ``trainer.fit`` (optuna-integration's
convention); under DDP it sets ``should_stop`` on every rank instead, and
:meth:`TEViDCallback.check_pruned` — call it right after ``trainer.fit`` — raises it.

**Monitoring never fails the fit.** Failures inside capture, diagnosis or the trial write turn the
monitor off (:class:`~tevid_hpo.monitor.TrialMonitor`'s own handling); a failure in this
callback's code does the same: logged once with its traceback, kept in
:attr:`TEViDCallback.error`, written to the trial as ``"tevid_error"``, and training continues
without TEViD. Only :class:`optuna.TrialPruned` leaves ``fit`` early, as intended.

Example:
    >>> import lightning.pytorch as L, torch
    >>> from data_factory.architectures import small_cnn
    >>> class Net(L.LightningModule):
    ...     def __init__(self, lr):
    ...         super().__init__(); self.net, self.lr = small_cnn(in_channels=1), lr
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         return torch.nn.functional.cross_entropy(self.net(x), y)
    ...     def configure_optimizers(self):
    ...         return torch.optim.Adam(self.parameters(), lr=self.lr)
    >>> data = torch.utils.data.TensorDataset(torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,)))
    >>> callback = TEViDCallback(diagnostician=diagnostician)             # doctest: +SKIP
    >>> trainer = L.Trainer(max_epochs=3, callbacks=[callback], accelerator="cpu")  # doctest: +SKIP
    >>> trainer.fit(Net(1e-3), torch.utils.data.DataLoader(data, batch_size=8))     # doctest: +SKIP
    >>> callback.stop_reason, trainer.callback_metrics["tevid/p_instability"]      # doctest: +SKIP

(``docs/lightning.md`` has the runnable version of this example, run by the test suite.)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - exercised only with the older package name
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as err:
        raise ImportError("tevid_hpo.lightning needs Lightning 2.x: "
                          "pip install 'tevid-hpo[lightning]'") from err

from tevid_hpo.callback_core import RunMonitor, RunResults
from tevid_hpo.decision import DEFAULT_PRUNE_ON, describe
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.loggers import PREFIX, DiagnosisLogger, label_index, scalars

__all__ = ["TEViDCallback"]

logger = logging.getLogger(__name__)


class TEViDCallback(RunResults, pl.Callback):
    """Diagnose a Lightning fit with TEViD; stop it on a confirmed alert (see the module doc).

    Args:
        trial: an ``optuna.Trial`` to report to and prune, or ``None``.
        monitor: with ``trial``, the metric in ``trainer.callback_metrics`` reported after each
            validation (``"val_acc"``, ``"val_loss"``), as in optuna-integration. ``None``
            reports nothing (the trial then only receives the diagnosis).
        diagnostician: a :class:`~tevid_hpo.diagnostician.Diagnostician`, a checkpoint path, or
            ``None`` for the shipped default (loaded on the module's device). One per
            concurrently running fit: the monitor owns its streaming state.
        prune_on: alert labels that stop training.
        min_confidence: ignore alerts less confident than this.
        every: capture cadence in optimizer steps; ``None`` takes the diagnostician's.
        loggers: extra :class:`~tevid_hpo.loggers.DiagnosisLogger` sinks (TensorBoard, MLflow)
            handed to the monitor.
        log_to_module: log each diagnosis with ``pl_module.log`` (on rank 0).
        **monitor_kwargs: passed to :class:`~tevid_hpo.monitor.TrialMonitor` (``layers``,
            ``nan_patience``, ``asynchronous``, ``history_size``, ``sync_every``).

    Attributes:
        pruned: the study's pruner (``trial.should_prune()``) ended the fit.

    The results (``stop_reason``, ``history``, ``alert``, ``error``, ``optimizer_steps``,
    ``trial_monitor``) are those of :class:`~tevid_hpo.callback_core.RunResults`.
    """

    def __init__(self, trial: Any | None = None, monitor: str | None = None, *,
                 diagnostician: Diagnostician | str | Path | None = None,
                 prune_on: Collection[str] = DEFAULT_PRUNE_ON, min_confidence: float = 0.0,
                 every: int | None = None, loggers: Sequence[DiagnosisLogger] = (),
                 log_to_module: bool = True, **monitor_kwargs: Any) -> None:
        super().__init__()
        if monitor is not None and trial is None:
            raise ValueError(f"monitor={monitor!r} names the metric reported to an Optuna "
                             "trial: pass trial= too")
        self.core = RunMonitor(logger, trial, diagnostician=diagnostician, prune_on=prune_on,
                               min_confidence=min_confidence, every=every, loggers=loggers,
                               monitor_kwargs=monitor_kwargs)
        self.trial = trial
        self.monitor = monitor
        self.log_to_module = bool(log_to_module)
        self.pruned = False
        self.pruned_epoch: int | None = None
        self._distributed = False

    def check_pruned(self) -> None:
        """Raise :class:`optuna.TrialPruned` if this fit was pruned (call after ``fit``).

        In one process the callback already raised it out of ``fit``; under DDP it only set
        ``trainer.should_stop``, so the objective calls this right after ``trainer.fit(...)``.
        Does nothing without a trial.
        """
        if self.trial is None:
            return
        import optuna

        if self.stop_reason is not None:
            raise optuna.TrialPruned(f"TEViD: {describe(self.stop_reason)}.")
        if self.pruned:
            raise optuna.TrialPruned(f"Trial was pruned at epoch {self.pruned_epoch}.")

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pruned, self.pruned_epoch = False, None
        self._distributed = trainer.world_size > 1
        optimizers = trainer.optimizers    # configured before on_fit_start
        cadence = self.core.start(pl_module, primary=trainer.is_global_zero,
                                  optimizer=optimizers[0] if optimizers else None)
        self.core.cadence = int(trainer.strategy.broadcast(cadence, src=0))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: torch.Tensor) -> None:
        # Each micro-batch's loss is already divided by accumulate_grad_batches: their sum is
        # the optimizer step's mean loss.
        self.core.add_loss(loss)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        decide, reason = self.core.step(trainer.current_epoch,
                                        f"optimizer step {trainer.global_step}")
        self._log_new(pl_module, on_step=True)
        if decide:
            self._act(trainer, pl_module, self._agree(trainer, reason), on_step=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        decide, reason = self.core.epoch_end(trainer.current_epoch)
        self._log_new(pl_module, on_step=False)
        if decide:
            self._act(trainer, pl_module, self._agree(trainer, reason), on_step=False)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs a sanity check before training: reporting it would report epoch 0 twice.
        if self.trial is None or self.monitor is None or trainer.sanity_checking:
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            warnings.warn(f"The metric '{self.monitor}' is not in the evaluation logs for "
                          "pruning. Please make sure you set the correct metric name.",
                          stacklevel=2)
            return
        epoch = pl_module.current_epoch
        should_prune = False
        if trainer.is_global_zero:
            self.trial.report(float(score), step=epoch)
            should_prune = bool(self.trial.should_prune())
        should_prune = bool(trainer.strategy.broadcast(should_prune, src=0))
        if not should_prune:
            return
        self.pruned, self.pruned_epoch = True, epoch
        trainer.should_stop = True
        if not self._distributed:
            self.core.close()
            import optuna

            raise optuna.TrialPruned(f"Trial was pruned at epoch {epoch}.")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.core.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self.core.close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.core.close()

    # ------------------------------------------------------------------ internals
    def _agree(self, trainer: pl.Trainer, reason: dict[str, Any] | None
               ) -> dict[str, Any] | None:
        """Rank 0's decision on every rank (a no-op in one process)."""
        if not self._distributed:
            return reason
        return trainer.strategy.broadcast(reason, src=0)

    def _act(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
             reason: dict[str, Any] | None, on_step: bool) -> None:
        if reason is None or self.stop_reason is not None:
            return
        primary = trainer.is_global_zero
        self.core.record_stop(reason, trainer.global_step, trainer.current_epoch, primary)
        trainer.should_stop = True
        if primary and self.log_to_module:
            try:
                pl_module.log(f"{PREFIX}stopped", float(label_index(reason["label"])),
                              on_step=on_step, on_epoch=not on_step, batch_size=1,
                              rank_zero_only=True)
            except Exception as err:  # noqa: BLE001 - monitoring must never end training
                self.core.fail(err, "logging the stop")
        if self.trial is not None and not self._distributed:
            self.core.close()
            import optuna

            raise optuna.TrialPruned(f"TEViD: {describe(reason)}.")

    def _log_new(self, pl_module: pl.LightningModule, on_step: bool) -> None:
        new = self.core.take_new()
        if not new or not self.log_to_module or not self.core.active:
            return
        try:
            values = scalars(new[-1])
            values[f"{PREFIX}alerted"] = float(self.core.alerted)
            for key, value in values.items():
                if math.isfinite(value):
                    pl_module.log(key, value, on_step=on_step, on_epoch=not on_step,
                                  batch_size=1, rank_zero_only=True)
        except Exception as err:  # noqa: BLE001 - monitoring must never end training
            self.core.fail(err, "logging the diagnosis")
