"""Score every method on the recorded external runs, on TEViD's capture grid.

Methods (all read only what a run exposes causally; the truth of :mod:`.truth` is attached
afterwards):

* ``tevid`` — a checkpoint (default the shipped one) scored **offline** from the recorded
  frames by :func:`tevid_offline_scores` (the evaluation's
  :func:`experiments.evaluate.records.tevid_run_scores`, burn-in withheld, so offline ==
  streaming), with its own confirmed alert where the recording's monitor ran this checkpoint
  (the live alert); ``tevid_far`` — the same scores with the 5 %-FAR threshold of the baselines
  (chosen on external-dev). The live diagnoses stay in the recording (what a user saw):
  :func:`tevid_live_scores`.
* the Table 3 baselines of :mod:`core_models.baselines`, built, seeded and fitted as
  ``experiments.evaluate`` does (its config's keyword arguments; fit on factory *train* runs, tuned
  / early-stopped on factory *val* runs — never on external runs; Embedding-CPD embeds with the
  shipped checkpoint's TEViD), scored with :func:`experiments.evaluate.predictions`;
* the users' rules of :mod:`.rules` (their own stopping step; score 1 from then on).

Score-based methods alert with the 3-consecutive rule at the threshold whose false-alarm rate on
the healthy references of **external-dev** is ≤ 5 %; that choice, and every fit, goes through a
:class:`~experiments.evaluate.LeakageGuard` built on the external-test runs, which raises if any
external-test run (``split="external-test"``) would reach it.

Example:
    >>> sorted(SCORED)[:3]
    ['bocpd', 'curve_tcn', 'cusum']
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from core_models.baselines import BASELINES, make_baseline, run_id_of
from core_models.baselines.base import RunScores
from core_models.checkpoint import checkpoint_digest
from core_models.metrics import RunPrediction, evaluate_alerts, threshold_at_far
from core_models.telemetry import capture_scalars
from data_factory.frames import Frame
from data_factory.labels import HEALTHY, KNOWN_LABELS
from data_factory.store import Run
from experiments.evaluate import LeakageGuard, predictions
from experiments.external.record import as_monitored
from experiments.external.rules import USER_RULES
from experiments.external.suite import DEV_HALF, TEST_HALF
from experiments.external.truth import ExternalTruth

__all__ = [
    "SCORED",
    "MethodScores",
    "replay_alert",
    "replay_frames",
    "score_methods",
    "tevid_live_scores",
    "tevid_offline_scores",
]

_HEALTHY = KNOWN_LABELS.index(HEALTHY)
#: Baselines scored (``core_models.baselines`` names) and how the tables call them.
SCORED: dict[str, str] = {
    "bocpd": "BOCPD (loss residuals)", "cusum": "CUSUM (loss residuals)",
    "nan_rule": "NaN rule (ThresholdPruner-style)", "rules": "AUTOTRAINER-style rules",
    "curve_tcn": "Curve-TCN", "stats_gbdt": "Stats-GBDT",
    "stats_gbdt_curves": "Stats-GBDT + scalar curves",
    "embedding_cpd": "Embedding-CPD (frozen shipped TEViD)",
}
_CONF = Path(__file__).resolve().parents[1] / "conf" / "evaluate.yaml"


@dataclass
class MethodScores:
    """One method on both halves.

    Attributes:
        name, display: key and table name.
        kind: ``"TEViD"``, ``"baseline"`` or ``"user rule"``.
        preds: ``{half: [RunPrediction]}`` over the counted runs.
        alert_steps: ``{half: {run_id: first alert step or None}}``.
        threshold: the score threshold chosen on external-dev (``None``: the method's own rule).
        notes: caveats.
    """

    name: str
    display: str
    kind: str
    preds: dict[str, list[RunPrediction]] = field(default_factory=dict)
    alert_steps: dict[str, dict[str, int | None]] = field(default_factory=dict)
    threshold: float | None = None
    notes: list[str] = field(default_factory=list)


def tevid_live_scores(run: Run) -> RunScores:
    """The shipped TEViD's live diagnoses of ``run`` as :class:`RunScores` (vacuity in
    ``extras``)."""
    probs = np.clip(np.asarray(run.arrays["tevid_probs"], np.float64), 0.0, 1.0)
    steps = np.asarray(run.arrays["tevid_steps"], np.int64)
    fr = run.frames
    epochs = np.where(fr.epochs >= 0, fr.epochs, fr.steps // int(run.meta["steps_per_epoch"]))
    if len(steps) != len(fr.steps) or not np.array_equal(steps, fr.steps):
        raise ValueError(f"{run.run_id}: live diagnoses do not match the recorded frames")
    return RunScores("tevid", run.run_id, steps, epochs, 1.0 - probs[:, _HEALTHY],
                     probs / probs.sum(1, keepdims=True).clip(1e-12),
                     extras={"vacuity": np.clip(run.arrays["tevid_vacuity"], 0.0, 1.0)})


def tevid_offline_scores(diag: Any, run: Run) -> RunScores:
    """``diag``'s (a :class:`tevid_hpo.Diagnostician`) diagnoses of the recorded ``run``, scored
    offline from its frames exactly as the evaluation scores factory runs (burn-in withheld).
    Raw window outputs: no run memory (compare them with the live ones through
    :class:`core_models.memory.RunMemory`).

    Example:
        >>> from tevid_hpo import Diagnostician
        >>> callable(tevid_offline_scores)
        True
    """
    from experiments.evaluate.records import tevid_run_scores

    return tevid_run_scores(diag, as_monitored(run), "tevid")


def replay_frames(run: Run) -> list[Frame]:
    """``run``'s recorded frames with the training scalars the live monitor gave each of them.

    The store keeps scalars in ``steps.csv``, not on the frames; a telemetry checkpoint streamed
    bare frames would read every scalar as unknown, which no live run does.

    Example:
        >>> callable(replay_frames)
        True
    """
    frames = list(run.frames)
    if run.steps is None:
        return frames
    scalars = capture_scalars(as_monitored(run).steps, [f.step for f in frames])
    return [f if f.scalars else dataclasses.replace(f, scalars=s) for f, s in zip(frames, scalars)]


def replay_alert(diag: Any, run: Run) -> int | None:
    """``diag``'s own first alert on ``run``, streaming its recorded frames (with their training
    scalars, :func:`replay_frames`) through :meth:`Diagnostician.update` (run memory and alert
    rule included); the monitor's non-finite-loss rule from ``steps.csv``'s ``finite``.

    Example:
        >>> callable(replay_alert)
        True
    """
    diag.reset()
    for f in replay_frames(run):
        diag.update(f, step=f.step, epoch=f.epoch)
    first = diag.first_alert[0] if diag.first_alert is not None else None
    st = run.steps
    if st is not None and "finite" in st and (st["finite"] == 0).any():
        bad = int(st.loc[st["finite"] == 0, "step"].iloc[0])
        first = bad if first is None else min(first, bad)
    return first


def _same_checkpoint(diag: Any, run: Run, digest: str | None = None) -> bool:
    """Whether ``run`` was recorded with ``diag``'s checkpoint: the same files, not only the same
    path — a checkpoint shipped after the recording sits at the recording's path. A recording
    without a digest (older ones) is replayed, never taken for the current checkpoint's.
    ``digest``: ``checkpoint_digest(diag.source)`` when the caller already has it (one read of
    the files for a whole suite instead of one per run)."""
    src = getattr(diag, "source", None)
    if src is None or str(src) != str(run.meta.get("checkpoint")):
        return False
    return run.meta.get("checkpoint_digest") == (digest or checkpoint_digest(src))


def _live_alert(run: Run) -> int | None:
    alerts = run.meta.get("tevid_alerts") or {}
    steps = [int(a["step"]) for a in alerts.values() if a.get("step") is not None]
    return min(steps) if steps else None


def _latched(run: Run, name: str, step: int | None) -> RunScores:
    grid = run.frames.steps
    epochs = grid // int(run.meta["steps_per_epoch"])
    score = np.zeros(len(grid)) if step is None else (grid >= step).astype(float)
    return RunScores(name, run.run_id, grid, epochs, score)


def _with_alert(preds: Sequence[RunPrediction], runs: Sequence[Run],
                alert: Mapping[str, int | None]) -> list[RunPrediction]:
    spe = {r.run_id: float(r.meta["steps_per_epoch"]) for r in runs}
    return [dataclasses.replace(p, alert_step=alert[p.run_id],
                                alert_epoch=None if alert[p.run_id] is None
                                else alert[p.run_id] / spe[p.run_id]) for p in preds]


def _baseline_kwargs(name: str) -> dict[str, Any]:
    cfg = OmegaConf.load(_CONF)
    kw = cfg.baselines.get(name) if cfg.get("baselines") else None
    return dict(OmegaConf.to_container(kw, resolve=True) or {}) if kw else {}


def score_methods(runs: Mapping[str, Sequence[Run]], truths: Mapping[str, ExternalTruth],
                  factory: tuple[Sequence[Any], Sequence[Any], Mapping[str, Any]] | None,
                  guard: LeakageGuard, diag_model: Any = None, seed: int = 0,
                  far: float = 0.05, consecutive: int = 3, baselines: Sequence[str] | None = None,
                  log: Any = print, diag: Any = None) -> dict[str, MethodScores]:
    """Every method on ``runs`` (``{half: counted runs}``).

    Args:
        runs: the counted recordings of each half.
        truths: ground truth by run id.
        factory: ``(train runs, val runs, {run_id: RunLabel})`` of the factory corpus the
            baselines learn from (``None``: skip the baselines).
        guard: built on the external-test runs; every fit and threshold choice is admitted.
        diag_model: the shipped TEViD module (Embedding-CPD embeds with it).
        baselines: which baselines (default: all of :data:`SCORED`).
        diag: the :class:`tevid_hpo.Diagnostician` TEViD is scored with, offline (default the
            shipped checkpoint).
    """
    labels = {rid: t.label for rid, t in truths.items()}
    halves = [h for h in (DEV_HALF, TEST_HALF) if runs.get(h)]
    out: dict[str, MethodScores] = {}

    def finish(m: MethodScores, native: Mapping[str, int | None] | None) -> None:
        if native is not None:    # the method's own stopping rule
            for h in halves:
                m.preds[h] = _with_alert(m.preds[h], runs[h], native)
                m.alert_steps[h] = dict(evaluate_alerts(m.preds[h], None).alert_steps)
            return
        dev = guard.admit(f"alert threshold ({far:.0%} FAR)", m.name, m.preds.get(DEV_HALF, []))
        try:
            m.threshold = threshold_at_far(list(dev), far, consecutive=consecutive)
        except ValueError as err:
            m.notes.append(f"no threshold: {err}")
            m.threshold = float("inf")
        for h in halves:
            m.alert_steps[h] = dict(evaluate_alerts(m.preds[h], m.threshold,
                                                    consecutive=consecutive).alert_steps)

    # --- TEViD, scored offline from the recorded frames with ``diag``
    who = "TEViD shipped" if diag is None else f"TEViD {Path(str(diag.source)).stem}"
    if diag is None:
        from tevid_hpo import Diagnostician

        diag = Diagnostician.from_pretrained(device="cpu")
    live = MethodScores("tevid", f"{who} (its own alert)", "TEViD")
    thr = MethodScores("tevid_far", f"{who} @ 5 % FAR (dev threshold)", "TEViD")
    for h in halves:
        preds, _ = predictions(lambda r: tevid_offline_scores(diag, r), runs[h], labels,
                               evidential=True)
        live.preds[h] = preds
        thr.preds[h] = [dataclasses.replace(p) for p in preds]
    every = [r for h in halves for r in runs[h]]
    # the live alert where the monitor ran this checkpoint; else the checkpoint's own, replayed
    src = getattr(diag, "source", None)
    digest = checkpoint_digest(src) if src is not None else None
    finish(live, {r.run_id: _live_alert(r) if _same_checkpoint(diag, r, digest)
                  else replay_alert(diag, r) for r in every})
    finish(thr, None)
    out["tevid"], out["tevid_far"] = live, thr
    log("[external] TEViD scored")

    # --- baselines, fitted on the factory corpus only
    if factory is not None:
        train, val, flabels = factory
        for name in (baselines if baselines is not None else list(SCORED)):
            kw = _baseline_kwargs(name)
            if name == "embedding_cpd":
                if diag_model is None:
                    continue
                kw.update(model=diag_model, device="cpu")
            cls = BASELINES[name]
            if "seed" in inspect.signature(cls).parameters:
                kw.setdefault("seed", seed)
            b = make_baseline(name, **kw)
            fit = guard.admit("fit", name, train)
            tune = guard.admit("tuning / early stopping", name, val)
            b.fit(fit, [flabels[run_id_of(r)] for r in fit], tune,
                  [flabels[run_id_of(r)] for r in tune])
            m = MethodScores(name, SCORED[name], "baseline")
            for h in halves:
                m.preds[h], _ = predictions(b.score_run, runs[h], labels)
            finish(m, None)
            out[name] = m
            log(f"[external] {name} fitted on {len(fit)} factory runs and scored")

    # --- users' rules
    for name, (display, rule) in USER_RULES.items():
        stops = {r.run_id: rule(r) for h in halves for r in runs[h]}
        m = MethodScores(name, display, "user rule")
        for h in halves:
            m.preds[h], _ = predictions(
                lambda r, n=name, s=stops: _latched(r, n, s[r.run_id]), runs[h], labels)
        finish(m, stops)
        out[name] = m
    log("[external] user rules scored")
    return out
