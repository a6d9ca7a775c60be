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
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import average_precision_score, precision_recall_curve

from core_models.baselines import BASELINES, make_baseline, run_id_of
from core_models.baselines.base import RunScores
from core_models.baselines.features import capture_grid
from core_models.checkpoint import checkpoint_paths, resolve_device
from core_models.clips import ClipDataset
from core_models.memory import remember, select_memory
from core_models.metrics import (
    ANOMALOUS_KNOWN,
    AlertSummary,
    ConfidenceInterval,
    RunPrediction,
    augrc,
    bootstrap_ci,
    evaluate_alerts,
    event_time_auprc,
    event_time_auprc_by_label,
    macro_f1,
    median_lead,
    risk_coverage_curve,
    selective_predictions,
    threshold_at_far,
    truncate_before_fire,
    unknown_auroc,
)
from core_models.train import predict
from data_factory.interventions import fault_step
from data_factory.labelers.rules import RunLabel
from data_factory.labels import HEALTHY, KNOWN_LABELS, LABELS, UNKNOWN, sets_operating_points
from data_factory.store import Run, RunStore
from experiments.pipeline import corpus_hash, load_labels, split_hash, split_runs
from experiments.report import RESULTS, write_section
from tevid_hpo.cost import CostModel, OperatingPoint
from tevid_hpo.diagnostician import Diagnostician

__all__ = [
    "FACTORS",
    "LeakageError",
    "LeakageGuard",
    "MethodEval",
    "abstention_quantile",
    "main",
    "predictions",
    "premature_detections",
    "retime",
    "run_evaluation",
    "run_facts",
    "run_level_label",
    "step_labels",
    "tevid_run_scores",
]

CONF = Path(__file__).resolve().parent / "conf"
COMMAND = "python -m experiments.evaluate"

#: The factors the test split holds out (paper Table 2): no test value may reach fitting/tuning.
FACTORS: tuple[str, ...] = ("arch", "dataset", "optimizer")

#: How each baseline is named in the tables and what it reads.
BASELINE_DISPLAY: dict[str, tuple[str, str]] = {
    "bocpd": ("BOCPD (loss residuals)", "Scalar telemetry"),
    "cusum": ("CUSUM (loss residuals)", "Scalar telemetry"),
    "nan_rule": ("NaN rule (ThresholdPruner-style)", "Scalar telemetry"),
    "curve_tcn": ("Curve-TCN", "Scalar telemetry"),
    "rules": ("AUTOTRAINER-style rules", "Layer statistics"),
    "stats_gbdt": ("Stats-GBDT", "Layer statistics"),
    "stats_gbdt_curves": ("Stats-GBDT + scalar curves", "Layer statistics + scalar telemetry"),
    "embedding_cpd": ("Embedding-CPD (frozen TEViD-MAE)", "Internal-state video"),
}
_HEALTHY_COL = KNOWN_LABELS.index(HEALTHY)
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Leakage guard
# --------------------------------------------------------------------------------------------


class LeakageError(AssertionError):
    """A test-split run, or a run sharing a held-out architecture, data set or optimizer with the
    test split, reached training, tuning, calibration or threshold selection."""


@dataclass(frozen=True)
class Use:
    """One admitted hand-over of runs to a fitting / tuning / threshold step.

    Attributes:
        purpose: what the runs were used for (``"fit"``, ``"alert threshold"``, ...).
        method: the model or baseline that used them.
        run_ids: ids of the runs.
        splits: the ``split`` recorded in each run's metadata (``None`` when absent).
        factors: ``{factor: values}`` of the runs' architectures, data sets and optimizers.
    """

    purpose: str
    method: str
    run_ids: frozenset[str]
    splits: frozenset[str | None]
    factors: Mapping[str, frozenset[str]]


def _meta(run: Any) -> Mapping[str, Any]:
    return dict(getattr(run, "meta", None) or {})


class LeakageGuard:
    """Asserts, by code, that nothing of the test split reaches fitting, tuning or calibration.

    Every run list handed to a step that learns or chooses anything (baseline ``fit``, validation
    tuning, TEViD training/calibration, threshold selection) goes through :meth:`admit`, which
    records it and raises :class:`LeakageError` at once when it holds a run that

    * is one of the evaluated test runs,
    * has ``split == "test"`` in its metadata (also catches unlabelled test runs), or
    * shares an architecture, data set or optimizer with any test run (the factorial hold-out of
      paper Table 2: a test *factor* must be unseen, not only a test run).

    Runs are anything with a ``run_id`` (or ``meta["run_id"]``) and a ``meta`` mapping: stored
    :class:`~data_factory.store.Run` objects and :class:`~core_models.metrics.RunPrediction`
    records built by :func:`predictions` both qualify.

    Example:
        >>> from types import SimpleNamespace as R
        >>> test = [R(run_id="test-0", meta={"arch": "mixer", "dataset": "text",
        ...                                  "optimizer": "lion", "split": "test"})]
        >>> guard = LeakageGuard(test)
        >>> ok = R(run_id="train-0", meta={"arch": "cnn", "dataset": "digits",
        ...                                "optimizer": "sgd", "split": "train"})
        >>> len(guard.admit("fit", "demo", [ok]))
        1
        >>> guard.admit("fit", "demo", test)
        Traceback (most recent call last):
        ...
        experiments.evaluate.LeakageError: demo fit: test runs ['test-0']; ...
    """

    def __init__(self, test_runs: Iterable[Any]) -> None:
        runs = list(test_runs)
        self.test_ids: frozenset[str] = frozenset(run_id_of(r) for r in runs)
        self.test_factors: dict[str, frozenset[str]] = {
            f: frozenset(str(v) for r in runs if (v := _meta(r).get(f)) is not None)
            for f in FACTORS}
        self.uses: list[Use] = []

    def _problems(self, use: Use) -> list[str]:
        out = []
        leaked = sorted(use.run_ids & self.test_ids)
        if leaked:
            out.append(f"test runs {leaked[:5]}" + (" ..." if len(leaked) > 5 else ""))
        if "test" in use.splits:
            out.append("runs whose metadata says split=test")
        for f in FACTORS:
            shared = sorted(use.factors[f] & self.test_factors[f])
            if shared:
                out.append(f"held-out {f} {shared}")
        return out

    def admit(self, purpose: str, method: str, runs: Sequence[_T]) -> Sequence[_T]:
        """Record that ``method`` uses ``runs`` for ``purpose``; return them unchanged.

        Raises:
            LeakageError: when any run belongs to the test split or shares a held-out factor.
        """
        use = Use(purpose, method, frozenset(run_id_of(r) for r in runs),
                  frozenset(_meta(r).get("split") for r in runs),
                  {f: frozenset(str(v) for r in runs if (v := _meta(r).get(f)) is not None)
                   for f in FACTORS})
        problems = self._problems(use)
        self.uses.append(use)
        if problems:
            raise LeakageError(f"{method} {purpose}: " + "; ".join(problems) + "; the test split "
                               "must never reach fitting, tuning, calibration or thresholds")
        return runs

    def check(self) -> None:
        """Re-check every recorded use (raises :class:`LeakageError` listing all problems)."""
        problems = [f"{u.method} {u.purpose}: " + "; ".join(p)
                    for u in self.uses if (p := self._problems(u))]
        if problems:
            raise LeakageError("\n".join(problems))

    def seen_ids(self) -> frozenset[str]:
        """Every run id admitted to any step."""
        return frozenset().union(*(u.run_ids for u in self.uses)) if self.uses else frozenset()

    def summary(self) -> str:
        """One Markdown paragraph stating what was checked (for the results file)."""
        purposes = sorted({u.purpose for u in self.uses})
        return (f"Leakage guard (`experiments.evaluate.LeakageGuard`): {len(self.seen_ids())} "
                f"distinct runs reached {', '.join(purposes) or 'no step'} across "
                f"{len({u.method for u in self.uses})} methods; none is one of the "
                f"{len(self.test_ids)} test runs or has split=test, and none shares an "
                "architecture, data set or optimizer with the test split "
                f"(held out: {'; '.join(f'{f}: ' + ', '.join(sorted(v)) for f, v in self.test_factors.items())}).")


