"""Send every diagnosis to an experiment tracker: one hook on the monitor, one class per tracker.

:class:`~tevid_hpo.monitor.TrialMonitor` takes ``loggers=[...]``: objects with a
``log(diagnosis, step)`` method (:class:`DiagnosisLogger`). The monitor calls each of them once
per recorded diagnosis, in capture order, on the training thread (also when the diagnosis itself
ran on the background thread), so a logger needs no locking. The Lightning and Hugging Face
callbacks pass their ``loggers`` argument through to the monitor they create, so every
integration logs the same numbers the same way.

Every logger writes the flat numbers of :func:`scalars` under the ``tevid/`` prefix:

=====================  ==========================================================================
``tevid/label``        index of the diagnosed label in :data:`~data_factory.labels.LABELS`
                       (0 Healthy, 1 Overfitting, 2 Instability, 3 Forgetting, 4 ConceptBias,
                       5 Unknown = abstained)
``tevid/p_<label>``    calibrated probability of each known class (``tevid/p_instability``, …)
``tevid/vacuity``      evidential vacuity; above the checkpoint's ``tau_u`` the diagnosis abstains
``tevid/alert``        index of the label confirmed at this diagnosis, 0 when none (Healthy
                       never alerts)
``tevid/alerted``      1 from the run's first confirmed alert on (latched per logger), else 0
``tevid/finite``       0 when the newest frame held NaN/inf
=====================  ==========================================================================

Two trackers are provided; anything with ``log(diagnosis, step)`` works too:

* :class:`TensorBoardLogger` — a ``torch.utils.tensorboard.SummaryWriter`` (or tensorboardX's):
  one scalar per key, and the first alert of each label as a text entry ``tevid/alert``;
* :class:`MLflowLogger` — an MLflow run: the scalars as metrics at ``step``, and the first alert
  of each label as the run tag ``tevid.alert.<label>`` (its step and confidence).

A logger that raises is dropped by the monitor with one warning; diagnosis and pruning go on.

Example:
    >>> import tempfile
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> from tevid_hpo.diagnostician import Diagnosis
    >>> d = Diagnosis(step=30, epoch=0, probs={"Healthy": 0.1, "Instability": 0.9},
    ...               vacuity=0.2, label="Instability", alert="Instability", confidence=0.9)
    >>> scalars(d)["tevid/label"], scalars(d)["tevid/p_instability"], scalars(d)["tevid/alert"]
    (2.0, 0.9, 2.0)
    >>> with SummaryWriter(tempfile.mkdtemp()) as writer:
    ...     TensorBoardLogger(writer).log(d, step=30)
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

from data_factory.labels import LABELS
from tevid_hpo.diagnostician import Diagnosis

__all__ = ["PREFIX", "DiagnosisLogger", "MLflowLogger", "TensorBoardLogger", "alert_text",
           "label_index", "scalars"]

logger = logging.getLogger(__name__)

#: Namespace of every key the loggers and the training-framework callbacks write.
PREFIX = "tevid/"


@runtime_checkable
class DiagnosisLogger(Protocol):
    """What :class:`~tevid_hpo.monitor.TrialMonitor` calls with each diagnosis it records.

    ``step`` is the optimisation step of the diagnosis (``diagnosis.step``), the x-axis a
    tracker plots it against.
    """

    def log(self, diagnosis: Diagnosis, step: int) -> None: ...


def label_index(label: str | None) -> int:
    """Numeric code of a label for trackers that store numbers only: its index in ``LABELS``,
    0 (Healthy) for ``None`` (no alert), -1 for a label the package does not know.

    Example:
        >>> label_index("Instability"), label_index(None), label_index("Unknown")
        (2, 0, 5)
    """
    if label is None:
        return 0
    return LABELS.index(label) if label in LABELS else -1


def scalars(diagnosis: Diagnosis, prefix: str = PREFIX) -> dict[str, float]:
    """The flat numbers of one diagnosis (see the module docstring for the keys).

    ``tevid/alerted`` is not included: it is a property of the run, not of one diagnosis
    (each logger latches it).

    Example:
        >>> d = Diagnosis(step=0, epoch=0, probs={"Healthy": 0.75, "Overfitting": 0.25},
        ...               vacuity=0.5, label="Unknown", alert=None, confidence=0.75,
        ...               abstained=True)
        >>> scalars(d)
        {'tevid/label': 5.0, 'tevid/vacuity': 0.5, 'tevid/alert': 0.0, 'tevid/finite': 1.0, \
'tevid/p_healthy': 0.75, 'tevid/p_overfitting': 0.25}
    """
    out = {f"{prefix}label": float(label_index(diagnosis.label)),
           f"{prefix}vacuity": float(diagnosis.vacuity),
           f"{prefix}alert": float(label_index(diagnosis.alert)),
           f"{prefix}finite": float(bool(diagnosis.finite))}
    out.update({f"{prefix}p_{c.lower()}": float(p) for c, p in diagnosis.probs.items()})
    return out


def alert_text(diagnosis: Diagnosis) -> str:
    """One line for the alert ``diagnosis`` confirmed (``diagnosis.alert`` must be set).

    Example:
        >>> alert_text(Diagnosis(step=30, epoch=1, probs={"Instability": 0.91234},
        ...                      vacuity=0.2, label="Instability", alert="Instability",
        ...                      confidence=0.91))
        'Instability confirmed at step 30 (epoch 1, p=0.9123, vacuity 0.2)'
    """
    p = diagnosis.probs.get(diagnosis.alert or "", float("nan"))
    return (f"{diagnosis.alert} confirmed at step {diagnosis.step} (epoch {diagnosis.epoch}, "
            f"p={p:.4g}, vacuity {diagnosis.vacuity:.4g})")


class _Latch:
    """The per-run alert state every logger keeps: which labels have been announced."""

    def __init__(self) -> None:
        self.announced: set[str] = set()

    def values(self, diagnosis: Diagnosis, prefix: str) -> tuple[dict[str, float], bool]:
        """The scalars plus ``alerted``; whether this diagnosis confirms a new alert."""
        new = diagnosis.alert is not None and diagnosis.alert not in self.announced
        if new:
            self.announced.add(diagnosis.alert)   # type: ignore[arg-type]
        values = scalars(diagnosis, prefix)
        values[f"{prefix}alerted"] = float(bool(self.announced))
        return values, new


class TensorBoardLogger:
    """Diagnoses as TensorBoard scalars through a ``SummaryWriter``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or ``tensorboardX``'s; anything
            with ``add_scalar(tag, value, global_step)`` and ``add_text(tag, text,
            global_step)``). The caller owns it (and closes it).
        prefix: tag prefix.
        flush_on_alert: flush the writer when an alert is confirmed, so a dashboard shows it
            even if the process is killed right after.

    Example:
        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> with SummaryWriter(tempfile.mkdtemp()) as writer:
        ...     tb = TensorBoardLogger(writer)
        >>> tb.prefix
        'tevid/'
    """

    def __init__(self, writer: Any, prefix: str = PREFIX, flush_on_alert: bool = True) -> None:
        if not hasattr(writer, "add_scalar"):
            raise TypeError(f"writer must be a SummaryWriter (with add_scalar), got "
                            f"{type(writer).__name__}")
        self.writer = writer
        self.prefix = prefix
        self.flush_on_alert = flush_on_alert
        self._latch = _Latch()

    def log(self, diagnosis: Diagnosis, step: int) -> None:
        """Write one diagnosis at ``step``."""
        values, new = self._latch.values(diagnosis, self.prefix)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
        if new:
            self.writer.add_text(f"{self.prefix}alert", alert_text(diagnosis), global_step=step)
            if self.flush_on_alert:
                self.writer.flush()


class MLflowLogger:
    """Diagnoses as MLflow metrics of one run.

    Args:
        run_id: the MLflow run to log to; ``None`` takes the run active when the logger is
            created (``mlflow.start_run()``), so it keeps logging to that run even if another one
            becomes active later.
        tracking_uri: the tracking server or store; ``None`` uses MLflow's current one
            (``mlflow.set_tracking_uri`` / ``MLFLOW_TRACKING_URI``).
        prefix: metric name prefix.

    Raises:
        ValueError: ``run_id=None`` and no MLflow run is active.

    Example:
        >>> MLflowLogger()                      # outside mlflow.start_run()
        Traceback (most recent call last):
        ...
        ValueError: MLflowLogger needs a run: call mlflow.start_run() first or pass run_id=
    """

    def __init__(self, run_id: str | None = None, tracking_uri: str | None = None,
                 prefix: str = PREFIX) -> None:
        import mlflow
        from mlflow import MlflowClient

        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise ValueError("MLflowLogger needs a run: call mlflow.start_run() first or "
                                 "pass run_id=")
            run_id = active.info.run_id
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)
        self.prefix = prefix
        self._latch = _Latch()

    def log(self, diagnosis: Diagnosis, step: int) -> None:
        """Log one diagnosis at ``step`` (one batched request)."""
        import time

        from mlflow.entities import Metric

        values, new = self._latch.values(diagnosis, self.prefix)
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step)
                                                    for k, v in values.items()])
        if new:
            self.client.set_tag(self.run_id, f"tevid.alert.{diagnosis.alert}",
                                alert_text(diagnosis))
