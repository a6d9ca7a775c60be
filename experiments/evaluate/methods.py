"""The evaluated methods: TEViD checkpoints and fitted baselines scored on validation and test
runs (:class:`MethodEval`), their run memory, and the operating points chosen on validation and
frozen (5 %-FAR, cost-optimal and abstention thresholds).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from core_models.baselines import BASELINES, make_baseline
from core_models.checkpoint import checkpoint_paths
from core_models.memory import remember, select_memory
from core_models.metrics import (
    ANOMALOUS_KNOWN,
    AlertSummary,
    RunPrediction,
    evaluate_alerts,
    threshold_at_far,
)
from data_factory.labelers.rules import RunLabel
from data_factory.labels import HEALTHY, sets_operating_points
from data_factory.store import Run
from experiments.evaluate.leakage import LeakageError, LeakageGuard
from experiments.evaluate.records import predictions, tevid_run_scores
from tevid_hpo.cost import CostModel, OperatingPoint
from tevid_hpo.diagnostician import Diagnostician

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