# --------------------------------------------------------------------------------------------
# Building RunPredictions
# --------------------------------------------------------------------------------------------


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
    through :func:`core_models.train.predict` with the checkpoint's calibrated temperature.
    """
    model = diag.model
    ds = ClipDataset([run], None, window=model.profile.window, stride=1)
    out = predict(model, ds, batch_size=batch_size, device=str(device),
                  temperature=float(diag.calibration.temperature))
    probs = np.clip(out["probs"].astype(np.float64), 0.0, 1.0)
    grid = capture_grid(run)
    return RunScores(name, run_id_of(run), grid.steps, grid.epochs,
                     np.clip(1.0 - probs[:, _HEALTHY_COL], 0.0, 1.0), probs,
                     extras={"vacuity": np.clip(out["vacuity"].astype(np.float64), 0.0, 1.0)})


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


# --------------------------------------------------------------------------------------------
# Per-method state
# --------------------------------------------------------------------------------------------


@dataclass
class MethodEval:
    """One evaluated method: its validation and test records and its frozen operating points.

    Attributes:
        name: key (``"tevid_mae"``, ``"stats_gbdt"``, ...).
        display: name in the tables.
        input_type: what it reads (Table 3's first column).
        val, test: its :class:`RunPrediction` records on the validation / test runs.
        has_classes: whether it outputs class probabilities (else macro-F1 is N/A).
        evidential: TEViD: vacuity is meaningful and the alert rule abstains above ``tau_u``.
        vacuity_threshold: ``tau_u`` used by the alert rule (``None``: never abstains).
        far_threshold: score threshold with ≤ ``far`` false alarms on healthy val runs.
        val_far: the validation FAR at that threshold.
        cost_point: the Appendix I cost-optimal operating point on val runs.
        abstention_q: Appendix H.1's alternative ``tau_u``, the 90th percentile of vacuity on
            validation steps of known anomalies (evidential methods only).
        alerts: the test alert outcome at ``far_threshold``.
        provenance: checkpoint facts (TEViD) or fitted parameters (baselines).
        notes: why a number is missing.
        memory: the run-memory window applied to ``val`` and ``test`` (0: none).
        memory_scores: validation event-time AUPRC per candidate window.
        raw_test: the test records before the run memory (the memory table compares them).
    """

    name: str
    display: str
    input_type: str
    val: list[RunPrediction]
    test: list[RunPrediction]
    has_classes: bool
    evidential: bool = False
    vacuity_threshold: float | None = None
    far_threshold: float | None = None
    val_far: float = float("nan")
    cost_point: OperatingPoint | None = None
    abstention_q: float | None = None
    alerts: AlertSummary | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    memory: int = 0
    memory_scores: dict[int, float] = field(default_factory=dict)
    raw_test: list[RunPrediction] = field(default_factory=list)

    def with_memory(self, window: int, val_scores: Mapping[int, float] | None = None) -> None:
        """Pass every val and test record through a run memory of ``window``
        (:func:`core_models.memory.remember`), keeping the raw test records."""
        self.raw_test = list(self.test)
        self.memory, self.memory_scores = int(window), dict(val_scores or {})
        self.val = [remember(r, window) for r in self.val]
        self.test = [remember(r, window) for r in self.test]

    @property
    def is_tevid(self) -> bool:
        return self.evidential


def abstention_quantile(val: Sequence[RunPrediction], q: float = 0.9) -> float:
    """Appendix H.1's "global quantile" abstention threshold: the ``q`` quantile of the vacuity
    on validation steps of known anomalies (raises ``ValueError`` when there are none).

    Example:
        >>> import numpy as np
        >>> p = np.tile([0, 0, 1.0, 0, 0], (5, 1))
        >>> run = RunPrediction("v", "Instability", range(5), range(5), p,
        ...                     [0.1, 0.2, 0.3, 0.4, 0.5], onset_step=0)
        >>> round(abstention_quantile([run], 0.5), 2)
        0.3
    """
    u = [r.vacuity[np.isin(r.event_labels.astype(str), ANOMALOUS_KNOWN)] for r in val]
    u = np.concatenate(u) if u else np.zeros(0)
    if not u.size:
        raise ValueError("no validation step of a known anomaly")
    return float(np.quantile(u, q))


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


# --------------------------------------------------------------------------------------------
# Formatting and intervals
# --------------------------------------------------------------------------------------------


def _interval(metric: Callable[[list[RunPrediction]], float], runs: Sequence[RunPrediction],
              n_resamples: int, seed: int) -> ConfidenceInterval:
    rs = list(runs)
    if len(rs) < 2:
        try:
            est = float(metric(rs)) if rs else float("nan")
        except ValueError:
            est = float("nan")
        return ConfidenceInterval(est, float("nan"), float("nan"), "none", note="fewer than 2 runs")
    return bootstrap_ci(metric, rs, n_resamples=n_resamples, seed=seed)


def _fmt(ci: ConfidenceInterval | None, digits: int = 3) -> str:
    """``est [low, high]``; ``*`` marks a percentile fallback; ``N/A`` when undefined."""
    if ci is None or not math.isfinite(ci.estimate):
        return "N/A"
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return f"{ci.estimate:.{digits}f}"
    mark = "" if ci.method == "BCa" else "*"
    return f"{ci.estimate:.{digits}f} [{ci.low:.{digits}f}, {ci.high:.{digits}f}]{mark}"


def _num(x: float | None, digits: int = 3) -> str:
    return "N/A" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"


def _ci_dict(ci: ConfidenceInterval | None) -> dict[str, Any] | None:
    if ci is None:
        return None
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high, "method": ci.method,
            "n_failed": ci.n_failed, "note": ci.note}


def _markdown(rows: list[dict[str, Any]]) -> str:
    # disable_numparse: tabulate would otherwise re-format "0.050" as "0.05" and "N/A" columns.
    return (pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows
            else "_(no rows)_")


_CI_NOTE = ("Intervals: 95 % BCa bootstrap over test runs (`core_models.metrics.bootstrap_ci`); "
            "`*` marks a percentile interval where BCa is undefined on these runs (e.g. some "
            "resamples leave the metric undefined).")


# --------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class _Context:
    """What every table needs."""

    cfg: DictConfig
    command: str
    results: Path
    figures: Path
    seed: int
    n_resamples: int
    corpus: str
    methods: dict[str, MethodEval]
    guard: LeakageGuard
    missing_variants: dict[str, Path]
    cost: CostModel
    summary: dict[str, Any] = field(default_factory=dict)

    def ci(self, metric: Callable[[list[RunPrediction]], float],
           runs: Sequence[RunPrediction]) -> ConfidenceInterval:
        return _interval(metric, runs, self.n_resamples, self.seed)

    def write(self, name: str, body: str) -> None:
        write_section(name, body, command=self.command, path=self.results, seed=self.seed,
                      corpus=self.corpus, n_resamples=self.n_resamples,
                      far=float(self.cfg.far))

    def figure_link(self, path: Path) -> str:
        return os.path.relpath(path, self.results.parent)


def _load_variant(name: str, path: Path, device: torch.device, chash: str, n_train: int,
                  check: bool) -> tuple[Diagnostician, list[str]]:
    """Load a checkpoint and say why its provenance cannot be verified (empty: verified)."""
    diag = Diagnostician.from_pretrained(path, device=device)
    cfg = getattr(diag, "source_config", {}) or {}
    # The pipeline trains on split_runs(train) and calibrates on split_runs(val) of *its* corpus.
    # Only when that corpus is this one do the run lists admitted below describe what it saw.
    problems = []
    if cfg.get("corpus_hash") != chash:
        problems.append(f"corpus hash {cfg.get('corpus_hash')} != {chash}")
    if cfg.get("train_runs") is not None and int(cfg["train_runs"]) != n_train:
        problems.append(f"trained on {cfg['train_runs']} runs, this corpus has {n_train} train runs")
    if problems and check:
        raise LeakageError(f"{name} checkpoint {path} was not produced from this corpus "
                           f"({'; '.join(problems)}): its training runs cannot be verified. Rerun "
                           "`python -m experiments.pipeline`, or pass "
                           "check_checkpoint_provenance=false to evaluate it anyway.")
    return diag, problems


def operating_point_runs(runs: Sequence[RunPrediction]) -> list[RunPrediction]:
    """The runs an operating point is chosen on (:func:`data_factory.labels.sets_operating_points`):
    runs labelled Healthy despite an injected fault are neither clean negatives nor labelled
    positives.

    Example:
        >>> import numpy as np
        >>> p = np.tile([1.0, 0, 0, 0, 0], (2, 1))
        >>> runs = [RunPrediction(i, "Healthy", [0, 1], [0, 1], p, [0, 0],
        ...                       meta={"intervention": iv}) for i, iv in
        ...         [("a", "healthy"), ("b", "overfitting")]]
        >>> [r.run_id for r in operating_point_runs(runs)]
        ['a']
    """
    return [r for r in runs if sets_operating_points(r.label, (r.meta or {}).get("intervention"))]


def reference_far(alerts: AlertSummary, runs: Sequence[RunPrediction]) -> float:
    """False-alarm rate of ``alerts`` on the healthy references among ``runs``."""
    ref = [r.run_id for r in operating_point_runs(runs) if r.label == HEALTHY]
    if not ref:
        return float("nan")
    return sum(alerts.alert_epochs.get(rid) is not None for rid in ref) / len(ref)


def _thresholds(m: MethodEval, far: float, consecutive: int, cost: CostModel,
                guard: LeakageGuard) -> None:
    """Choose the frozen operating points on validation runs and apply them to test."""
    val = operating_point_runs(guard.admit("alert threshold (5 % FAR)", m.name, m.val))
    try:
        m.far_threshold = threshold_at_far(val, far, consecutive=consecutive,
                                           vacuity_threshold=m.vacuity_threshold)
        m.val_far = evaluate_alerts(val, m.far_threshold, consecutive=consecutive,
                                    vacuity_threshold=m.vacuity_threshold).far
        m.alerts = evaluate_alerts(m.test, m.far_threshold, consecutive=consecutive,
                                   vacuity_threshold=m.vacuity_threshold)
    except ValueError as err:  # e.g. no healthy validation run to count false alarms on
        m.notes.append(f"no 5 %-FAR threshold: {err}")
    val = operating_point_runs(guard.admit("cost-optimal threshold", m.name, m.val))
    if val:
        m.cost_point = cost.best_threshold(val, consecutive=consecutive,
                                           vacuity_threshold=m.vacuity_threshold)
    if m.evidential:
        val = guard.admit("abstention threshold (90th percentile)", m.name, m.val)
        try:
            m.abstention_q = abstention_quantile(val, 0.9)
        except ValueError as err:
            m.notes.append(f"no 90th-percentile abstention threshold: {err}")


def _memory_runs(preds: Sequence[RunPrediction]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(r.probs, r.event_labels != HEALTHY) for r in preds]


def _memory_scores(val: Sequence[RunPrediction], cfg: DictConfig, window: int
                   ) -> dict[int, float]:
    """Validation event-time AUPRC per run-memory window of the grid and ``window`` (for the
    memory table; empty when validation lacks healthy or anomalous steps)."""
    try:
        return select_memory(_memory_runs(val), sorted({*cfg.memory_grid, window}))[1]
    except ValueError:
        return {}


def _build_methods(cfg: DictConfig, out: Path, device: torch.device,
                   guard: LeakageGuard, train: list[Run], val: list[Run], test: list[Run],
                   labels: Mapping[str, RunLabel], chash: str
                   ) -> tuple[dict[str, MethodEval], dict[str, Path], dict[str, float]]:
    methods: dict[str, MethodEval] = {}
    missing: dict[str, Path] = {}
    timings: dict[str, float] = {}
    batch = int(cfg.batch_size)
    diags: dict[str, Diagnostician] = {}
    for name, spec in cfg.variants.items():
        path = out / name / "default"
        if not checkpoint_paths(path)[0].is_file():
            if spec.get("required", False):
                raise FileNotFoundError(f"no {name} checkpoint at {path}.safetensors; it is "
                                        "written by `python -m experiments.pipeline`")
            missing[name] = path
            continue
        t = time.time()
        diag, problems = _load_variant(name, path, device, chash, len(train),
                                       bool(cfg.check_checkpoint_provenance))
        diags[name] = diag
        # What the pipeline handed to pretraining / fine-tuning and to calibration: the same
        # split_runs() lists as here (the provenance check above ties the checkpoint to them).
        guard.admit("training (pipeline)", name, train)
        guard.admit("calibration (pipeline)", name, val)
        score = partial(tevid_run_scores, diag, name=name, batch_size=batch, device=device)
        val_preds, _ = predictions(score, val, labels, evidential=True)
        test_preds, _ = predictions(score, test, labels, evidential=True)
        cal = diag.calibration
        methods[name] = MethodEval(
            name, str(spec.get("label", name)), "Internal-state video", val_preds, test_preds,
            has_classes=True, evidential=True, vacuity_threshold=float(cal.tau_u),
            provenance={"checkpoint": str(path), **cal.to_dict(),
                        "corpus_hash": diag.source_config.get("corpus_hash"),
                        "problems": problems})
        # The run memory the pipeline chose on val (what the streaming Diagnostician applies).
        methods[name].with_memory(cal.memory, _memory_scores(val_preds, cfg, cal.memory))
        timings[name] = time.time() - t
        print(f"[evaluate] {name}: {len(val_preds)} val + {len(test_preds)} test runs "
              f"({timings[name]:.1f} s)", flush=True)

    for name, kwargs in (cfg.baselines or {}).items():
        t = time.time()
        kw = dict(OmegaConf.to_container(kwargs, resolve=True) or {}) if kwargs else {}
        if name == "embedding_cpd":
            if "tevid_mae" not in diags:
                raise FileNotFoundError("embedding_cpd embeds with the tevid_mae checkpoint, "
                                        "which is missing")
            kw.update(model=diags["tevid_mae"].model, device=device)
        cls = BASELINES.get(name)   # an unknown name fails in make_baseline, with the choices
        if cls is not None and "seed" in inspect.signature(cls).parameters:
            kw.setdefault("seed", int(cfg.seed))
        baseline = make_baseline(name, **kw)
        fit_runs = guard.admit("fit", name, train)
        tune_runs = guard.admit("tuning / early stopping", name, val)
        baseline.fit(fit_runs, [labels[r.run_id] for r in fit_runs], tune_runs,
                     [labels[r.run_id] for r in tune_runs])
        val_preds, classes_v = predictions(baseline.score_run, val, labels)
        test_preds, classes_t = predictions(baseline.score_run, test, labels)
        display, kind = BASELINE_DISPLAY.get(name, (name, "?"))
        prov = {"validation": [(p, v) for p, v in getattr(baseline, "validation_", [])]}
        methods[name] = MethodEval(name, display, kind, val_preds, test_preds,
                                   has_classes=classes_v and classes_t, provenance=prov)
        # The same run memory TEViD gets, its window chosen the same way on val.
        try:
            window, scores = select_memory(
                _memory_runs(guard.admit("run memory", name, val_preds)), list(cfg.memory_grid))
        except ValueError as err:   # e.g. no healthy or no anomalous validation step
            window, scores = 0, {}
            methods[name].notes.append(f"no run memory chosen: {err}")
        methods[name].with_memory(window, scores)
        timings[name] = time.time() - t
        print(f"[evaluate] {name}: fitted and scored ({timings[name]:.1f} s)", flush=True)
    return methods, missing, timings


def run_evaluation(cfg: DictConfig, command: str = COMMAND) -> dict[str, Any]:
    """Run the whole protocol and write every table; returns the JSON summary."""
    t0 = time.time()
    root, out = Path(cfg.root).expanduser(), Path(cfg.out).expanduser()
    results = Path(cfg.results).expanduser() if cfg.get("results") else RESULTS
    figures = Path(cfg.figures).expanduser() if cfg.get("figures") else results.parent / "figures"
    n_resamples = int(cfg.quick_resamples if cfg.quick else cfg.n_resamples)
    device = resolve_device(cfg.device)
    if not (root / "labels.csv").is_file():
        raise FileNotFoundError(f"no labels.csv under {root}: run `python -m experiments.label`")

    store = RunStore(root)
    labels = load_labels(root)
    chash = corpus_hash(root)
    train, _ = split_runs(store, labels, "train")
    val, _ = split_runs(store, labels, "val")
    test, _ = split_runs(store, labels, "test")
    if not (train and val and test):
        raise RuntimeError(f"need labelled train, val and test runs under {root}; found "
                           f"{len(train)} / {len(val)} / {len(test)}")
    print(f"[evaluate] {len(train)} train, {len(val)} val, {len(test)} test runs; corpus {chash}",
          flush=True)
    guard = LeakageGuard(test)
    cost = CostModel(**OmegaConf.to_container(cfg.cost, resolve=True))
    methods, missing, timings = _build_methods(cfg, out, device, guard, train, val, test,
                                               labels, chash)
    for m in methods.values():
        _thresholds(m, float(cfg.far), int(cfg.consecutive), cost, guard)
    # Stop before anything is written if any step saw the test split.
    guard.check()

    ctx = _Context(cfg, command, results, figures, int(cfg.seed), n_resamples, chash, methods,
                   guard, missing, cost)
    cells = cfg.get("cells", ["default"])
    ctx.summary = {"corpus_hash": chash, "split_hash": split_hash(cells), "seed": ctx.seed,
                   "n_resamples": n_resamples, "far": float(cfg.far),
                   "runs": {"train": len(train), "val": len(val), "test": len(test)},
                   "leakage": {"checked_uses": len(guard.uses), "runs_seen": len(guard.seen_ids()),
                               "test_runs": len(guard.test_ids)},
                   "methods": {}}
    for step in (_table3, _table4, _table12, _table15, _table16, _table17, _table18_19,
                 _table_memory):
        t = time.time()
        step(ctx)
        timings[step.__name__.lstrip("_")] = time.time() - t
    timings["total"] = time.time() - t0
    ctx.summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    dest = out / "evaluation"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "summary.json").write_text(json.dumps(ctx.summary, indent=1, default=_json_default))
    print(f"[evaluate] wrote {results} and {dest / 'summary.json'} in {timings['total']:.0f} s",
          flush=True)
    return ctx.summary


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _order(ctx: _Context) -> list[MethodEval]:
    """Scalar baselines, then layer-statistics and embedding baselines, then TEViD variants."""
    rank = {"Scalar telemetry": 0, "Layer statistics": 1, "Layer statistics + scalar telemetry": 2,
            "Internal-state video": 3}
    return sorted(ctx.methods.values(), key=lambda m: (rank.get(m.input_type, 3), m.is_tevid))


def _test_mix(runs: Sequence[RunPrediction]) -> str:
    counts = pd.Series([r.label for r in runs]).value_counts()
    return ", ".join(f"{c} {int(counts[c])}" for c in LABELS if c in counts)


def _method_row(ctx: _Context, m: MethodEval) -> tuple[dict[str, Any], dict[str, Any]]:
    """Table 3's numbers for one method: (formatted row, JSON numbers)."""
    vt, k = m.vacuity_threshold, int(ctx.cfg.consecutive)
    auprc = ctx.ci(event_time_auprc, m.test)
    f1 = ctx.ci(partial(macro_f1, vacuity_threshold=vt), m.test) if m.has_classes else None
    lead = onset = strict = None
    a = m.alerts
    early = premature_detections(a, m.test) if a else frozenset()
    if m.far_threshold is not None:
        fire_lead = partial(median_lead, threshold=m.far_threshold, reference="fire",
                            consecutive=k, vacuity_threshold=vt)
        lead = ctx.ci(fire_lead, m.test)
        onset = ctx.ci(partial(median_lead, threshold=m.far_threshold, reference="onset",
                               consecutive=k, vacuity_threshold=vt), m.test)
        strict = ctx.ci(lambda rs: fire_lead([r for r in rs if r.run_id not in early]), m.test)
    row = {"Input": m.input_type, "Method": m.display,
           "Macro-F1 (known)": _fmt(f1) if m.has_classes else "N/A",
           "Event-time AUPRC": _fmt(auprc),
           "Median lead vs rule firing (epochs)": _fmt(lead, 2),
           "Median lead vs onset (epochs)": _fmt(onset, 2),
           "Detected / anomalous": f"{a.n_detected}/{a.n_anomalous}" if a else "N/A",
           "… of them before the fault began": str(len(early)) if a else "N/A",
           "Median lead vs firing without those": _fmt(strict, 2),
           "Test FAR: labelled / reference (val)":
               f"{_num(a.far)} / {_num(reference_far(a, m.test))} ({_num(m.val_far)})" if a else "N/A"}
    nums = {"display": m.display, "input": m.input_type, "auprc": _ci_dict(auprc),
            "macro_f1": _ci_dict(f1), "median_lead_fire": _ci_dict(lead),
            "median_lead_onset": _ci_dict(onset), "far_threshold": m.far_threshold,
            "val_far": m.val_far, "test_far": a.far if a else None,
            "test_reference_far": reference_far(a, m.test) if a else None,
            "detected": a.n_detected if a else None, "anomalous": a.n_anomalous if a else None,
            "premature": len(early) if a else None, "median_lead_fire_strict": _ci_dict(strict),
            "vacuity_threshold": vt, "notes": m.notes, "provenance": m.provenance}
    return row, nums


def _table3(ctx: _Context) -> None:
    rows = []
    for m in _order(ctx):
        row, nums = _method_row(ctx, m)
        rows.append(row)
        ctx.summary["methods"][m.name] = nums
    any_test = next(iter(ctx.methods.values())).test
    ctx.figures.mkdir(parents=True, exist_ok=True)
    pr = _plot_pr_curves(ctx, ctx.figures / "pr_curves.png")
    notes = [f"- {m.display}: {'; '.join(m.notes)}" for m in _order(ctx) if m.notes]
    foreign = [f"- {m.display}: checkpoint provenance not verified ({'; '.join(p)})"
               for m in _order(ctx) if (p := m.provenance.get("problems"))]
    body = "\n".join([
        "## Table 3 analogue — all methods on the held-out test split", "",
        (f"{len(any_test)} test runs ({_test_mix(any_test)}); architectures, data sets and "
        "optimizers all unseen in training (factorial split, `data_factory.split`)."), "",
        _markdown(rows), "",
        ("- **Event-time AUPRC**: anomaly (event label ≠ Healthy, novel `Unknown` included) vs "
        "healthy, micro over every capture step of every test run, score `1 − p_Healthy`."),
        ("- **Run memory**: every method's per-step diagnoses pass through the same causal run "
        "memory (`core_models.memory`: mean of the last `w` diagnoses, latched at the most "
        "anomalous so far), `w` chosen on validation per method; the section \"Run memory\" "
        "lists each `w` and the numbers without it."),
        (f"- **Lead at {ctx.cfg.far:.0%} FAR**: each method's alert threshold (3 consecutive "
        f"diagnoses with score ≥ τ; TEViD's abstained steps break a streak) is the lowest one "
        f"that alerts on at most {ctx.cfg.far:.0%} of the healthy **validation** runs; it is "
        "chosen on validation, frozen, and applied to the test runs. Healthy here means healthy "
        "by label *and* by intent: val runs the rules label Healthy although a fault was "
        "injected (sub-threshold overfitting, say) are left out of the budget "
        "(`experiments.evaluate.operating_point_runs`). The achieved test FAR is reported on "
        "every run labelled Healthy and on the healthy references, next to the validation FAR. Lead = rule firing epoch − alert epoch (positive = "
        "earlier than the Appendix A rule), median over detected anomalous runs; the onset "
        "column measures against the anomaly onset instead (negative: after the onset). Times "
        "are `step / steps_per_epoch`."),
        ("- **Before the fault began**: detections whose alert came before a mid-run fault "
        "started (`experiments.evaluate.premature_detections`: task switch, learning-rate jump "
        "or cycle, novel families that start mid-run); the run was still healthy, so the alert "
        "could not have seen the fault. Faults that act from the first step (small subset, "
        "shortcut, corrupted labels, extreme learning rate) never count. The last column is the "
        "median lead with those runs left out."),
        ("- **Macro-F1 (known)**: per step, argmax class (Unknown when TEViD abstains, "
        "vacuity > τ_u) vs event label, averaged over the anomalous known classes present; N/A "
        "for detectors without class probabilities."),
        "- " + _CI_NOTE, "- " + ctx.guard.summary(), *notes, *foreign, "",
        f"![Precision–recall curves, test steps]({ctx.figure_link(pr)})"])
    ctx.write("eval-table3", body)


def _table_memory(ctx: _Context) -> None:
    """What the run memory does to every method: val-chosen window, AUPRC with and without."""
    rows, nums = [], {}
    for m in _order(ctx):
        raw = event_time_auprc(m.raw_test) if m.raw_test else float("nan")
        kept = event_time_auprc(m.test)
        val = m.memory_scores
        rows.append({"Method": m.display, "Window (val)": m.memory,
                     "Val AUPRC: none / window": (f"{_num(val.get(0))} / {_num(val.get(m.memory))}"
                                                  if val else "N/A"),
                     "Test AUPRC: none": _num(raw), "Test AUPRC: with memory": _num(kept),
                     "Δ test": f"{kept - raw:+.3f}"})
        nums[m.name] = {"window": m.memory, "val_auprc": {str(k): v for k, v in val.items()},
                        "test_auprc_none": raw, "test_auprc_memory": kept,
                        "test_by_label_none": event_time_auprc_by_label(m.raw_test or m.test),
                        "test_by_label_memory": event_time_auprc_by_label(m.test)}
    ctx.summary["memory"] = nums
    labels = [c for c in LABELS if any(c in n["test_by_label_memory"] for n in nums.values())]
    shares = {c: next(n["test_by_label_memory"][c][1] for n in nums.values()
                      if c in n["test_by_label_memory"]) for c in labels}
    by_label = [{"Method": m.display, **{
        f"{c} ({shares[c]:.2f})": " → ".join(_num(n[k][c][0]) if c in n[k] else "N/A"
                                          for k in ("test_by_label_none", "test_by_label_memory"))
        for c in labels}} for m in _order(ctx) for n in [nums[m.name]]]
    grid = ", ".join(str(w) for w in ctx.cfg.memory_grid)
    body = "\n".join([
        "## Run memory — every method with and without it", "",
        ("Every table above scores the diagnoses *after* the causal run memory of "
         "`core_models.memory`: the mean of the last `w` diagnoses, latched at the most anomalous "
         "mean so far (the event labels are states that last from their onset on). Each baseline's "
         f"`w` is the one of {{{grid}}} with the largest event-time AUPRC on the **validation** runs; "
         "TEViD's is its checkpoint's, chosen the same way by `experiments.pipeline` and applied "
         "by the streaming `Diagnostician` (`w = 0`: no memory). Test columns are point "
         "estimates; Table 3 has the intervals of the with-memory numbers."), "",
        _markdown(rows), "",
        ("Which anomalies each method finds: test event-time AUPRC of each anomalous event label's "
         "steps against the healthy steps only, without → with memory "
         "(`core_models.metrics.event_time_auprc_by_label`; in the header that label's share of "
         "those steps, what a random score gets)."), "",
        _markdown(by_label)])
    ctx.write("eval-memory", body)


def _table4(ctx: _Context) -> None:
    m = ctx.methods["tevid_mae"]
    vt, k = m.vacuity_threshold, int(ctx.cfg.consecutive)
    factors = [("Architecture", "arch"), ("Data set", "dataset"), ("Optimizer", "optimizer")]
    families = {p.meta.get("arch_family") for p in m.test}
    archs = {p.meta.get("arch") for p in m.test}
    if None not in families and len(families) < len(archs):
        factors.insert(0, ("Architecture family", "arch_family"))
    rows, nums = [], []
    for title, key in factors:
        for value in sorted({str(p.meta.get(key)) for p in m.test}):
            runs = [p for p in m.test if str(p.meta.get(key)) == value]
            auprc = ctx.ci(event_time_auprc, runs)
            lead = None
            far = float("nan")
            if m.far_threshold is not None:
                lead = ctx.ci(partial(median_lead, threshold=m.far_threshold, reference="fire",
                                      consecutive=k, vacuity_threshold=vt), runs)
                far = evaluate_alerts(runs, m.far_threshold, consecutive=k,
                                      vacuity_threshold=vt).far
            n_anom = sum(r.is_anomalous for r in runs)
            rows.append({"Factor": title, "Held-out value": value,
                         "Runs (anomalous)": f"{len(runs)} ({n_anom})",
                         "Event-time AUPRC": _fmt(auprc), "Median lead vs firing (epochs)":
                         _fmt(lead, 2), "Test FAR": _num(far)})
            nums.append({"factor": key, "value": value, "runs": len(runs), "anomalous": n_anom,
                         "auprc": _ci_dict(auprc), "median_lead_fire": _ci_dict(lead),
                         "far": far})
    ctx.summary["table4"] = nums
    body = "\n".join([
        f"## Table 4 analogue — {m.display} by held-out architecture, data set and optimizer", "",
        _markdown(rows), "",
        "Every slice is unseen in training and validation. The alert threshold is the one chosen "
        f"on validation for Table 3 ({ctx.cfg.far:.0%} FAR on healthy validation runs), not "
        "re-tuned per slice. N/A: the slice has no anomalous step or no detection. " + _CI_NOTE])
    ctx.write("eval-table4", body)


def _table12(ctx: _Context) -> None:
    variants = [("Activations-only (A)", "tevid_act"), ("Gradients-only (G)", "tevid_grad"),
                ("Activations+Gradients (A+G)", "tevid_mae")]
    rows, lines = [], []
    for title, name in variants:
        m = ctx.methods.get(name)
        if m is None:
            continue
        row, _ = _method_row(ctx, m)
        rows.append({"Input variant": title, "Checkpoint": name,
                     "Macro-F1 (known)": row["Macro-F1 (known)"],
                     "Event-time AUPRC": row["Event-time AUPRC"],
                     "Median lead vs firing (epochs)": row["Median lead vs rule firing (epochs)"]})
    absent = [n for n in ("tevid_act", "tevid_grad") if n in ctx.missing_variants]
    if absent:
        home = str(Path.home())
        paths = ", ".join(f"`{str(ctx.missing_variants[n]).replace(home, '~')}.safetensors`"
                          for n in absent)
        lines.append(
            f"**Not measured: no checkpoint at {paths}.** They are `TEViD(profile, "
            "channels=\"act\")` / `channels=\"grad\"` fine-tuned from the DYNAMICS-MAE encoder "
            "exactly like `tevid_mae` (same train runs, same calibration on val) and saved with "
            "`Diagnostician.save_pretrained(OUT/tevid_act/default, ...)`; `python -m "
            "experiments.pipeline ablations=true` trains them (skipping the stages already "
            "done). Once they exist, rerun "
            f"`{ctx.command}`.")
    # The A+G row alone is Table 3's TEViD row: print the table only when an ablation exists.
    table = [_markdown(rows), ""] if len(rows) > 1 else []
    body = "\n".join(["## Table 12 analogue — activations vs gradients (TEViD channel ablation)",
                      "", *table, *lines, "", "Same protocol as Table 3. " + _CI_NOTE])
    ctx.write("eval-table12", body)


def _table15(ctx: _Context) -> None:
    wanted = ctx.cfg.get("lead_delta_methods")
    if wanted is None:
        wanted = [n for n, m in ctx.methods.items() if m.is_tevid] + ["stats_gbdt",
                                                                       "stats_gbdt_curves",
                                                                       "curve_tcn"]
    deltas = [float(d) for d in ctx.cfg.lead_deltas]
    rows, nums = [], {}
    for name in wanted:
        m = ctx.methods.get(name)
        if m is None:
            continue
        # Only runs with a rule trigger time can be cut before it: Healthy runs stay whole and
        # novel runs without a firing time are left out (Tables 16-17 evaluate them).
        runs = [r for r in m.test if not r.is_anomalous or r.fire_epoch is not None]
        row: dict[str, Any] = {"Method": m.display,
                               "Untruncated": _fmt(ctx.ci(event_time_auprc, runs))}
        nums[name] = {}
        for d in deltas:
            cut = truncate_before_fire(runs, d)
            ci = ctx.ci(event_time_auprc, cut)
            pos = int(sum(np.sum(r.event_labels != HEALTHY) for r in cut))
            row[f"Δ = {d:g}"] = f"{_fmt(ci)} (n⁺={pos})"
            nums[name][f"{d:g}"] = {"auprc": _ci_dict(ci), "positive_steps": pos}
        rows.append(row)
    ctx.summary["table15"] = nums
    body = "\n".join([
        "## Table 15 analogue — event-time AUPRC when diagnoses stop Δ epochs before the rule fires",
        "", _markdown(rows), "",
        "Causal integrity (Appendix G.3): for every anomalous test run only the diagnoses at "
        "epochs ≤ fire epoch − Δ are kept (`core_models.metrics.truncate_before_fire`); a "
        "diagnosis at step t sees frames up to t only, so the inputs end Δ epochs before the "
        "labelling rule's first evidence. Healthy runs are kept whole; novel-family runs "
        "without a rule firing time are left out (the untruncated column uses the same runs, "
        "so it differs from Table 3). Δ = 0 already drops the steps after the rule fired. "
        "n⁺ = anomalous steps left. " + _CI_NOTE])
    ctx.write("eval-table15", body)


def _open_set_rows(ctx: _Context, m: MethodEval) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                          dict[str, Any]]:
    test = m.test
    step_auroc = ctx.ci(partial(unknown_auroc, level="step"), test)
    run_auroc = ctx.ci(partial(unknown_auroc, level="run"), test)
    anom_step = ctx.ci(partial(unknown_auroc, level="step", negatives="known_anomalies"), test)
    anom_run = ctx.ci(partial(unknown_auroc, level="run", negatives="known_anomalies"), test)
    ok_all, conf_all = selective_predictions(test, "vacuity")
    try:
        ok, conf = selective_predictions(test, "vacuity", labels=ANOMALOUS_KNOWN)
    except ValueError:
        ok = conf = np.zeros(0)
    full = float(1.0 - ok.mean()) if ok.size else float("nan")
    at80 = risk_coverage_curve(ok, conf).risk_at_coverage(0.8) if ok.size else float("nan")
    disc = {"Model": m.display, "AUROC Unknown vs known (steps)": _fmt(step_auroc),
            "AUROC (runs, max vacuity)": _fmt(run_auroc),
            "AUROC Unknown vs known anomalies (steps)": _fmt(anom_step),
            "… (runs)": _fmt(anom_run),
            "AUGRC (all steps)": _num(augrc(ok_all, conf_all), 4),
            "Error on known anomalies, full coverage": _num(full),
            "… at 80 % coverage": _num(at80)}
    schemes: list[tuple[str, float | None]] = [
        ("calibrated τ_u (checkpoint)", m.vacuity_threshold),
        ("90th percentile of val known-anomaly vacuity", m.abstention_q)]
    srows = []
    for title, tau in schemes:
        if tau is None or not ok.size:
            srows.append({"Model": m.display, "Scheme": title, "τ_u": "N/A",
                          "Coverage (known anomalies)": "N/A", "Selective error (known)": "N/A"})
            continue
        accept = (1.0 - conf) <= tau + 1e-12
        err = float(1.0 - ok[accept].mean()) if accept.any() else float("nan")
        srows.append({"Model": m.display, "Scheme": title, "τ_u": _num(tau),
                      "Coverage (known anomalies)": _num(float(accept.mean())),
                      "Selective error (known)": _num(err)})
    nums = {"auroc_step": _ci_dict(step_auroc), "auroc_run": _ci_dict(run_auroc),
            "auroc_step_vs_known_anomalies": _ci_dict(anom_step),
            "auroc_run_vs_known_anomalies": _ci_dict(anom_run),
            "augrc": augrc(ok_all, conf_all), "error_full": full, "error_at_80": at80,
            "schemes": srows}
    return disc, srows, nums


