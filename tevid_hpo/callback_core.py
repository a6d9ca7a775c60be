"""What the training-framework callbacks (Lightning, Hugging Face) share: one monitored run.

:class:`RunMonitor` owns the :class:`~tevid_hpo.monitor.TrialMonitor` of one ``fit``/``train``
call and everything about it that does not depend on the framework:

* attaching it on the primary process (global rank 0 / world process zero), with the
  framework's optimizer (read for its learning rate, which a telemetry diagnostician uses), and
  closing it;
* the step's loss, summed over the accumulated micro-batches, for the non-finite-loss rule;
* stepping once per optimizer step and deciding every ``cadence`` optimizer steps — *before* a
  capture step hands its frame to the diagnostician, when the previous capture's diagnosis is
  due anyway, so deciding never adds a wait to the monitor's background diagnosis — and at epoch
  ends, with the shared stop rule (:func:`tevid_hpo.decision.alert_reason`);
* recording a stop (the reason, the WARNING line, ``"tevid_prune_reason"`` on the trial);
* turning monitoring off on any failure in the callback's own code, as ``TrialMonitor`` does for
  failures inside it: logged once, ``"tevid_error"`` on the trial, training goes on.

The framework callbacks add what differs: their hooks, agreeing on a decision across processes,
how a stop is requested (``trainer.should_stop``, ``control.should_training_stop``) and where the
diagnosis is logged. :class:`RunResults` gives both the same result attributes.

Example:
    >>> core = RunMonitor(logging.getLogger("demo"), prune_on=("Instability",))
    >>> core.start(model=None, primary=False), core.step(epoch=0, where="step 0")
    (0, (False, None))
    >>> core.optimizer_steps, core.stop_reason, core.history
    (1, None, [])
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tevid_hpo.decision import (
    DEFAULT_PRUNE_ON,
    alert_reason,
    check_options,
    check_prune_on,
    describe,
)
from tevid_hpo.diagnostician import Diagnosis, Diagnostician
from tevid_hpo.loggers import DiagnosisLogger
from tevid_hpo.monitor import ERROR_ATTR, TrialMonitor
from tevid_hpo.pruners import REASON_ATTR

__all__ = ["RunMonitor", "RunResults"]


class RunMonitor:
    """One monitored training run inside a framework callback (see the module docstring).

    Args:
        log: the framework module's logger (stop reasons and failures are logged there).
        trial: an ``optuna.Trial`` (anything with ``set_user_attr``) or ``None``.
        diagnostician: a :class:`~tevid_hpo.diagnostician.Diagnostician`, a checkpoint path,
            or ``None`` for the shipped default (loaded on the model's device).
        prune_on, min_confidence: the stop rule.
        every: capture cadence in optimizer steps; ``None`` takes the diagnostician's.
        loggers: extra sinks handed to the monitor.
        monitor_kwargs: passed to :class:`~tevid_hpo.monitor.TrialMonitor`.
    """

    def __init__(self, log: logging.Logger, trial: Any | None = None, *,
                 diagnostician: Diagnostician | str | Path | None = None,
                 prune_on: Collection[str] = DEFAULT_PRUNE_ON, min_confidence: float = 0.0,
                 every: int | None = None, loggers: Sequence[DiagnosisLogger] = (),
                 monitor_kwargs: dict[str, Any] | None = None) -> None:
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.log_to = log
        self.trial = trial
        self.diagnostician = diagnostician
        self.prune_on = check_prune_on(prune_on)
        self.min_confidence = check_options(None, min_confidence)
        self.every = every
        self.loggers = list(loggers)
        self.monitor_kwargs = dict(monitor_kwargs or {})
        self.trial_monitor: TrialMonitor | None = None
        self._entered = False
        self.reset()

    def reset(self) -> None:
        """Forget the previous run (a callback may be reused for another fit)."""
        self.stop_reason: dict[str, Any] | None = None
        self.optimizer_steps = 0
        self.cadence = 0            # agreed by all processes; 0: never decide
        self.alerted = False        # a diagnosis confirmed an alert (latched)
        self._new: list[Diagnosis] = []
        self._loss: torch.Tensor | None = None
        self._error: str | None = None

    # ------------------------------------------------------------------ the monitor's sink
    def log(self, diagnosis: Diagnosis, step: int) -> None:
        """Logger hook: keep each diagnosis until the callback logs it (:meth:`take_new`)."""
        self._new.append(diagnosis)
        self.alerted = self.alerted or diagnosis.alert is not None

    def take_new(self) -> list[Diagnosis]:
        """The diagnoses recorded since the last call, oldest first."""
        new, self._new = self._new, []
        return new

    # ------------------------------------------------------------------ lifecycle
    def start(self, model: nn.Module | None, primary: bool,
              optimizer: torch.optim.Optimizer | None = None) -> int:
        """Attach a fresh monitor to ``model`` on the primary process; its cadence (else 0).

        ``optimizer`` is the framework's (the first one if it has several): the monitor reads
        its learning rate at capture steps into the frames' scalars, which a telemetry
        diagnostician reads (without it they are unknown to it). An ``optimizer`` in the
        callback's ``monitor_kwargs`` takes precedence.

        Raises:
            FileNotFoundError: ``diagnostician=None`` and no default checkpoint is installed (a
                setup error, not a monitoring failure).
        """
        self.close()
        self.trial_monitor = None
        self.reset()
        if not primary or model is None:
            return 0
        try:
            diag = self.diagnostician
            if isinstance(diag, (str, Path)):
                p = next(model.parameters(), None)
                diag = Diagnostician.from_pretrained(
                    diag, device=p.device if p is not None else "cpu")
            options = {"optimizer": optimizer, **self.monitor_kwargs}
            mon = TrialMonitor(model, self.trial, every=self.every, diagnostician=diag,
                               loggers=[self, *self.loggers], **options)
            self.trial_monitor = mon
            mon.__enter__()
            self._entered = True
            return mon.every
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - monitoring must never end training
            self.fail(err, "attaching the monitor")
            return 0

    def close(self) -> None:
        """Detach the monitor (idempotent); its last diagnosis is written to the trial."""
        mon = self.trial_monitor
        if mon is not None and self._entered:
            self._entered = False
            try:
                mon.__exit__(None, None, None)
            except Exception as err:  # noqa: BLE001 - closing only removes hooks, writes attrs
                self.log_to.debug("closing the TEViD monitor failed: %r", err)

    @property
    def active(self) -> bool:
        """Monitoring runs on this process and has not failed."""
        mon = self.trial_monitor
        return self._entered and mon is not None and mon.error is None and self._error is None

    # ------------------------------------------------------------------ training-loop calls
    def add_loss(self, loss: torch.Tensor) -> None:
        """Add a micro-batch's loss to the step's (a NaN in any of them makes the step's NaN)."""
        if self.active:
            value = loss.detach()
            self._loss = value if self._loss is None else self._loss + value

    def step(self, epoch: int, where: str) -> tuple[bool, dict[str, Any] | None]:
        """Close one optimizer step: ``(decision point, reason to stop or None)``.

        Every process gets the same first element (it counts optimizer steps only); the reason
        is the primary process's, ``None`` elsewhere.
        """
        n = self.optimizer_steps
        decide = self.cadence > 0 and n > 0 and n % self.cadence == 0
        self.optimizer_steps += 1
        reason = None
        if self.active:
            mon = self.trial_monitor
            assert mon is not None
            try:
                if decide:
                    reason = self.reason()
                loss, self._loss = self._loss, None
                mon.step(loss=loss, epoch=epoch)
            except Exception as err:  # noqa: BLE001 - monitoring must never end training
                self.fail(err, where)
                reason = None
        return decide, reason

    def epoch_end(self, epoch: int) -> tuple[bool, dict[str, Any] | None]:
        """Close ``epoch``: ``(decision point, reason)`` as :meth:`step`."""
        reason = None
        if self.active:
            mon = self.trial_monitor
            assert mon is not None
            try:
                mon.epoch_end(epoch)
                reason = self.reason()
            except Exception as err:  # noqa: BLE001 - monitoring must never end training
                self.fail(err, f"the end of epoch {epoch}")
                reason = None
        return self.cadence > 0, reason

    def reason(self) -> dict[str, Any] | None:
        """The stop rule on the monitor's confirmed alerts (``None`` once stopped)."""
        mon = self.trial_monitor
        if mon is None or self.stop_reason is not None:
            return None
        return alert_reason(mon.alerts, self.prune_on, self.min_confidence)

    def record_stop(self, reason: dict[str, Any], global_step: int, report_step: int,
                    primary: bool) -> dict[str, Any]:
        """Remember a stop decided at ``global_step``; on the primary process log it and
        write ``"tevid_prune_reason"`` (with ``report_step``) to the trial."""
        self.stop_reason = {**reason, "global_step": global_step}
        if primary:
            self.log_to.warning("TEViD stopped training at step %d: %s", global_step,
                                describe(reason))
            if self.trial is not None:
                try:
                    self.trial.set_user_attr(REASON_ATTR, {**self.stop_reason,
                                                           "report_step": report_step})
                except Exception as err:  # noqa: BLE001 - the storage may be what failed
                    self.fail(err, "recording the stop reason")
        return self.stop_reason

    def fail(self, err: BaseException, where: str) -> None:
        """Turn monitoring off for the rest of the run (the first failure is kept)."""
        if self._error is not None:
            return
        self._error = f"{type(err).__name__}: {err} (while {where})"
        self.log_to.warning("TEViD monitoring disabled: %s. Training continues without it.",
                            self._error, exc_info=err)
        self.close()
        if self.trial is not None:
            try:
                self.trial.set_user_attr(ERROR_ATTR, self._error)
            except Exception as write_err:  # noqa: BLE001 - the storage may be what failed
                self.log_to.debug("could not record %s on the trial: %r", ERROR_ATTR, write_err)

    # ------------------------------------------------------------------ results
    @property
    def error(self) -> str | None:
        """Why monitoring turned itself off (here or inside the monitor), or ``None``."""
        if self._error is not None:
            return self._error
        return self.trial_monitor.error if self.trial_monitor is not None else None

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every diagnosis of the run (primary process; empty elsewhere)."""
        return self.trial_monitor.history if self.trial_monitor is not None else []


class RunResults:
    """Result attributes of a framework callback, read from its :class:`RunMonitor` ``core``."""

    core: RunMonitor

    @property
    def trial_monitor(self) -> TrialMonitor | None:
        """The :class:`~tevid_hpo.monitor.TrialMonitor` of the current (or last) run on the
        primary process; ``None`` elsewhere."""
        return self.core.trial_monitor

    @property
    def stop_reason(self) -> dict[str, Any] | None:
        """Why TEViD stopped training: ``{"pruner": "TEViD", "rule": "alert", "label",
        "reason", "step", "epoch", "confidence", "vacuity", "global_step"}`` (``step``: the
        frame that confirmed the alert; ``global_step``: optimizer steps done when it was acted
        on), on every process; ``None`` if it did not."""
        return self.core.stop_reason

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps of the current (or last) run, counted on every process."""
        return self.core.optimizer_steps

    @property
    def error(self) -> str | None:
        """Why monitoring turned itself off, or ``None``."""
        return self.core.error

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every diagnosis of the run (primary process; empty elsewhere)."""
        return self.core.history

    @property
    def alert(self) -> str | None:
        """The run's first confirmed alert (primary process), or ``None``."""
        mon = self.core.trial_monitor
        return mon.alert if mon is not None else None
