"""Baselines of Table 3 and Appendix L, on the same runs, time grid and metrics as TEViD.

Every baseline implements :class:`Baseline` — ``fit(train_runs, train_labels, val_runs,
val_labels)`` and ``score_run(run) -> RunScores`` — and sees only causal, non-privileged inputs
(per-step ``loss``/``lr``/``grad_norm``, frame statistics or frames; never ``lyapunov`` and never
the per-epoch validation curves). :meth:`RunScores.to_prediction` / :func:`predict_runs` produce
the :class:`core_models.metrics.RunPrediction` records all streaming metrics consume.

=====================  =========================  =============================================
name                   class                      input → mechanism
=====================  =========================  =============================================
``bocpd``              :class:`BOCPD`             loss residuals → Bayesian online CPD
``cusum``              :class:`CUSUM`             loss residuals → two-sided CUSUM
``nan_rule``           :class:`NaNRule`           loss → Optuna ThresholdPruner-style NaN check
``rules``              :class:`AutoTrainerRules`  frame stats + loss → AUTOTRAINER thresholds
``curve_tcn``          :class:`CurveTCN`          scalar curves → causal TCN classifier
``stats_gbdt``         :class:`StatsGBDT`         per-layer stats → LightGBM classifier
``stats_gbdt_curves``  :class:`StatsCurvesGBDT`   per-layer stats + scalar curves → LightGBM
``embedding_cpd``      :class:`EmbeddingCPD`      frozen TEViD embeddings → MMD CPD (App. L)
=====================  =========================  =============================================

Example:
    >>> from core_models.baselines import make_baseline, predict_runs
    >>> from core_models.baselines.toy import toy_run
    >>> from core_models.metrics import event_time_auprc
    >>> from data_factory.labelers.rules import RunLabel
    >>> runs = [toy_run(n_steps=300, seed=0), toy_run(n_steps=300, explode_at=150, seed=1)]
    >>> labels = [RunLabel("Healthy", None, None), RunLabel("Instability", 150, 150)]
    >>> preds = predict_runs(make_baseline("cusum"), runs, labels)
    >>> event_time_auprc(preds) > 0.5
    True
"""

from __future__ import annotations

from typing import Any

from core_models.baselines.base import (
    ANOMALOUS_COLUMNS,
    Baseline,
    BaselineBase,
    BaselineRun,
    LabelLike,
    NotFittedError,
    RunScores,
    TunableBaseline,
    anomaly_probs,
    event_labels_for,
    label_indices,
    predict_runs,
    run_id_of,
    select_on_validation,
)
from core_models.baselines.bocpd import BOCPD, bocpd_short_run_mass
from core_models.baselines.curve_tcn import CausalTCN, CurveTCN
from core_models.baselines.cusum import CUSUM, cusum_statistic
from core_models.baselines.embedding_cpd import EmbeddingCPD
from core_models.baselines.nan_rule import NaNRule
from core_models.baselines.rules import AutoTrainerRules, AutoTrainerThresholds
from core_models.baselines.stats_gbdt import StatsCurvesGBDT, StatsGBDT

__all__ = [
    "ANOMALOUS_COLUMNS",
    "BASELINES",
    "BOCPD",
    "CUSUM",
    "AutoTrainerRules",
    "AutoTrainerThresholds",
    "Baseline",
    "BaselineBase",
    "BaselineRun",
    "CausalTCN",
    "CurveTCN",
    "EmbeddingCPD",
    "LabelLike",
    "NaNRule",
    "NotFittedError",
    "RunScores",
    "StatsCurvesGBDT",
    "StatsGBDT",
    "TunableBaseline",
    "anomaly_probs",
    "bocpd_short_run_mass",
    "cusum_statistic",
    "event_labels_for",
    "label_indices",
    "make_baseline",
    "predict_runs",
    "run_id_of",
    "select_on_validation",
]

#: Baseline classes by their ``name``.
BASELINES: dict[str, type] = {cls.name: cls for cls in (
    BOCPD, CUSUM, NaNRule, AutoTrainerRules, CurveTCN, StatsGBDT, StatsCurvesGBDT, EmbeddingCPD)}


def make_baseline(name: str, **kwargs: Any) -> Baseline:
    """Build a baseline by name (``EmbeddingCPD`` needs ``model=`` a TEViD).

    Example:
        >>> make_baseline("bocpd", hazard_lambda=500).hazard_lambda
        500.0
    """
    try:
        cls = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}") from None
    return cls(**kwargs)