def _table16(ctx: _Context) -> None:
    tevids = [m for m in _order(ctx) if m.is_tevid]
    disc, schemes, nums = [], [], {}
    for m in tevids:
        d, s, n = _open_set_rows(ctx, m)
        disc.append(d)
        schemes.extend(s)
        nums[m.name] = n
    ctx.summary["table16"] = nums
    rc = _plot_risk_coverage(ctx, ctx.figures / "risk_coverage.png")
    n_unknown = sum(r.label == UNKNOWN for r in tevids[0].test) if tevids else 0
    body = "\n".join([
        "## Table 16 analogue — novel anomaly families → Unknown, and abstention", "",
        (f"{n_unknown} test runs belong to novel families (label `Unknown`, never seen in "
        "training). AUROC scores vacuity: per step (positives: steps of a novel anomaly under "
        "way; negatives: all other steps) and per run (each run's largest vacuity). Appendix "
        "H's \"known vs. unknown anomalies\" keeps only anomalies as negatives (steps of a "
        "known anomalous class, runs labelled with one): the score must tell a novel failure "
        "from a known one, not from healthy training. Errors on "
        "known anomalies count argmax ≠ event label on steps whose truth is a known anomalous "
        "class; 80 % coverage keeps the 80 % least vacuous of those steps. AUGRC: area under the "
        "generalized risk–coverage curve over all test steps (lower is better)."), "",
        _markdown(disc), "",
        ("Abstention schemes (Appendix H.1): the checkpoint's calibrated τ_u and the 90th "
        "percentile of vacuity on validation steps of known anomalies, both chosen on "
        "validation and applied to the test steps of known anomalies:"), "",
        _markdown(schemes), "", _CI_NOTE, "",
        f"![Risk–coverage, test steps]({ctx.figure_link(rc)})"])
    ctx.write("eval-table16", body)


