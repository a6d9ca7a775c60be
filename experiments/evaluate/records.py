"""From runs to :class:`~core_models.metrics.RunPrediction` records: each method's streaming
scores with the run's truth and facts (:func:`predictions`, :func:`tevid_run_scores`), put in
epochs (:func:`retime`); and what the records say per step and per run (:func:`step_labels`,
:func:`run_level_label`, :func:`premature_detections`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from core_models.baselines import run_id_of
from core_models.baselines.base import RunScores
from core_models.baselines.features import capture_grid
from core_models.clips import ClipDataset
from core_models.metrics import AlertSummary, RunPrediction
from core_models.train import predict
from data_factory.interventions import fault_step
from data_factory.labelers.rules import RunLabel
from data_factory.labels import HEALTHY, KNOWN_LABELS, LABELS, UNKNOWN
from experiments.evaluate.leakage import _meta
from tevid_hpo.diagnostician import Diagnostician

_HEALTHY_COL = KNOWN_LABELS.index(HEALTHY)


def run_facts(run: Any) -> dict[str, Any]:
    """The metadata the tables slice by (copied into every :class:`RunPrediction`).

    Example:
        >>> from types import SimpleNamespace as R
        >>> facts = run_facts(R(meta={"arch": "mixer", "intervention": {
        ...     "kind": "loader_stall", "novel": True, "start_step": 240}}))
        >>> facts["intervention"], facts["fault_step"]
        ('loader_stall', 240)
    """
    meta = _meta(run)
    iv = meta.get("intervention") or {}
    return {"arch": meta.get("arch"), "arch_family": meta.get("arch_family"),
            "dataset": meta.get("dataset"), "optimizer": meta.get("optimizer"),
            "split": meta.get("split"), "intervention": iv.get("kind"),
            "novel": bool(meta.get("novel", iv.get("novel", False))),
            "fault_step": fault_step(iv)}


def premature_detections(alerts: AlertSummary, runs: Sequence[RunPrediction]) -> frozenset[str]:
    """Anomalous runs whose first alert came before their fault began.

    A fault that starts mid-run (a task switch, a learning-rate jump, a novel family such as a
    loader stall) leaves the run healthy until its ``fault_step`` (:func:`run_facts`); an alert
    before then cannot have seen it, so it is a false alarm that happens to land on a run that
    fails later. The paper's protocol counts it as a detection with a long lead; the evaluation
    reports how many there are and the lead without them. ``alerts`` must come from
    :func:`evaluate_alerts` on these runs (it records each run's alert step).

    Example:
        >>> import numpy as np
        >>> from core_models.metrics import evaluate_alerts
        >>> p = np.tile([0.1, 0, 0.9, 0, 0], (4, 1))
        >>> r = RunPrediction("r", "Instability", [0, 10, 20, 30], range(4), p, [0] * 4,
        ...                   onset_step=30, meta={"fault_step": 25})
        >>> sorted(premature_detections(evaluate_alerts([r], 0.5), [r]))  # alert at step 20
        ['r']
    """
    if runs and not alerts.alert_steps:
        raise ValueError("premature_detections: the alert summary records no alert steps")
    out: set[str] = set()
    for r in runs:
        step, fault = alerts.alert_steps.get(r.run_id), r.meta.get("fault_step")
        if r.is_anomalous and step is not None and fault is not None and step < fault:
            out.add(r.run_id)
    return frozenset(out)


def retime(pred: RunPrediction, steps_per_epoch: float | None) -> RunPrediction:
    """Express every time of ``pred`` in epochs as ``step / steps_per_epoch``.

    Frame epochs and the labels' ``onset_epoch`` / ``fire_epoch`` are whole epoch *indices*;
    a lead measured between two of them is quantised to whole epochs and off by up to one. Steps
    are exact, so diagnoses and the rule's onset and firing times are all put on the same
    continuous scale. Without ``steps_per_epoch`` the record is returned unchanged.

    Example:
        >>> import numpy as np
        >>> p = RunPrediction("r", "Instability", [0, 50, 100], [0, 0, 1],
        ...                   np.tile([0.5, 0, 0.5, 0, 0], (3, 1)), [0.0] * 3,
        ...                   onset_step=50, onset_epoch=0, fire_step=100, fire_epoch=1)
        >>> q = retime(p, 80)
        >>> q.epochs.tolist(), q.onset_epoch, q.fire_epoch
        ([0.0, 0.625, 1.25], 0.625, 1.25)
    """
    if not steps_per_epoch:
        return pred
    spe = float(steps_per_epoch)

    def epoch(step: int | None) -> float | None:
        return None if step is None else step / spe

    return dataclasses.replace(pred, epochs=pred.steps / spe, onset_epoch=epoch(pred.onset_step),
                               fire_epoch=epoch(pred.fire_step))


def tevid_run_scores(diag: Diagnostician, run: Any, name: str, batch_size: int = 64,
                     device: str | torch.device = "cpu") -> RunScores:
    """TEViD's streaming diagnoses of one run, as :class:`RunScores` (vacuity in ``extras``).

    One clip per capture step — the ``W`` frames ending there, left-padded with the first frame
    (:class:`~core_models.clips.ClipDataset`), exactly what the streaming Diagnostician sees — run
    through :func:`core_models.train.predict` with the checkpoint's calibrated temperature. The
    diagnoses before the burn-in (:attr:`Diagnostician.evidence_frames`) are withheld as they are
    when streaming: uniform probabilities, vacuity 1, anomaly score 0.
    """
    model = diag.model
    ds = ClipDataset([run], None, window=model.profile.window, stride=1,
                     telemetry=bool(getattr(model, "telemetry", 0)))   # steps.csv → features
    out = predict(model, ds, batch_size=batch_size, device=str(device),
                  temperature=float(diag.calibration.temperature))
    probs = np.clip(out["probs"].astype(np.float64), 0.0, 1.0)
    vacuity = np.clip(out["vacuity"].astype(np.float64), 0.0, 1.0)
    withheld = slice(0, diag.evidence_frames - 1)
    probs[withheld], vacuity[withheld] = 1.0 / probs.shape[1], 1.0
    scores = np.clip(1.0 - probs[:, _HEALTHY_COL], 0.0, 1.0)
    scores[withheld] = 0.0
    grid = capture_grid(run)
    return RunScores(name, run_id_of(run), grid.steps, grid.epochs, scores, probs,
                     extras={"vacuity": vacuity})


def predictions(score_run: Callable[[Any], RunScores], runs: Sequence[Any],
                labels: Mapping[str, RunLabel], evidential: bool = False
                ) -> tuple[list[RunPrediction], bool]:
    """Score every run and attach its truth; returns ``(records, every run had classes)``.

    The records come from :meth:`RunScores.to_prediction` (event labels anchored at the onset,
    onset / firing times from the :class:`RunLabel`) and are put in epochs as
    ``step / steps_per_epoch`` by :func:`retime`. ``evidential`` takes the per-step vacuity
    from ``extras["vacuity"]`` (TEViD); other methods never abstain (vacuity 0).
    """
    out, classes = [], True
    for run in runs:
        s = score_run(run)
        classes &= s.has_classes
        vacuity = s.extras.get("vacuity") if evidential else None
        pred = s.to_prediction(labels[run_id_of(run)], vacuity=vacuity, meta=run_facts(run))
        out.append(retime(pred, _meta(run).get("steps_per_epoch")))
    return out, classes


def step_labels(pred: RunPrediction, tau_u: float | None) -> np.ndarray:
    """Per-step diagnosis label: argmax class, ``Unknown`` where ``vacuity > tau_u``.

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.9, 0.1, 0, 0, 0], [0.1, 0.9, 0, 0, 0]])
        >>> step_labels(RunPrediction("r", "Healthy", [0, 1], [0, 1], p, [0.1, 0.8]), 0.5).tolist()
        ['Healthy', 'Unknown']
    """
    out = np.asarray(KNOWN_LABELS, dtype=object)[pred.probs.argmax(axis=1)]
    if tau_u is not None:
        out = np.where(pred.vacuity > tau_u, UNKNOWN, out)
    return out


def run_level_label(pred: RunPrediction, tau_u: float | None) -> str:
    """The run's predicted category: the most frequent diagnosis label over its event window.

    The window is the steps whose event label is not Healthy (from the onset on); for Healthy
    runs, or anomalous runs without diagnoses after the onset, every step. Ties go to the label
    that comes first in :data:`~data_factory.labels.LABELS`. This reads the diagnostician's own
    per-step output where the anomaly is under way (what Table 17 tabulates), so it uses the
    truth's onset to pick the window: an evaluation summary, not a deployable decision.

    Example:
        >>> import numpy as np
        >>> p = np.tile([0.1, 0, 0.9, 0, 0], (4, 1))
        >>> run = RunPrediction("r", "Unknown", range(4), range(4), p, [0, 0.9, 0.9, 0.1],
        ...                     onset_step=1)
        >>> run_level_label(run, 0.35)
        'Unknown'
    """
    labels = step_labels(pred, tau_u)
    window = pred.event_labels != HEALTHY
    if window.any():
        labels = labels[window]
    if not labels.size:
        return HEALTHY
    counts = [int(np.sum(labels == c)) for c in LABELS]
    return LABELS[int(np.argmax(counts))]
