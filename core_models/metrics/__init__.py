"""Streaming evaluation metrics of the paper (Appendix E.2, Appendix I), computed run by run.

Every metric takes a sequence of :class:`RunPrediction` records — one per training run, holding the
per-capture-step diagnoses of a model on that run together with the run's ground truth — so that
:func:`bootstrap_ci` can resample *runs* (the independent unit) rather than time steps, which are
strongly autocorrelated inside a run.

What is here, the paper's name for it, and the file that holds it (import every name from
``core_models.metrics``):

* :class:`RunPrediction` — the per-run record (``record.py``); :func:`anomaly_scores` — one score
  per step (``scores.py``).
* :func:`event_time_auprc` / :func:`per_class_auprc` — "Event-Time AUPRC", micro over all steps
  (``event_time.py``).
* :func:`first_alert`, :func:`class_alert` — the "three consecutive predictions" alert rule (E.1)
  (``alerts.py``).
* :func:`threshold_at_far`, :func:`evaluate_alerts`, :func:`lead_times`, :func:`median_lead` —
  "median lead at 5 % FAR" against the rule firing time and against onset (Tables 3, 4, 18)
  (``lead.py``).
* :func:`macro_f1` — "Macro F1 (Known)", Healthy excluded from the average (Table 3)
  (``classification.py``).
* :func:`risk_coverage_curve`, :func:`augrc`, :func:`selective_predictions` — risk–coverage and
  AUGRC (Traub et al., 2024) (``risk_coverage.py``).
* :func:`unknown_auroc` — novel anomalies vs known ones, scored by EDL vacuity (``open_set.py``).
* :func:`diagnostic_cost` — Appendix I, ``C_FA·N_FA + C_MD·N_MD + C_Lead·ΣLead`` (``cost.py``).
* :func:`truncate_before_fire` — the causal-integrity protocol of Table 15 (``causal.py``).
* :func:`bootstrap_ci` — 95 % BCa intervals with run-level resampling (:func:`scipy.stats.bootstrap`);
  :func:`paired_bootstrap_ci` the same for the difference of two methods on the same runs
  (``bootstrap.py``).

Example:
    >>> import numpy as np
    >>> from core_models.metrics import RunPrediction, event_time_auprc
    >>> probs = np.array([[0.9, 0.1, 0, 0, 0], [0.2, 0.0, 0.8, 0, 0]])
    >>> run = RunPrediction("r0", "Instability", steps=[10, 20], epochs=[1.0, 2.0],
    ...                     probs=probs, vacuity=[0.1, 0.1], onset_step=20)
    >>> event_time_auprc([run])
    1.0
"""

from __future__ import annotations

from core_models.metrics.alerts import alert_profile, class_alert, first_alert
from core_models.metrics.bootstrap import ConfidenceInterval, bootstrap_ci, paired_bootstrap_ci
from core_models.metrics.causal import truncate_before_fire
from core_models.metrics.classification import macro_f1
from core_models.metrics.cost import diagnostic_cost
from core_models.metrics.event_time import (
    event_time_auprc,
    event_time_auprc_by_label,
    per_class_auprc,
)
from core_models.metrics.lead import (
    AlertPolicy,
    AlertSummary,
    evaluate_alerts,
    false_alarm_rate,
    lead_times,
    median_lead,
    threshold_at_far,
)
from core_models.metrics.open_set import unknown_auroc
from core_models.metrics.record import ANOMALOUS_KNOWN, RunPrediction
from core_models.metrics.risk_coverage import (
    RiskCoverage,
    augrc,
    risk_coverage_curve,
    selective_predictions,
)
from core_models.metrics.scores import ScoreKind, anomaly_scores

__all__ = [
    "ANOMALOUS_KNOWN",
    "AlertPolicy",
    "AlertSummary",
    "ConfidenceInterval",
    "RiskCoverage",
    "RunPrediction",
    "ScoreKind",
    "alert_profile",
    "anomaly_scores",
    "augrc",
    "bootstrap_ci",
    "class_alert",
    "diagnostic_cost",
    "evaluate_alerts",
    "event_time_auprc",
    "event_time_auprc_by_label",
    "false_alarm_rate",
    "first_alert",
    "lead_times",
    "macro_f1",
    "median_lead",
    "paired_bootstrap_ci",
    "per_class_auprc",
    "risk_coverage_curve",
    "selective_predictions",
    "threshold_at_far",
    "truncate_before_fire",
    "unknown_auroc",
]