def _table17(ctx: _Context) -> None:
    m = ctx.methods.get(str(ctx.cfg.open_set_method)) or ctx.methods["tevid_mae"]
    tau = m.vacuity_threshold
    cats = list(LABELS)
    novel = [r for r in m.test if r.label == UNKNOWN]
    rows = []
    for kind in sorted({str(r.meta.get("intervention")) for r in novel}):
        runs = [r for r in novel if str(r.meta.get("intervention")) == kind]
        labs = np.concatenate([step_labels(r, tau)[r.event_labels != HEALTHY] for r in runs])
        row: dict[str, Any] = {"True novel family": kind, "Runs": len(runs), "Steps": len(labs)}
        for c in cats:
            row[f"{c} %"] = _num(100.0 * float(np.mean(labs == c)), 1) if labs.size else "N/A"
        rows.append(row)
    truth = [r.label for r in m.test]
    pred = [run_level_label(r, tau) for r in m.test]
    confusion = pd.crosstab(pd.Categorical(truth, categories=cats),
                            pd.Categorical(pred, categories=cats), dropna=False,
                            rownames=["true \\ predicted"], colnames=[""])
    confusion = confusion.loc[[c for c in cats if c in truth]]
    ctx.summary["table17"] = {"novel": rows, "confusion": confusion.to_dict()}
    body = "\n".join([
        (f"## Table 17 analogue — what {m.display} says about novel families, and run-level "
        "confusion"), "",
        ("Per novel family: share of its diagnoses from the onset on, by diagnosed category "
        f"(argmax class, `Unknown` when vacuity > τ_u = {_num(tau)}):"), "",
        _markdown(rows) if rows else "_No novel-family run in the test split._", "",
        ("Run-level confusion matrix of every test run (counts): the predicted category is the "
        "most frequent diagnosis over the run's event window (from the onset on; the whole run "
        "for healthy runs):"), "", confusion.to_markdown(disable_numparse=True)])
    ctx.write("eval-table17", body)


