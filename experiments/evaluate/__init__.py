"""Every model on the factorially held-out test split; the measured tables of issue 6.

    python -m experiments.evaluate                         # full protocol (2000 BCa resamples)
    python -m experiments.evaluate --quick                 # 50 resamples, for a smoke run
    python -m experiments.evaluate device=cuda n_resamples=500 baselines.curve_tcn.epochs=50

Inputs: the corpus and ``labels.csv`` under ``root`` (``experiments.factory``,
``experiments.label``) and the calibrated TEViD checkpoints ``out/<variant>/default.*``
(``experiments.pipeline``: ``tevid_mae``, ``tevid_scratch``; ``tevid_act`` / ``tevid_grad`` for the
channel ablation when they exist). The protocol (``docs/evaluation.md``):

* **Who sees what.** TEViD was pretrained and fine-tuned on *train* runs and calibrated
  (temperature, ``tau_u``) on *val* runs by the pipeline. Every baseline is fitted on *train* runs
  and tuned / early-stopped on *val* runs (Embedding-CPD embeds with the frozen TEViD-MAE). Every
  alert threshold (5 % false alarms on healthy *val* runs; the Appendix I cost-optimal threshold;
  the 90th-percentile abstention threshold of Table 16) is chosen on *val* runs, frozen and
  applied to *test*. A :class:`LeakageGuard` admits every run list handed to any of those steps
  and raises :class:`LeakageError` when a test-split run — or a run sharing a test architecture,
  data set or optimizer — would get through.
* **Streaming.** TEViD emits one diagnosis per capture step from the window of ``W`` frames ending
  there (:class:`core_models.clips.ClipDataset`, left-padded like the streaming
  :class:`~tevid_hpo.diagnostician.Diagnostician`), with the calibrated temperature; baselines
  score the same capture steps causally. Event labels are the run label from the onset on
  (:func:`~data_factory.labelers.frame_event_labels`); times are in epochs as
  ``step / steps_per_epoch``, for the diagnoses and for the rule's onset and firing times alike.
* **Metrics** come from :mod:`core_models.metrics` and :class:`tevid_hpo.cost.CostModel`, with
  95 % BCa intervals over test runs (:func:`~core_models.metrics.bootstrap_ci`).

Outputs: one section of ``docs/results.md`` per table (each naming this command, the seed and
the corpus hash), ``docs/figures/pr_curves.png`` and ``docs/figures/risk_coverage.png``, and every
number as JSON in ``out/evaluation/summary.json``.

The package, one idea per module: ``leakage`` (the guard), ``records`` (runs → prediction
records, per-step and per-run labels), ``methods`` (each method scored, its run memory and
frozen operating points), ``context`` (what every table needs: intervals, formatting, order),
``tables`` (Tables 3, 4, 12, 15 and the run memory), ``open_set`` (Tables 16–17), ``costs``
(Tables 18–19), ``figures`` and ``driver`` (end to end, command line).
"""

from __future__ import annotations

from experiments.cli import CONF
from experiments.evaluate.driver import COMMAND, main, run_evaluation
from experiments.evaluate.leakage import FACTORS, LeakageError, LeakageGuard
from experiments.evaluate.methods import (
    MethodEval,
    abstention_quantile,
    operating_point_runs,
    reference_far,
)
from experiments.evaluate.records import (
    predictions,
    premature_detections,
    retime,
    run_facts,
    run_level_label,
    step_labels,
    tevid_run_scores,
)

__all__ = [
    "COMMAND",
    "CONF",
    "FACTORS",
    "LeakageError",
    "LeakageGuard",
    "MethodEval",
    "abstention_quantile",
    "main",
    "operating_point_runs",
    "predictions",
    "premature_detections",
    "reference_far",
    "retime",
    "run_evaluation",
    "run_facts",
    "run_level_label",
    "step_labels",
    "tevid_run_scores",
]
