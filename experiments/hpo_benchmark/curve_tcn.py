"""The Curve-TCN early stopper: fitted on the factory corpus (or a toy one in quick mode) with
TEViD's threshold protocol (:func:`fit_curve_tcn`), its alerts on a recording
(:class:`CurveTCNDetector`) and the Hyperband pruner that stops on them (:class:`CurveTCNPruner`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.pruners import HyperbandPruner
from optuna.trial import FrozenTrial
from safetensors.torch import load_file, save_file

from core_models.baselines.curve_tcn import CausalTCN, CurveTCN
from core_models.baselines.features import CURVE_FEATURES
from core_models.calibration import ALERT_LABELS, RunPredictions, fit_class_thresholds
from core_models.calibration import first_alert as first_class_alert
from data_factory.labelers.rules import RunLabel
from data_factory.labels import HEALTHY, INSTABILITY, KNOWN_LABELS, sets_operating_points
from experiments.hpo_benchmark.config import _say
from experiments.hpo_benchmark.record import TrialRecording, _write_atomic
from tevid_hpo.decision import (
    DEFAULT_PRUNE_ON,
    DEFAULT_SPARE_LEADERS,
    check_prune_on,
    check_spare_leaders,
    spares,
)
from tevid_hpo.pruners import keep_rung_places, record_prune_reason, study_standing

#: Trial user attribute with the Curve-TCN's confirmed alerts (read by :class:`CurveTCNPruner`).
CURVE_ATTR = "curve_tcn"


@dataclass
class CurveTCNDetector:
    """A fitted Curve-TCN with its frozen alert thresholds: the scalar-curve early stopper.

    Attributes:
        model: the fitted :class:`~core_models.baselines.curve_tcn.CurveTCN`.
        tau_c: per-class alert thresholds (5 % false alarms on healthy validation runs).
        consecutive: confirmations needed (3, as TEViD's rule).
        source: what it was fitted on.
    """

    model: CurveTCN
    tau_c: dict[str, float]
    consecutive: int
    source: str

    def alerts(self, recording: TrialRecording, prune_on: Sequence[str] = DEFAULT_PRUNE_ON
               ) -> dict[str, dict[str, Any]]:
        """First confirmed alert of each ``prune_on`` label over the whole recording.

        The network is causal, so the alert at capture ``i`` is what a live Curve-TCN on the
        curve up to that step raises; replaying "alerts with ``epoch <= t``" at epoch ``t`` is
        exact.
        """
        run = recording.as_run()
        probs = self.model.predict_proba(run)
        out: dict[str, dict[str, Any]] = {}
        for label in prune_on:
            if label not in self.tau_c:
                continue
            hit = first_class_alert(probs, np.zeros(len(probs)), {label: self.tau_c[label]},
                                    tau_u=1.0, k=self.consecutive)
            if hit is not None:
                i = hit[0]
                out[label] = {"label": label, "step": int(run.frames.steps[i]),
                              "epoch": int(run.frames.epochs[i]),
                              "confidence": round(float(probs[i, KNOWN_LABELS.index(label)]), 4),
                              "reason": "curve-tcn"}
        return out


def _light_corpus_runs(root: Path, split: str) -> tuple[list[SimpleNamespace], list[RunLabel]]:
    """The labelled runs of one corpus split, with what Curve-TCN reads only.

    Like :func:`experiments.pipeline.split_runs` but without loading the frame tensors (the
    frame steps and epochs are read alone from the safetensors file): hundreds of runs in a few
    MB instead of hundreds.
    """
    from safetensors import safe_open

    from data_factory.store import FRAMES, RunStore
    from experiments.pipeline import labelled_runs, load_labels

    store, labels = RunStore(root), load_labels(root)
    runs, labs = [], []
    for run_id, run in labelled_runs(store, labels, split):
        with safe_open(str(run.path / FRAMES), framework="pt") as f:
            frames = SimpleNamespace(steps=f.get_tensor("steps").numpy(),
                                     epochs=f.get_tensor("epochs").numpy())
        runs.append(SimpleNamespace(run_id=run_id, meta=run.meta, steps=run.steps,
                                    frames=frames))
        labs.append(labels[run_id])
    return runs, labs


def _toy_corpus(seed: int = 0) -> tuple[list[Any], list[RunLabel], list[Any], list[RunLabel]]:
    """A synthetic Curve-TCN corpus for ``--quick`` (never for a reported number): toy runs
    whose loss decays, or explodes from a random step on (Instability from there)."""
    from core_models.baselines.toy import toy_run

    rng = np.random.default_rng(seed)

    def make(n: int, tag: str) -> tuple[list[Any], list[RunLabel]]:
        runs, labs = [], []
        for i in range(n):
            explode = int(rng.integers(30, 90)) if i % 2 else None
            run = toy_run(n_steps=120, every=10, explode_at=explode, seed=int(rng.integers(1e6)),
                          run_id=f"{tag}-{i}")
            runs.append(run)
            labs.append(RunLabel(INSTABILITY, explode, explode + 10) if explode is not None
                        else RunLabel(HEALTHY, None, None))
        return runs, labs

    return (*make(12, "train"), *make(8, "val"))


def fit_curve_tcn(cfg: DictConfig, cache: Path) -> CurveTCNDetector | None:
    """Fit (or load from ``cache``) the Curve-TCN early stopper, or ``None`` to skip it.

    ``curve_tcn.source``: ``corpus`` — the factory corpus at ``cfg.corpus`` (train runs fit,
    val runs stop training and set the thresholds; skipped with a message when absent);
    ``toy`` — a synthetic corpus (``--quick`` only: exercises the code, measures nothing);
    ``off``.
    """
    c = cfg.curve_tcn
    source = str(c.source)
    if source == "off":
        return None
    kwargs = dict(OmegaConf.to_container(c.model, resolve=True) or {})
    if source == "toy":
        train, train_l, val, val_l = _toy_corpus(int(cfg.seeds[0]))
        what, tag = "synthetic toy corpus (quick mode: not a measurement)", "toy"
    elif source == "corpus":
        root = Path(cfg.corpus).expanduser()
        if not (root / "labels.csv").is_file():
            _say(f"no labelled factory corpus at {root} (labels.csv): skipping Hyperband + "
                 "Curve-TCN. It is fitted on the corpus's train split only, never on benchmark "
                 "recordings (that would leak); build one with `make corpus labels`.")
            return None
        from experiments.pipeline import corpus_hash

        tag = corpus_hash(root)
        train, train_l = _light_corpus_runs(root, "train")
        val, val_l = _light_corpus_runs(root, "val")
        if not train or not val:
            _say(f"corpus {root} has {len(train)} train / {len(val)} val labelled runs: "
                 "skipping Hyperband + Curve-TCN")
            return None
        what = f"factory corpus {tag}: {len(train)} train runs (fit), {len(val)} val runs"
    else:
        raise ValueError(f"curve_tcn.source must be corpus, toy or off, got {source!r}")
    # "operating_points" names the threshold protocol, so a cache fitted under another is refit.
    spec = {"kwargs": kwargs, "far": float(c.far), "consecutive": int(c.consecutive),
            "corpus": tag, "seed": 0, "operating_points": "healthy-references"}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f"curve_tcn-{digest}"
    model = CurveTCN(seed=0, **kwargs)
    if (path / "model.safetensors").is_file() and (path / "model.json").is_file():
        meta = json.loads((path / "model.json").read_text())
        net = CausalTCN(len(CURVE_FEATURES), len(KNOWN_LABELS), model.channels,
                        model.kernel_size, model.dilations, model.dropout)
        net.load_state_dict(load_file(str(path / "model.safetensors")))
        model.model_ = net.eval()
        model.mean_, model.std_ = np.asarray(meta["mean"]), np.asarray(meta["std"])
        _say(f"Curve-TCN loaded from {path} ({meta['source']})")
        return CurveTCNDetector(model, meta["tau_c"], int(c.consecutive), meta["source"])
    t0 = time.perf_counter()
    _say(f"fitting Curve-TCN on the {what} ...")
    model.fit(train, train_l, val, val_l)
    from experiments.pipeline import intervention_of

    # TEViD's protocol (experiments.pipeline): every alert class shares the 5 %-FAR budget on
    # the healthy-reference val runs (sets_operating_points); tau_u = 1, Curve-TCN never abstains.
    val_preds = [RunPredictions(model.predict_proba(r), np.zeros(len(r.frames.steps)), lab.label)
                 for r, lab in zip(val, val_l)
                 if sets_operating_points(lab.label, intervention_of(r))]
    tau_c = fit_class_thresholds(val_preds, tau_u=1.0, target_far=float(c.far),
                                 alert_labels=ALERT_LABELS, k=int(c.consecutive))
    _say(f"Curve-TCN fitted in {time.perf_counter() - t0:.0f} s (best epoch "
         f"{model.best_epoch_}); thresholds {tau_c}")
    path.mkdir(parents=True, exist_ok=True)
    assert model.model_ is not None
    save_file({k: v.contiguous() for k, v in model.model_.state_dict().items()},
              str(path / "model.safetensors"))
    _write_atomic(path / "model.json", json.dumps({
        "mean": model.mean_.tolist(), "std": model.std_.tolist(), "tau_c": tau_c,
        "source": what, "spec": spec, "best_epoch": model.best_epoch_}, indent=1))
    return CurveTCNDetector(model, tau_c, int(c.consecutive), what)


class CurveTCNPruner(HyperbandPruner):
    """Hyperband that first prunes a trial whose stored Curve-TCN alert is in ``prune_on``.

    The Curve-TCN counterpart of ``TEViDPruner(HyperbandPruner(...))``: the objective publishes
    the detector's confirmed alerts as ``trial.user_attrs["curve_tcn"] = {"alerts": {label:
    {...}}}`` and the pruner decides from the stored attribute. Reasons are recorded where
    :func:`tevid_hpo.pruners.prune_reason` reads them, with ``pruner="CurveTCN"``.

    The alert passes the same leader guard as the TEViD arms (``spare_leaders``,
    :func:`tevid_hpo.decision.spares`): a trial whose standing in the search
    (:func:`tevid_hpo.pruners.study_standing`) reaches that share is left to Hyperband, so the
    two signals are compared under one stop rule.

    Example:
        >>> p = CurveTCNPruner(min_resource=1, max_resource=9, reduction_factor=3)
        >>> isinstance(p, HyperbandPruner), p.prune_on, p.spare_leaders
        (True, ('Instability', 'Overfitting'), 0.9)
    """

    def __init__(self, min_resource: int = 1, max_resource: int = 27,
                 reduction_factor: int = 3, prune_on: Sequence[str] = DEFAULT_PRUNE_ON,
                 spare_leaders: float | None = DEFAULT_SPARE_LEADERS) -> None:
        super().__init__(min_resource=min_resource, max_resource=max_resource,
                         reduction_factor=reduction_factor)
        self.prune_on = check_prune_on(prune_on)
        self.spare_leaders = check_spare_leaders(spare_leaders)

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        """Prune on a stored Curve-TCN alert, else as Hyperband."""
        alerts = (trial.user_attrs.get(CURVE_ATTR) or {}).get("alerts", {})
        hits = [a for label, a in alerts.items() if label in self.prune_on]
        if hits:
            first = min(hits, key=lambda a: a["step"])
            reason = {"pruner": "CurveTCN", "rule": "alert", **first,
                      "report_step": trial.last_step}
            # The guard reads the study's trials: only when it is on.
            leader = self.spare_leaders is not None and spares(
                reason, study_standing(study, trial), self.spare_leaders)
            if not leader:
                record_prune_reason(study, trial, reason)
                keep_rung_places(self, study, trial)   # as TEViDPruner: same rung competitors
                return True
        if not super().prune(study, trial):
            return False
        record_prune_reason(study, trial, {"pruner": "HyperbandPruner", "rule": "wrapped",
                                           "report_step": trial.last_step})
        return True