def _table18_19(ctx: _Context) -> None:
    k = int(ctx.cfg.consecutive)
    rows: list[tuple[float, dict[str, Any]]] = []
    nums: dict[str, dict[str, Any]] = {}
    for m in _order(ctx):
        vt, a, n = m.vacuity_threshold, m.alerts, len(m.test)
        row: dict[str, Any] = {"Method": m.display}
        entry: dict[str, Any] = {}
        if a is not None and m.far_threshold is not None:
            cost = ctx.ci(partial(ctx.cost.expected_cost, threshold=m.far_threshold, per=100.0,
                                  consecutive=k, vacuity_threshold=vt), m.test)
            row.update({"N_FA /100": _num(100.0 * a.n_false_alarms / n, 1),
                        "N_MD /100": _num(100.0 * a.n_missed / n, 1),
                        "Avg. lead (epochs)": _num(float(a.leads.mean()) if a.leads.size
                                                   else float("nan"), 2),
                        f"Cost /100 at {ctx.cfg.far:.0%} FAR": _fmt(cost, 1)})
            entry.update(n_fa=a.n_false_alarms, n_md=a.n_missed, n_runs=n,
                         avg_lead=float(a.leads.mean()) if a.leads.size else None,
                         cost_far=_ci_dict(cost))
        else:
            row.update({"N_FA /100": "N/A", "N_MD /100": "N/A", "Avg. lead (epochs)": "N/A",
                        f"Cost /100 at {ctx.cfg.far:.0%} FAR": "N/A"})
        op = m.cost_point
        if op is not None:
            cost_opt = ctx.ci(partial(ctx.cost.expected_cost, threshold=op.threshold, per=100.0,
                                      consecutive=k, vacuity_threshold=vt), m.test)
            s = evaluate_alerts(m.test, op.threshold, consecutive=k, vacuity_threshold=vt)
            row.update({"Cost /100 at val cost-optimal τ": _fmt(cost_opt, 1),
                        "(N_FA, N_MD) /100 there": f"({_num(100.0 * s.n_false_alarms / n, 1)}, "
                                                   f"{_num(100.0 * s.n_missed / n, 1)})"})
            entry.update(cost_optimal=_ci_dict(cost_opt), cost_threshold=op.threshold,
                         val_cost_per_run=op.cost)
        est = (entry.get("cost_far") or {}).get("estimate")
        rows.append((float(est) if est is not None and math.isfinite(est) else math.inf, row))
        nums[m.name] = entry
    ctx.summary["table18_19"] = nums
    # Cheapest first; the sort is stable, so ties keep the Table 3 order.
    rows.sort(key=lambda kr: kr[0])
    c = ctx.cost
    alert_all = [m for m in ctx.methods.values() if (op := m.cost_point) is not None
                 and op.n_missed == 0 and op.far == 1.0]
    degenerate = ""
    if alert_all:
        val = operating_point_runs(alert_all[0].val)
        share = sum(r.is_anomalous for r in val) / len(val)
        degenerate = (
            f" For {len(alert_all)} of {len(ctx.methods)} methods the validation optimum "
            "alerts on every validation run (no miss, every healthy run a false alarm): with "
            f"{share:.0%} of those runs anomalous, a miss costing {c.c_md / c.c_fa:g} false "
            "alarms and every early alert earning lead, alerting on everything is cheapest, so "
            "that column says more about the cost model on this mix than about the methods.")
    body = "\n".join([
        "## Tables 18–19 analogue — diagnostic counts and Appendix I cost per 100 test runs", "",
        _markdown([r for _, r in rows]), "",
        f"Cost = C_FA·N_FA + C_MD·N_MD + C_Lead·Σ lead with (C_FA, C_MD, C_Lead) = "
        f"({c.c_fa:g}, {c.c_md:g}, {c.c_lead:g}) (`tevid_hpo.cost.CostModel.expected_cost`, "
        "per 100 test runs; lower is better; leads vs the rule firing time, detections without "
        "one add no lead term). Two frozen operating points, both chosen on validation runs: the "
        f"{ctx.cfg.far:.0%}-FAR threshold of Table 3 (FAR per healthy run, so N_FA per 100 runs "
        "depends on the healthy share of the test split) and the threshold that minimises the "
        "cost on validation (`CostModel.best_threshold`). Sorted by cost at the FAR threshold."
        + degenerate + " " + _CI_NOTE])
    ctx.write("eval-table18-19", body)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _colors(ctx: _Context) -> dict[str, str]:
    """A fixed colour per method, the same in both figures; TEViD variants stand out in dark
    colours, baselines take the lighter tab10 hues (grey is kept for the chance line)."""
    light = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
             "tab:olive", "tab:cyan"]
    dark = ["black", "tab:red", "darkgreen", "navy"]
    out, i, j = {}, 0, 0
    for m in _order(ctx):
        if m.is_tevid:
            out[m.name], j = dark[j % len(dark)], j + 1
        else:
            out[m.name], i = light[i % len(light)], i + 1
    return out


