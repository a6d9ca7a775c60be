"""Watch one training run from inside its process and publish a compact diagnosis on its trial.

:class:`TrialMonitor` is the trial-side half of tevid-hpo's Optuna integration (DESIGN §7). Around
a training loop it attaches :class:`~data_factory.capture.StateCapture` to the model, feeds each
captured frame to a :class:`~tevid_hpo.diagnostician.Diagnostician` on the model's own device,
and writes what it concludes to the Optuna trial as the user attribute ``"tevid"``. The pruner
(:class:`tevid_hpo.pruners.TEViDPruner`) decides from that attribute only, so it works with any
storage — in-memory, RDB, journal — and with any number of worker processes.

What is written (``trial.user_attrs["tevid"]``, JSON)::

    {"version": 1, "every": 10, "step": 341, "epoch": 9, "epochs_done": 10, "n_diagnoses": 35,
     "alert": "Instability" | None,           # the run's first confirmed alert (latched)
     "alerts": {label: {"label", "step", "epoch", "confidence", "vacuity", "reason"}},
     "latest": {"step", "epoch", "label", "probs", "vacuity", "alert", "finite"} | None,
     "history": [...]}                         # the last ``history_size`` diagnoses

``alerts`` holds the *first* confirmed alert of each label (at most one per label), ``history``
the last ``history_size`` (default 16) diagnoses with probabilities rounded to 4 digits, so the
attribute stays under ~6 KB however long the run is (MySQL's TEXT column holds 64 KB; journal
storages append every write, so size and write frequency both matter). It is written when an
alert is first confirmed (at once, so a pruner sees it at the next ``trial.should_prune()``), at
every :meth:`TrialMonitor.epoch_end`, every ``sync_every`` diagnoses until the first
``epoch_end`` (so at most one write per epoch after it), and when the ``with`` block
ends. A monitoring failure is written as ``trial.user_attrs["tevid_error"]``.

Two alert sources:

* TEViD: the diagnostician's calibrated rule (``calibration.consecutive`` consecutive
  non-abstained predictions with ``p_c >= tau_c``), ``reason="diagnosis"``;
* non-finite loss: ``nan_patience`` consecutive NaN/inf losses passed to :meth:`TrialMonitor.step`
  raise a confirmed Instability with ``reason="non-finite loss"`` and confidence 1, whatever TEViD
  says. Optuna's Median/Percentile/Patient/Wilcoxon pruners skip NaN values and let such trials
  run to the end; divergence is exactly what must stop them.

Diagnosis runs on a background thread by default (``asynchronous=True``): a captured frame is
handed to a single worker and training goes on while TEViD reads the window, so on a machine
with a spare core (or a GPU) its cost leaves the training step. At most one diagnosis is in
flight: the next capture step, :meth:`TrialMonitor.epoch_end`, :meth:`TrialMonitor.metrics`,
the result properties and the end of the ``with`` block wait for it. Every diagnosis is
therefore recorded before the epoch's report, in capture order, exactly as synchronously; only
:meth:`TrialMonitor.step` returns it one capture later (and the non-finite-loss rule below does
not wait at all).

Monitoring never breaks the user's trial: the first exception raised inside capture, diagnosis or
the attribute write is logged once (with its traceback), the monitor removes its hooks and turns
itself off, and ``tevid_error`` tells the pruner to fall back to its wrapped pruner.

Example:
    >>> import tempfile, torch, optuna
    >>> from data_factory.architectures import small_cnn
    >>> from tevid_hpo.testing import train_toy_diagnostician
    >>> diag = Diagnostician.from_pretrained(train_toy_diagnostician(tempfile.mkdtemp()),
    ...                                      device="cpu")              # doctest: +SKIP
    >>> def objective(trial):
    ...     model = small_cnn(in_channels=1)
    ...     opt = torch.optim.SGD(model.parameters(), lr=trial.suggest_float("lr", 1e-3, 100, log=True))
    ...     with TrialMonitor(model, trial, diagnostician=diag) as mon:
    ...         for epoch in range(3):
    ...             for _ in range(20):
    ...                 x, y = torch.randn(32, 1, 16, 16), torch.randint(0, 10, (32,))
    ...                 loss = torch.nn.functional.cross_entropy(model(x), y)
    ...                 opt.zero_grad(); loss.backward(); mon.step(loss=loss.item()); opt.step()
    ...             mon.epoch_end(epoch)
    ...             trial.report(-loss.item(), epoch)
    ...             if trial.should_prune():
    ...                 raise optuna.TrialPruned()
    ...     return -loss.item()
    >>> from tevid_hpo.pruners import TEViDPruner
    >>> study = optuna.create_study(direction="maximize", pruner=TEViDPruner())   # doctest: +SKIP
    >>> study.optimize(objective, n_trials=4)                                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import torch
from torch import nn

from core_models.telemetry import live_scalars
from data_factory.capture import StateCapture
from data_factory.labels import INSTABILITY
from data_factory.privacy import DPTelemetry
from tevid_hpo.diagnostician import Diagnosis, Diagnostician
from tevid_hpo.loggers import DiagnosisLogger

__all__ = ["ERROR_ATTR", "FORMAT_VERSION", "NONFINITE_LOSS", "USER_ATTR", "TrialMonitor"]

logger = logging.getLogger(__name__)

#: Trial user attribute holding the compact diagnosis (see the module docstring).
USER_ATTR = "tevid"
#: Trial user attribute set when monitoring failed; the pruner then defers to ``wrapped``.
ERROR_ATTR = "tevid_error"
#: Version of the ``USER_ATTR`` layout; a pruner ignores layouts it does not know.
FORMAT_VERSION = 1
#: ``reason`` of an alert raised by the non-finite-loss rule.
NONFINITE_LOSS = "non-finite loss"
#: Consecutive failed writes of ``USER_ATTR`` after which monitoring is switched off (each
#: failure before that is retried at the next sync: storage outages are often brief).
WRITE_ATTEMPTS = 3

_DIGITS = 4


class TrialLike(Protocol):
    """What the monitor needs from a trial: ``optuna.Trial`` (or ``FixedTrial``) fits."""

    def set_user_attr(self, key: str, value: Any) -> None: ...


def _num(x: float | None) -> float | None:
    """Rounded float, or ``None`` for missing/non-finite values (JSON has no NaN)."""
    if x is None:
        return None
    v = float(x)
    return round(v, _DIGITS) if math.isfinite(v) else None


def history_entry(d: Diagnosis) -> dict[str, Any]:
    """The compact, JSON-safe record of one diagnosis that monitors keep in their history.

    Example:
        >>> from tevid_hpo.diagnostician import Diagnosis
        >>> history_entry(Diagnosis(step=10, epoch=0, probs={"Healthy": 0.123456}, vacuity=0.2,
        ...                         label="Healthy", alert=None, confidence=0.12))["probs"]
        {'Healthy': 0.1235}
    """
    return {"step": d.step, "epoch": d.epoch, "label": d.label,
            "probs": {c: _num(p) for c, p in d.probs.items()}, "vacuity": _num(d.vacuity),
            "alert": d.alert, "finite": d.finite}


def alert_entry(d: Diagnosis) -> dict[str, Any]:
    """The stored record of the confirmed alert ``d`` raised (``d.alert`` must be set)."""
    return {"label": d.alert, "step": d.step, "epoch": d.epoch,
            "confidence": _num(d.probs.get(d.alert)), "vacuity": _num(d.vacuity),
            "reason": "diagnosis"}


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class TrialMonitor:
    """Capture + streaming TEViD diagnosis of one trial, published on the Optuna trial.

    Use it as a context manager around the training loop; call :meth:`step` after every
    ``loss.backward()`` and, optionally, :meth:`epoch_end` at epoch boundaries (before
    ``trial.report`` / ``trial.should_prune``, so the pruner sees the epoch's last diagnosis).

    Args:
        model: the model being trained (any ``nn.Module`` with at least three capturable layers).
        trial: an ``optuna.Trial`` (anything with ``set_user_attr``), or ``None`` to only
            diagnose (e.g. for Ray Tune, which reads :meth:`metrics`).
        every: capture cadence in optimisation steps; ``None`` takes the diagnostician's
            training cadence (``profile.every``: 10 for the cpu/tiny profiles, 50 for paper).
            Frames taken at another cadence show dynamics at another speed than TEViD learned.
        diagnostician: a :class:`Diagnostician`; ``None`` loads the shipped default checkpoint
            (:meth:`Diagnostician.from_pretrained`). The monitor resets it on entry and owns its
            streaming state while active: use one diagnostician per concurrently running trial.
        device: where the default diagnostician runs; ``"auto"`` = the model's device (the
            trial's own). Ignored when ``diagnostician`` is given (it keeps its device).
        layers: three module names to capture instead of the automatic 25/50/75 % choice.
        privacy: a :class:`~data_factory.privacy.DPTelemetry` (one per trial): capture keeps only
            clipped, noised maps (``docs/privacy.md``), and ε at its δ is published as
            ``"privacy"`` in the trial attribute, ``"epsilon"`` in every history entry and
            ``tevid_epsilon`` in :meth:`metrics`.
        history_size: diagnoses kept in the trial attribute (the in-process :attr:`history`
            keeps all of them).
        nan_patience: consecutive non-finite losses that confirm Instability. The default 3
            mirrors the diagnostician's 3-consecutive rule: a single NaN/inf loss can be a
            transient that the loop survives (e.g. a skipped step under dynamic loss scaling),
            whereas without such protection one NaN poisons the weights and every later loss is
            NaN too, so waiting two more steps costs two steps.
        sync_every: also write the trial attribute every this many diagnoses until the first
            :meth:`epoch_end` (for loops that never call it; after it, one write per epoch).
        asynchronous: diagnose on a background thread (see the module docstring); ``False``
            diagnoses inside :meth:`step`, which then returns the step's own diagnosis.
        loggers: objects with ``log(diagnosis, step)`` (:mod:`tevid_hpo.loggers`: TensorBoard,
            MLflow), called with every recorded diagnosis on the training thread. One that
            raises is dropped with a warning; monitoring goes on.
        optimizer: read only for its learning rate at capture steps. Frames get
            :attr:`~data_factory.frames.Frame.scalars` (:func:`core_models.telemetry.
            live_scalars`), which a telemetry diagnostician reads; none under ``privacy``
            (they are not noised).

    Raises:
        FileNotFoundError: ``diagnostician=None`` and no default checkpoint is installed. That
            is a setup problem, reported here rather than silently disabling every trial.
    """

    def __init__(self, model: nn.Module, trial: TrialLike | None = None, every: int | None = None,
                 diagnostician: Diagnostician | None = None, device: str | torch.device = "auto",
                 *, layers: Sequence[str] | None = None, privacy: DPTelemetry | None = None,
                 history_size: int = 16,
                 nan_patience: int = 3, sync_every: int = 10, asynchronous: bool = True,
                 loggers: Sequence[DiagnosisLogger] = (),
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        # A pruner that cannot serve this trial's study (TEViDPruner in a multi-objective study)
        # says so now, not after a run that no pruner will ever be asked about.
        check_study = getattr(getattr(getattr(trial, "study", None), "pruner", None),
                              "check_study", None)
        if callable(check_study):
            check_study(trial.study)  # type: ignore[union-attr]
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or every < 1):
            raise ValueError(f"every must be None (the diagnostician's cadence) or an int >= 1, "
                             f"got {every!r}")
        for name, value in (("history_size", history_size), ("nan_patience", nan_patience),
                            ("sync_every", sync_every)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if diagnostician is None:
            where = _model_device(model) if device == "auto" else device
            try:
                diagnostician = Diagnostician.from_pretrained(device=where)
            except FileNotFoundError as err:
                raise FileNotFoundError(
                    f"TrialMonitor needs a trained diagnostician and none is installed: {err} "
                    "Pass diagnostician=Diagnostician.from_pretrained(PATH).") from err
        self.model = model
        self.trial = trial
        self.diagnostician = diagnostician
        self.history_size = int(history_size)
        self.nan_patience = int(nan_patience)
        self.sync_every = int(sync_every)
        profile = diagnostician.profile
        self.every = int(every if every is not None else profile.every)
        self.privacy = privacy
        self._capture = StateCapture(model, every=self.every, frame_size=profile.frame_size,
                                     layers=layers, privacy=privacy)
        self._history: list[dict[str, Any]] = []
        self._alerts: dict[str, dict[str, Any]] = {}   # insertion order = time order
        self._latest: Diagnosis | None = None
        self._epoch = 0
        self._epochs_done: int | None = None
        self._nan_streak = 0
        self.optimizer = optimizer
        if getattr(getattr(diagnostician, "model", None), "telemetry", 0) and (
                optimizer is None or privacy is not None):
            # A telemetry model never saw a run whose scalars are unknown in training: say so
            # once, at set-up, rather than let it judge the run on a state it does not know.
            logger.warning(
                "this diagnostician reads the training scalars (loss, lr, gradient norm), but %s; "
                "it then reads them as unknown, which it was not trained on",
                "privacy= releases none of them" if privacy is not None
                else "no optimizer= was given, so the learning rate is unknown: pass "
                     "TrialMonitor(..., optimizer=opt)")
        self._losses: list[float] = []   # losses since the previous capture
        self._since_sync = 0
        self._write_failures = 0   # consecutive failed attribute writes
        self._error: str | None = None
        self._active = False
        self._started = False    # entered at least once (re-entry keeps the stream going)
        self._restored = False   # load_state_dict() supplied the diagnostician's window
        self.asynchronous = bool(asynchronous)
        self._worker: ThreadPoolExecutor | None = None
        self._pending: Future[Diagnosis] | None = None   # at most one diagnosis in flight
        for sink in loggers:
            if not callable(getattr(sink, "log", None)):
                raise TypeError(f"a logger needs a log(diagnosis, step) method, got "
                                f"{type(sink).__name__}")
        self.loggers: list[DiagnosisLogger] = list(loggers)

    # ------------------------------------------------------------------ context
    def __enter__(self) -> TrialMonitor:
        if self._active:
            raise RuntimeError("TrialMonitor is already active")
        self._active = True
        if self._error is None:
            try:
                if not (self._started or self._restored):
                    self.diagnostician.reset()
                self._capture.__enter__()
                if self.asynchronous:
                    self._worker = ThreadPoolExecutor(max_workers=1,
                                                      thread_name_prefix="tevid-diagnosis")
            except Exception as err:
                self._fail(err, "attaching the capture hooks")
        self._started = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._drain()
        self._active = False
        self._capture.close()
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        if self._error is None:
            self._sync()

    # ------------------------------------------------------------------ training-loop calls
    def step(self, loss: float | torch.Tensor | None = None, epoch: int | None = None
             ) -> Diagnosis | None:
        """Close one optimisation step (call after ``loss.backward()``).

        Args:
            loss: this step's training loss, checked for NaN/inf. Pass the Python float you
                already have (``loss.item()``); a CUDA tensor would be synchronised here.
            epoch: the current epoch, if the loop does not call :meth:`epoch_end`.

        Returns:
            Synchronous: the :class:`Diagnosis` on capture steps, else ``None``. Asynchronous:
            the previous capture's diagnosis on capture steps (it is awaited there), else
            ``None``. Always ``None`` once disabled.
        """
        if not self._active:
            raise RuntimeError("TrialMonitor.step() called outside `with TrialMonitor(...)`")
        if self._error is not None:
            return None
        try:
            if epoch is not None:
                self._epoch = int(epoch)
            step = self._capture.step_count
            if loss is not None:
                self._check_loss(loss, step)
                self._losses.append(float(loss))
            frame = self._capture.step(epoch=self._epoch)
            if frame is None:
                return None
            losses, self._losses = self._losses, []   # the loss mean restarts at each capture
            if self.privacy is None:   # scalars are not noised: none leave a private trial
                frame = dataclasses.replace(frame, scalars=live_scalars(losses, self.model,
                                                                        self.optimizer))
            if self._worker is None:
                diagnosis = self.diagnostician.update(frame)
                self._record(diagnosis)
                return diagnosis
            previous = self._collect()
            self._pending = self._worker.submit(self.diagnostician.update, frame)
            return previous
        except Exception as err:
            self._fail(err, f"step {self._capture.step_count}")
            return None

    def epoch_end(self, epoch: int | None = None) -> None:
        """Mark the end of ``epoch`` (default: the current one) and publish to the trial."""
        self._epoch = (self._epoch if epoch is None else int(epoch)) + 1
        self._epochs_done = self._epoch
        self._drain()
        if self._error is None:
            self._sync()

    # ------------------------------------------------------------------ results
    @property
    def alert(self) -> str | None:
        """The run's first confirmed alert label (latched), or ``None``."""
        self._drain()
        return next(iter(self._alerts), None)

    @property
    def alerts(self) -> dict[str, dict[str, Any]]:
        """First confirmed alert of each label: ``{label: {step, epoch, confidence, ...}}``."""
        self._drain()
        return {k: dict(v) for k, v in self._alerts.items()}

    @property
    def last(self) -> Diagnosis | None:
        """The latest diagnosis, or ``None`` before the first capture step."""
        self._drain()
        return self._latest

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every diagnosis of the run as a compact dict (step, epoch, label, probs, vacuity,
        alert, finite); the trial attribute keeps only the last ``history_size``."""
        self._drain()
        return list(self._history)

    @property
    def error(self) -> str | None:
        """Why monitoring turned itself off, or ``None`` while it works."""
        return self._error

    def metrics(self) -> dict[str, int | float | str]:
        """A flat dict of plain Python numbers and strings (Ray Tune results, loggers).

        Keys: ``tevid_step``, ``tevid_epoch`` (``-1`` before the first diagnosis),
        ``tevid_label``, ``tevid_alert`` (``""`` for none), ``tevid_alerted`` (0/1),
        ``tevid_vacuity``, ``tevid_p_<label>`` per known class, ``tevid_error`` (``""``). Before
        the first diagnosis the probabilities are the uniform prior and the vacuity is 1 (no
        evidence), so the key set never changes. With ``privacy``, ``tevid_epsilon`` (ε spent so
        far at the mechanism's δ; ``inf`` for a noiseless mechanism) is added.

        Example:
            >>> import warnings, torch
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")
            ...     diag = Diagnostician.from_pretrained("tiny", device="cpu")   # untrained
            >>> mon = TrialMonitor(torch.nn.Sequential(*[torch.nn.Linear(4, 4)] * 3),
            ...                    diagnostician=diag)
            >>> m = mon.metrics()
            >>> m["tevid_alert"], m["tevid_vacuity"], m["tevid_p_Healthy"]
            ('', 1.0, 0.2)
        """
        self._drain()
        d = self._latest
        known = self.diagnostician.known_labels
        probs = d.probs if d is not None else {c: 1.0 / len(known) for c in known}
        out: dict[str, int | float | str] = {
            "tevid_step": d.step if d is not None else -1,
            "tevid_epoch": d.epoch if d is not None and d.epoch is not None else -1,
            "tevid_label": d.label if d is not None else "",
            "tevid_alert": self.alert or "",
            "tevid_alerted": int(self.alert is not None),
            "tevid_vacuity": float(d.vacuity) if d is not None else 1.0,
        }
        out.update({f"tevid_p_{c}": float(probs.get(c, 0.0)) for c in known})
        if self.privacy is not None:
            out["tevid_epsilon"] = float(self.privacy.epsilon)
        out["tevid_error"] = self._error or ""
        return out

    # ------------------------------------------------------------------ pause / resume
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: capture (step counter, layers, frame normalisation), the
        diagnostician's window and alert streaks, alerts and history. With the model's and
        optimizer's own state it resumes the stream exactly (e.g. a Ray Tune PAUSE)."""
        self._drain()
        return {
            "version": FORMAT_VERSION,
            "capture": self._capture.state_dict(),
            "diagnostician": self.diagnostician.state_dict(),
            "history": list(self._history),
            "alerts": self.alerts,
            "latest": self._latest.to_dict() if self._latest is not None else None,
            "epoch": self._epoch,
            "epochs_done": self._epochs_done,
            "nan_streak": self._nan_streak,
            "losses_since_capture": list(self._losses),
            "error": self._error,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; call before entering the ``with`` block."""
        if self._active:
            raise RuntimeError("load_state_dict must be called before entering the monitor")
        if state.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported TrialMonitor state version {state.get('version')!r}")
        self._capture.load_state_dict(state["capture"])
        self.diagnostician.load_state_dict(state["diagnostician"])
        self._history = [dict(e) for e in state["history"]]
        self._alerts = {k: dict(v) for k, v in state["alerts"].items()}
        latest = state.get("latest")
        self._latest = Diagnosis(**latest) if latest is not None else None
        self._epoch = int(state["epoch"])
        self._epochs_done = state.get("epochs_done")
        self._nan_streak = int(state.get("nan_streak", 0))
        self._losses = [float(v) for v in state.get("losses_since_capture", [])]
        self._error = state.get("error")
        self._restored = True

    # ------------------------------------------------------------------ internals
    def _check_loss(self, loss: float | torch.Tensor, step: int) -> None:
        value = float(loss)
        if math.isfinite(value):
            self._nan_streak = 0
            return
        self._nan_streak += 1
        if self._nan_streak >= self.nan_patience and INSTABILITY not in self._alerts:
            self._add_alert({"label": INSTABILITY, "step": step, "epoch": self._epoch,
                             "confidence": 1.0, "vacuity": None, "reason": NONFINITE_LOSS,
                             "loss": repr(value)})

    def _collect(self) -> Diagnosis | None:
        """Wait for the diagnosis in flight, record it and return it (``None`` if none)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        diagnosis = pending.result()   # re-raises the worker's exception here, in the trial
        self._record(diagnosis)
        return diagnosis

    def _drain(self) -> None:
        """:meth:`_collect` for callers outside :meth:`step`, with its failure handling."""
        if self._pending is None or self._error is not None:
            return
        try:
            self._collect()
        except Exception as err:
            self._fail(err, f"diagnosing step {self._capture.step_count - 1}")

    def _record(self, d: Diagnosis) -> None:
        self._latest = d
        self._history.append(history_entry(d))
        if self.privacy is not None:   # ε spent up to the frame this diagnosis read
            self._history[-1]["epsilon"] = _num(self.privacy.epsilon_at(d.step))
        self._publish(d)
        if d.alert is not None and d.alert not in self._alerts:
            self._add_alert(alert_entry(d))
            return
        self._since_sync += 1
        # Once the loop calls epoch_end, that write suffices: storage cost stays one write per
        # epoch (plus alerts), however many steps an epoch has.
        if self._since_sync >= self.sync_every and self._epochs_done is None:
            self._sync()

    def _publish(self, d: Diagnosis) -> None:
        for sink in list(self.loggers):
            try:
                sink.log(d, d.step)
            except Exception as err:   # a tracker's failure must not end the monitoring
                self.loggers.remove(sink)
                logger.warning("TEViD logger %s dropped%s: %r", type(sink).__name__,
                               self._trial_suffix(), err, exc_info=err)

    def _add_alert(self, record: dict[str, Any]) -> None:
        self._alerts[record["label"]] = record
        logger.info("TEViD alert %s at step %s (epoch %s, %s)%s", record["label"], record["step"],
                    record["epoch"], record["reason"], self._trial_suffix())
        self._sync()   # at once: the next trial.should_prune() must see it

    def _payload(self) -> dict[str, Any]:
        latest = self._history[-1] if self._history else None
        return {"version": FORMAT_VERSION, "every": self.every,
                "step": self._capture.step_count - 1, "epoch": self._epoch,
                "epochs_done": self._epochs_done, "n_diagnoses": len(self._history),
                "alert": self.alert, "alerts": self.alerts, "latest": latest,
                "history": self._history[-self.history_size:],
                **({"privacy": self.privacy.report().to_dict()} if self.privacy is not None else {})}

    def _sync(self) -> None:
        self._since_sync = 0
        if self.trial is None:
            return
        try:
            self.trial.set_user_attr(USER_ATTR, self._payload())
            self._write_failures = 0
        except Exception as err:
            # A storage outage is often brief (a database restart): keep diagnosing and write
            # the whole payload again at the next sync; only a storage that keeps failing ends
            # the monitoring.
            self._write_failures += 1
            if self._write_failures >= WRITE_ATTEMPTS:
                self._fail(err, f"writing the diagnosis to the trial, {WRITE_ATTEMPTS} times")
            else:
                logger.warning("TEViD could not store its diagnosis%s (%r); retrying at the "
                               "next sync", self._trial_suffix(), err)

    def _fail(self, err: BaseException, where: str) -> None:
        if self._error is not None:
            return
        self._pending = None
        self._error = f"{type(err).__name__}: {err} (while {where})"
        logger.warning("TEViD monitoring disabled%s: %s. The trial continues; the pruner falls "
                       "back to its wrapped pruner.", self._trial_suffix(), self._error,
                       exc_info=err)
        try:
            self._capture.close()
        except Exception as close_err:  # pragma: no cover - close() only removes hooks
            logger.debug("removing the capture hooks failed: %r", close_err)
        if self.trial is not None:
            try:
                self.trial.set_user_attr(ERROR_ATTR, self._error)
            except Exception as write_err:   # the storage itself may be what failed
                logger.debug("could not record %s on the trial: %r", ERROR_ATTR, write_err)

    def _trial_suffix(self) -> str:
        number = getattr(self.trial, "number", None)
        return f" for trial {number}" if number is not None else ""
