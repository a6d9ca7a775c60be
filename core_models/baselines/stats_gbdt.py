"""Stats-GBDT: LightGBM on causal per-layer activation/gradient summary statistics.

The honest strong baseline of DESIGN §6: it sees the *same* internal-state information TEViD does,
but as a few hand-made numbers per layer instead of a video. At each capture step it classifies
into :data:`~data_factory.labels.KNOWN_LABELS` from the frame statistics
(``act{i}_{rms,mean,std,absmax,nonpos_frac}`` and the same for ``grad``, magnitudes in ``log10``;
see :func:`~core_models.baselines.features.frame_stat_features`), the shallowest-to-deepest ``rms``
log-ratios and the frame's finiteness flag. :class:`StatsCurvesGBDT` (``stats_gbdt_curves``) adds
the scalar-curve features of :data:`~core_models.baselines.features.CURVE_FEATURES` (loss level,
spread, spikes, learning rate, gradient norm, non-finite flags) — internal state *and* scalar
telemetry, which TEViD does not see, so it is reported as a hybrid, not as the layer-statistics
baseline. Each feature is summarised over the last ``window`` frames by its current value, mean,
least-squares slope, min and max (:func:`~core_models.baselines.features.window_features`; the
window is left-padded with the first frame, like TEViD's clips). Rows are the capture steps of the training runs,
labelled with the per-frame event labels (Unknown steps are left out, as in TEViD's training),
weighted so every present class has the same total weight.

Training uses the training runs only; the number of boosting rounds is early-stopped on the
validation runs' multi-class log-loss (and, with ``param_grid``, the parameter set is chosen by
validation event-time AUPRC). LightGBM is an optional dependency (``pip install
'tevid-hpo[lightgbm]'``), imported on first use.

Example:
    >>> from core_models.baselines.toy import toy_run
    >>> from data_factory.labelers.rules import RunLabel
    >>> runs = [toy_run(n_steps=200, seed=s, explode_at=100 if s % 2 else None) for s in range(6)]
    >>> labels = [RunLabel("Instability", 100, 100) if s % 2 else RunLabel("Healthy", None, None)
    ...           for s in range(6)]
    >>> model = StatsGBDT(num_boost_round=20, min_child_samples=2).fit(runs[:4], labels[:4])
    >>> s = model.score_run(runs[5])
    >>> bool(s.score[12:].mean() > s.score[:8].mean())
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from core_models.baselines.base import BaselineRun, LabelLike, NotFittedError, predict_runs
from core_models.baselines.classifier import CaptureClassifier, labelled_captures
from core_models.baselines.features import (
    CURVE_FEATURES,
    capture_grid,
    curve_features,
    frame_stat_features,
    parse_stat_name,
    step_series,
    window_features,
)
from core_models.metrics import event_time_auprc
from data_factory.labels import KNOWN_LABELS

__all__ = ["StatsCurvesGBDT", "StatsGBDT", "stats_features"]


def stats_features(run: BaselineRun, stat_names: Sequence[str], window: int = 10,
                   curves: bool = False) -> tuple[np.ndarray, list[str]]:
    """Stats-GBDT's causal feature matrix ``[n_captures, F]`` and its column names
    (``curves``: also the scalar-curve features).

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> run = toy_run(n_steps=30)
        >>> x, names = stats_features(run, ["act0_rms", "grad0_rms"], window=4)
        >>> x.shape, names[:2]
        ((3, 25), ['act0_rms@cur', 'act0_rms@mean'])
        >>> stats_features(run, ["act0_rms", "grad0_rms"], window=4, curves=True)[0].shape
        (3, 75)
    """
    series = step_series(run)
    grid = capture_grid(run, series)
    xs, sn = frame_stat_features(run, stat_names)
    if not curves:
        return window_features(xs, sn, window)
    xc = curve_features(run, grid, series)
    x = np.concatenate([xs, xc], axis=1)
    return window_features(x, sn + list(CURVE_FEATURES), window)


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    classes, counts = np.unique(y, return_counts=True)
    per_class = {c: len(y) / (len(classes) * n) for c, n in zip(classes, counts)}
    return np.array([per_class[c] for c in y], dtype=np.float64)


class StatsGBDT(CaptureClassifier):
    """LightGBM multiclass over :data:`KNOWN_LABELS` on windowed per-layer frame statistics.

    Args:
        window: frames summarised per row (``W``; TEViD's window by default).
        channels: ``"both"``, ``"act"`` or ``"grad"`` — which per-layer statistics are used
            (the Table 12 ablation).
        num_boost_round: maximum boosting rounds (early-stopped on validation when given).
        early_stopping_rounds: patience of the early stopping.
        learning_rate, num_leaves, min_child_samples, feature_fraction, bagging_fraction,
        lambda_l2: LightGBM parameters.
        param_grid: optional list of parameter overrides; each is trained and the best by
            validation event-time AUPRC is kept (needs validation runs).
        class_weight: ``"balanced"`` (every present class gets the same total weight) or
            ``None``.
        n_jobs: LightGBM threads.
        seed: LightGBM seed (training is deterministic given it).

    Attributes (after :meth:`fit`):
        booster_: the trained ``lightgbm.Booster``.
        stat_names_: the raw statistics used, in column order.
        feature_names_: all feature columns.
        best_iteration_: boosting rounds kept.
        validation_: ``[(params, validation AUPRC), ...]`` when ``param_grid`` was searched.
    """

    name = "stats_gbdt"
    #: Whether the scalar-curve features are read too (:class:`StatsCurvesGBDT`).
    curves = False

    def __init__(self, window: int = 10, channels: Literal["both", "act", "grad"] = "both",
                 num_boost_round: int = 400, early_stopping_rounds: int = 30,
                 learning_rate: float = 0.05, num_leaves: int = 31, min_child_samples: int = 20,
                 feature_fraction: float = 0.8, bagging_fraction: float = 0.8,
                 lambda_l2: float = 1.0, param_grid: Sequence[Mapping[str, Any]] = (),
                 class_weight: Literal["balanced"] | None = "balanced", n_jobs: int = 1,
                 seed: int = 0) -> None:
        if channels not in ("both", "act", "grad"):
            raise ValueError(f"channels must be 'both', 'act' or 'grad', got {channels!r}")
        self.window, self.channels = int(window), channels
        self.num_boost_round, self.early_stopping_rounds = int(num_boost_round), int(
            early_stopping_rounds)
        self.params: dict[str, Any] = {
            "learning_rate": learning_rate, "num_leaves": num_leaves,
            "min_child_samples": min_child_samples, "feature_fraction": feature_fraction,
            "bagging_fraction": bagging_fraction, "bagging_freq": 1, "lambda_l2": lambda_l2}
        self.param_grid = [dict(p) for p in param_grid]
        self.class_weight = class_weight
        self.n_jobs, self.seed = int(n_jobs), int(seed)
        self.booster_: Any = None
        self.stat_names_: list[str] = []
        self.feature_names_: list[str] = []
        self.best_iteration_: int = 0
        self.validation_: list[tuple[dict[str, Any], float]] = []

    # ------------------------------------------------------------------ data
    def _select_stats(self, runs: Sequence[BaselineRun]) -> list[str]:
        names = sorted({n for r in runs for n in (getattr(r.frames, "stat_names", []) or [])})
        if self.channels != "both":
            names = [n for n in names if (p := parse_stat_name(n)) and p[0] == self.channels]
        return names

    def features(self, run: BaselineRun) -> np.ndarray:
        """The run's feature matrix in the fitted column order (:func:`stats_features`).

        With ``channels="act"`` or ``"grad"`` the other kind's statistics are not read; its
        derived ratio column is then all-NaN (missing to LightGBM).
        """
        return stats_features(run, self.stat_names_, self.window, self.curves)[0]

    def _dataset(self, runs: Sequence[BaselineRun], labels: Sequence[LabelLike]
                 ) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for run, _, y in labelled_captures(runs, labels):
            x = self.features(run)
            keep = y >= 0
            xs.append(x[keep])
            ys.append(y[keep])
        if not xs or sum(len(y) for y in ys) == 0:
            raise ValueError("no labelled capture step to train on")
        return np.concatenate(xs), np.concatenate(ys)

    # ------------------------------------------------------------------ training
    def _train(self, overrides: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
               xv: np.ndarray | None, yv: np.ndarray | None) -> tuple[Any, int]:
        import lightgbm as lgb

        params = {"objective": "multiclass", "num_class": len(KNOWN_LABELS),
                  "metric": "multi_logloss", "verbosity": -1, "num_threads": self.n_jobs,
                  "seed": self.seed, "deterministic": True, "force_row_wise": True,
                  **self.params, **overrides}
        w = _balanced_weights(y) if self.class_weight == "balanced" else None
        dtrain = lgb.Dataset(x, y, weight=w, feature_name=self.feature_names_,
                             free_raw_data=False)
        if xv is not None and yv is not None and len(yv):
            wv = _balanced_weights(yv) if self.class_weight == "balanced" else None
            dval = lgb.Dataset(xv, yv, weight=wv, reference=dtrain)
            booster = lgb.train(params, dtrain, self.num_boost_round, valid_sets=[dval],
                                callbacks=[lgb.early_stopping(self.early_stopping_rounds,
                                                              verbose=False)])
            return booster, int(booster.best_iteration or booster.current_iteration())
        booster = lgb.train(params, dtrain, self.num_boost_round)
        return booster, int(booster.current_iteration())

    def fit(self, train_runs: Sequence[BaselineRun], train_labels: Sequence[LabelLike],
            val_runs: Sequence[BaselineRun] | None = None,
            val_labels: Sequence[LabelLike] | None = None) -> StatsGBDT:
        """Train on the training runs; early-stop (and pick ``param_grid``) on validation."""
        if not train_runs:
            raise ValueError("StatsGBDT.fit needs training runs")
        self.stat_names_ = self._select_stats(train_runs)
        self.feature_names_ = stats_features(train_runs[0], self.stat_names_, self.window,
                                             self.curves)[1]
        x, y = self._dataset(train_runs, train_labels)
        xv = yv = None
        if val_runs and val_labels is not None:
            xv, yv = self._dataset(val_runs, val_labels)
        candidates = self.param_grid or [{}]
        best: tuple[float, Any, int] | None = None
        self.validation_ = []
        for overrides in candidates:
            booster, it = self._train(overrides, x, y, xv, yv)
            if len(candidates) == 1:
                best = (0.0, booster, it)
                break
            if not val_runs or val_labels is None:
                raise ValueError("param_grid needs validation runs and labels")
            self.booster_, self.best_iteration_ = booster, it
            try:
                value = event_time_auprc(predict_runs(self, val_runs, val_labels))
            except ValueError:
                value = float("nan")
            self.validation_.append((dict(overrides), value))
            if best is None or (np.isfinite(value) and not value <= best[0]):
                best = (value if np.isfinite(value) else -np.inf, booster, it)
        assert best is not None
        _, self.booster_, self.best_iteration_ = best
        return self

    # ------------------------------------------------------------------ inference
    def predict_proba(self, run: BaselineRun) -> np.ndarray:
        """``[n_captures, K]`` class probabilities over :data:`KNOWN_LABELS`."""
        if self.booster_ is None:
            raise NotFittedError("StatsGBDT.fit must be called before scoring")
        x = self.features(run)
        if x.shape[0] == 0:
            return np.zeros((0, len(KNOWN_LABELS)))
        p = np.asarray(self.booster_.predict(x, num_iteration=self.best_iteration_),
                       dtype=np.float64).reshape(x.shape[0], len(KNOWN_LABELS))
        return np.clip(p / p.sum(axis=1, keepdims=True), 0.0, 1.0)

    def importance(self, kind: Literal["gain", "split"] = "gain", top: int | None = 20
                   ) -> dict[str, float]:
        """Feature importances (normalised to sum 1), largest first (``top`` of them).

        Tells which layer statistics carry the signal, e.g. for the results write-up.
        """
        if self.booster_ is None:
            raise NotFittedError("StatsGBDT.fit must be called first")
        imp = np.asarray(self.booster_.feature_importance(importance_type=kind), dtype=float)
        imp = imp / imp.sum() if imp.sum() > 0 else imp
        order = np.argsort(-imp, kind="stable")[: top or len(imp)]
        return {self.feature_names_[i]: float(imp[i]) for i in order}


class StatsCurvesGBDT(StatsGBDT):
    """:class:`StatsGBDT` that also reads the scalar curves (loss level, spread, spikes, learning
    rate, gradient norm): a hybrid of internal-state and scalar-telemetry inputs, with the same
    arguments. TEViD does not see the curves, so this is an upper reference, not the
    layer-statistics baseline.

    Example:
        >>> StatsCurvesGBDT(num_boost_round=5).curves, StatsCurvesGBDT.name
        (True, 'stats_gbdt_curves')
    """

    name = "stats_gbdt_curves"
    curves = True