def _plot_pr_curves(ctx: _Context, path: Path) -> Path:
    # The object-oriented Figure API needs no pyplot backend or global state (headless-safe).
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 5.5))
    ax = fig.subplots()
    prevalence = None
    colors = _colors(ctx)
    for m in _order(ctx):
        y = np.concatenate([r.event_labels != HEALTHY for r in m.test])
        s = np.concatenate([1.0 - r.probs[:, _HEALTHY_COL] for r in m.test])
        if not y.any() or y.all():
            continue
        prec, rec, _ = precision_recall_curve(y, s)
        ap = average_precision_score(y, s)
        ax.step(rec, prec, where="post", lw=2.2 if m.is_tevid else 1.2, color=colors[m.name],
                label=f"{m.display} (AP {ap:.2f})")
        prevalence = float(y.mean())
    if prevalence is not None:
        ax.axhline(prevalence, color="silver", ls=":", lw=1, label=f"chance ({prevalence:.2f})")
    ax.set(xlabel="recall (anomalous steps)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="Event-time precision–recall, held-out test split")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no overlap
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _plot_risk_coverage(ctx: _Context, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 5.5))
    ax = fig.subplots()
    colors = _colors(ctx)
    for m in _order(ctx):
        if not m.has_classes:
            continue
        # TEViD abstains by vacuity; class-probability baselines can only rank by max probability.
        kind = "vacuity" if m.is_tevid else "max_prob"
        ok, conf = selective_predictions(m.test, kind)
        rc = risk_coverage_curve(ok, conf)
        ax.plot(rc.coverage[1:], rc.selective_risk[1:], lw=2.2 if m.is_tevid else 1.2,
                color=colors[m.name],
                label=f"{m.display} ({'1 − vacuity' if m.is_tevid else 'max p'}; "
                      f"AUGRC {augrc(ok, conf):.3f})")
    ax.axvline(0.8, color="grey", ls=":", lw=1)
    ax.set(xlabel="coverage (fraction of test steps answered)",
           ylabel="selective risk (error among answered)", xlim=(0, 1), ylim=(0, 1),
           title="Risk–coverage, all test steps (novel steps are errors unless abstained)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no overlap
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Hydra entry point; ``--quick`` is accepted as a shorthand for ``quick=true``."""
    import hydra

    args = list(sys.argv[1:] if argv is None else argv)
    command = " ".join([COMMAND, *args])
    sys.argv = [sys.argv[0], *("quick=true" if a == "--quick" else a for a in args)]

    @hydra.main(config_path=str(CONF), config_name="evaluate", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        run_evaluation(cfg, command=command)

    _main()


if __name__ == "__main__":
    main()
