"""Causal inputs shared by the baselines: the capture grid, scalar curves, frame statistics.

Everything here maps a run onto its *capture grid* — the steps of its frames, where TEViD emits
its diagnoses — using, for the row of capture step ``s``, only data logged at steps ``<= s``:

* :func:`capture_grid` — capture steps and their epochs (the frames' epochs).
* :func:`step_series` — the per-step scalars a baseline may read (``loss``, ``lr``,
  ``grad_norm``); the privileged ``lyapunov`` column is never touched.
* :func:`interval_reduce` — reduce a per-step series over each capture interval
  ``(s_{i-1}, s_i]`` (the first interval also takes every step before the first capture).
* :func:`curve_features` — scalar-curve features per capture step (Curve-TCN, Stats-GBDT).
* :func:`frame_stat_features` — per-layer activation/gradient summaries of the frames,
  log-scaled, plus cross-layer ratios (Stats-GBDT); :func:`stat_column` reads raw ones (rules).
* :func:`window_features` — current value, mean, slope, min and max over the last ``W`` rows.
* :func:`standardized_residuals` / :func:`loss_residuals` — standardized one-step-ahead residuals
  of the (log) training loss against a causal Holt smoother (BOCPD, CUSUM).

Non-finite values are *information* (a diverged run), not missing data: a non-finite loss or
gradient norm is mapped to a ceiling (``1e30`` before the log), never dropped.

Example:
    >>> from core_models.baselines.toy import toy_run
    >>> run = toy_run(n_steps=60, every=10)
    >>> grid = capture_grid(run)
    >>> grid.steps.tolist()
    [0, 10, 20, 30, 40, 50]
    >>> curve_features(run, grid).shape == (6, len(CURVE_FEATURES))
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "CEILING",
    "CURVE_FEATURES",
    "WINDOW_STATS",
    "CaptureGrid",
    "StepSeries",
    "capture_grid",
    "curve_features",
    "ffill",
    "frame_stat_features",
    "hold_max",
    "interval_ends",
    "interval_reduce",
    "loss_residuals",
    "loss_signal",
    "parse_stat_name",
    "standardized_residuals",
    "stat_column",
    "step_series",
    "symlog",
    "to_grid",
    "window_features",
]

#: Value a non-finite loss / gradient norm / magnitude statistic is mapped to (before logs).
CEILING = 1e30
_LOG_FLOOR = 1e-30
_LOG_CEIL = float(np.log10(CEILING))

#: Columns of :func:`curve_features`, in order.
CURVE_FEATURES: tuple[str, ...] = (
    "loss",               # mean symlog(loss) over the capture interval
    "loss_std",           # its standard deviation within the interval (oscillation)
    "loss_max",           # its maximum within the interval (spikes)
    "loss_delta",         # change of "loss" since the previous capture
    "loss_from_start",    # change of "loss" since the first capture
    "log_lr",             # log10 learning rate at the capture step (0 when not logged)
    "log_grad_norm",      # mean log10 global gradient norm over the interval
    "log_grad_norm_max",  # max log10 global gradient norm over the interval
    "nonfinite_frac",     # fraction of non-finite losses in the interval
    "nonfinite_seen",     # 1 once any non-finite loss has been logged
)

#: Statistics :func:`window_features` computes per input column, in order.
WINDOW_STATS: tuple[str, ...] = ("cur", "mean", "slope", "min", "max")

_STAT_RE = re.compile(r"^(act|grad)(\d+)_(.+)$")
_MAGNITUDE_STATS = frozenset({"rms", "std", "absmax"})


def symlog(x: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """Sign-preserving ``log1p``: ``sign(x)·log(1 + |x|)`` (finite for finite input).

    Example:
        >>> symlog([-1.0, 0.0, np.e - 1]).round(3).tolist()
        [-0.693, 0.0, 1.0]
    """
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.log1p(np.abs(x))


def _log10_magnitude(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.log10(np.clip(np.abs(np.nan_to_num(x, nan=CEILING, posinf=CEILING,
                                                 neginf=CEILING)), _LOG_FLOOR, CEILING))
    return out


def loss_signal(loss: np.ndarray | Sequence[float]) -> np.ndarray:
    """Per-step loss on a log scale: ``symlog(loss)``, non-finite values at ``symlog(CEILING)``.

    A NaN or infinite loss means the run diverged, so it is placed at the ceiling (the largest
    loss the signal can show) rather than dropped.

    Example:
        >>> loss_signal([0.0, np.nan]).round(1).tolist()
        [0.0, 69.1]
    """
    x = np.asarray(loss, dtype=np.float64)
    x = np.where(np.isfinite(x), np.clip(x, -CEILING, CEILING), CEILING)
    return symlog(x)


@dataclass(frozen=True)
class CaptureGrid:
    """Capture steps of a run (its frame steps) and their epochs.

    Attributes:
        steps: ``[n]`` int64 capture steps, non-decreasing.
        epochs: ``[n]`` float64 epochs (the frames' epochs; see :func:`capture_grid`).
    """

    steps: np.ndarray
    epochs: np.ndarray

    def __len__(self) -> int:
        return int(self.steps.shape[0])


@dataclass(frozen=True)
class StepSeries:
    """The non-privileged per-step scalars of a run, sorted by step.

    Attributes:
        steps: ``[m]`` int64.
        epoch: ``[m]`` float64 (NaN when not logged).
        loss: ``[m]`` raw training loss (may hold NaN/inf).
        lr: ``[m]`` learning rate, or ``None`` when not logged.
        grad_norm: ``[m]`` global gradient norm, or ``None`` when not logged.
    """

    steps: np.ndarray
    epoch: np.ndarray
    loss: np.ndarray
    lr: np.ndarray | None
    grad_norm: np.ndarray | None

    def __len__(self) -> int:
        return int(self.steps.shape[0])


def step_series(run: Any) -> StepSeries:
    """Read ``step``, ``epoch``, ``loss``, ``lr`` and ``grad_norm`` from ``run.steps``.

    Rows without a step are dropped; rows are sorted by step (stable). No other column is read —
    in particular not the privileged ``lyapunov``.

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> s = step_series(toy_run(n_steps=5))
        >>> s.steps.tolist(), s.lr is not None
        ([0, 1, 2, 3, 4], True)
    """
    df = run.steps
    if df is None or len(df) == 0 or "step" not in df:
        empty = np.zeros(0)
        return StepSeries(np.zeros(0, dtype=np.int64), empty, empty, None, None)
    step = np.asarray(df["step"], dtype=np.float64)
    keep = np.isfinite(step)
    order = np.argsort(step[keep], kind="stable")

    def col(name: str) -> np.ndarray | None:
        if name not in df:
            return None
        return np.asarray(df[name], dtype=np.float64)[keep][order]

    n = int(keep.sum())
    loss = col("loss")
    epoch = col("epoch")
    return StepSeries(steps=step[keep][order].astype(np.int64),
                      epoch=np.full(n, np.nan) if epoch is None else epoch,
                      loss=np.full(n, np.nan) if loss is None else loss,
                      lr=col("lr"), grad_norm=col("grad_norm"))


def capture_grid(run: Any, series: StepSeries | None = None) -> CaptureGrid:
    """The run's capture steps and epochs (the time grid shared with TEViD's diagnoses).

    Epochs are the frames' own (what :class:`~tevid_hpo.diagnostician.Diagnosis` reports); a
    frame without one (``-1``) takes the epoch of the last logged step at or before it, else
    ``step // meta["steps_per_epoch"]``, else 0. Epochs are made non-decreasing.

    Raises:
        ValueError: if the frame steps decrease.

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> capture_grid(toy_run(n_steps=40, every=10, steps_per_epoch=20)).epochs.tolist()
        [0.0, 0.0, 1.0, 1.0]
    """
    frames = run.frames
    steps = np.asarray(frames.steps, dtype=np.int64).reshape(-1)
    if np.any(np.diff(steps) < 0):
        raise ValueError("frame steps must be non-decreasing")
    epochs = np.asarray(frames.epochs, dtype=np.float64).reshape(-1).copy()
    missing = ~(epochs >= 0)
    if missing.any():
        series = series if series is not None else step_series(run)
        spe = dict(getattr(run, "meta", {}) or {}).get("steps_per_epoch")
        idx = np.searchsorted(series.steps, steps, side="right") - 1
        for i in np.flatnonzero(missing):
            e = series.epoch[idx[i]] if idx[i] >= 0 else np.nan
            if not np.isfinite(e):
                e = steps[i] // int(spe) if spe else 0.0
            epochs[i] = e
    if epochs.size:
        epochs = np.maximum.accumulate(epochs)
    return CaptureGrid(steps=steps, epochs=epochs)


def interval_ends(series_steps: np.ndarray, grid_steps: np.ndarray) -> np.ndarray:
    """``ends[i]``: number of per-step rows at or before capture ``i`` (row slice end).

    Capture interval ``i`` holds rows ``ends[i-1] : ends[i]`` (``0 : ends[0]`` for the first).

    Example:
        >>> interval_ends(np.arange(10), np.array([0, 4, 9])).tolist()
        [1, 5, 10]
    """
    return np.searchsorted(np.asarray(series_steps), np.asarray(grid_steps), side="right")


Reduction = Literal["mean", "std", "max", "min", "last", "sum", "count"]


def interval_reduce(values: np.ndarray, ends: np.ndarray, how: Reduction) -> np.ndarray:
    """Reduce finite per-step ``values`` over each capture interval (NaN where it is empty).

    Example:
        >>> v = np.array([1.0, 3.0, 5.0, 7.0])
        >>> interval_reduce(v, np.array([2, 2, 4]), "mean").tolist()
        [2.0, nan, 6.0]
        >>> interval_reduce(v, np.array([2, 2, 4]), "max").tolist()
        [3.0, nan, 7.0]
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    ends = np.asarray(ends, dtype=np.int64).reshape(-1)
    n = ends.shape[0]
    starts = np.r_[0, ends[:-1]] if n else ends
    counts = ends - starts
    out = np.full(n, np.nan)
    if how == "count":
        return counts.astype(np.float64)
    ne = counts > 0
    if not ne.any():
        return out
    if how in ("mean", "sum", "std"):
        cs = np.r_[0.0, np.cumsum(v)]
        total = cs[ends] - cs[starts]
        if how == "sum":
            out[ne] = total[ne]
            return out
        mean = total[ne] / counts[ne]
        if how == "mean":
            out[ne] = mean
            return out
        cs2 = np.r_[0.0, np.cumsum(v * v)]
        sq = (cs2[ends] - cs2[starts])[ne] / counts[ne]
        out[ne] = np.sqrt(np.maximum(sq - mean * mean, 0.0))
        return out
    if how in ("max", "min"):
        op = np.maximum if how == "max" else np.minimum
        out[ne] = op.reduceat(v[: ends[-1]], starts[ne])
        return out
    if how == "last":
        out[ne] = v[ends[ne] - 1]
        return out
    raise ValueError(f"unknown reduction {how!r}")


def ffill(x: np.ndarray, initial: float = 0.0) -> np.ndarray:
    """Carry the last non-NaN value forward (causal); leading NaNs become ``initial``.

    Example:
        >>> ffill(np.array([np.nan, 1.0, np.nan, 2.0])).tolist()
        [0.0, 1.0, 1.0, 2.0]
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return x.copy()
    ok = ~np.isnan(x)
    idx = np.where(ok, np.arange(x.size), -1)
    idx = np.maximum.accumulate(idx)
    out = np.where(idx >= 0, x[np.maximum(idx, 0)], initial)
    return out


def curve_features(run: Any, grid: CaptureGrid | None = None,
                   series: StepSeries | None = None) -> np.ndarray:
    """Scalar-curve features per capture step, columns :data:`CURVE_FEATURES` (float64, finite).

    Row ``i`` uses per-step rows at steps ``<= grid.steps[i]`` only. Capture intervals without a
    logged step carry the previous value forward (0 before the first logged step).

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> x = curve_features(toy_run(n_steps=50, explode_at=30, nan_at=40))
        >>> names = list(CURVE_FEATURES)
        >>> x[:, names.index("nonfinite_seen")].tolist()
        [0.0, 0.0, 0.0, 0.0, 1.0]
    """
    series = series if series is not None else step_series(run)
    grid = grid if grid is not None else capture_grid(run, series)
    n = len(grid)
    if n == 0:
        return np.zeros((0, len(CURVE_FEATURES)))
    ends = interval_ends(series.steps, grid.steps)
    y = loss_signal(series.loss)
    nonfinite = (~np.isfinite(series.loss)).astype(np.float64)
    loss = ffill(interval_reduce(y, ends, "mean"))
    loss_std = np.nan_to_num(interval_reduce(y, ends, "std"), nan=0.0)
    loss_max = ffill(interval_reduce(y, ends, "max"))
    loss_delta = np.diff(loss, prepend=loss[0])
    loss_from_start = loss - loss[0]
    if series.lr is not None:
        lr = np.where(np.isfinite(series.lr), series.lr, 0.0)
        log_lr = ffill(interval_reduce(np.log10(np.clip(lr, 1e-12, None)), ends, "last"))
    else:
        log_lr = np.zeros(n)
    if series.grad_norm is not None:
        g = _log10_magnitude(series.grad_norm)
        log_gn = ffill(interval_reduce(g, ends, "mean"))
        log_gn_max = ffill(interval_reduce(g, ends, "max"))
    else:
        log_gn = log_gn_max = np.zeros(n)
    nf_frac = np.nan_to_num(interval_reduce(nonfinite, ends, "mean"), nan=0.0)
    nf_seen = np.maximum.accumulate((nf_frac > 0).astype(np.float64))
    return np.stack([loss, loss_std, loss_max, loss_delta, loss_from_start, log_lr, log_gn,
                     log_gn_max, nf_frac, nf_seen], axis=1)


def parse_stat_name(name: str) -> tuple[str, int, str] | None:
    """``"grad2_nonpos_frac"`` → ``("grad", 2, "nonpos_frac")``; ``None`` for other names.

    Example:
        >>> parse_stat_name("act0_rms"), parse_stat_name("loss")
        (('act', 0, 'rms'), None)
    """
    m = _STAT_RE.match(name)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def stat_column(run: Any, name: str) -> np.ndarray | None:
    """Raw frame statistic ``name`` per capture step (float64), or ``None`` if not recorded.

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> stat_column(toy_run(n_steps=20), "act0_nonpos_frac").shape
        (2,)
    """
    frames = run.frames
    names = list(getattr(frames, "stat_names", []) or [])
    if name not in names:
        return None
    return np.asarray(frames.stats, dtype=np.float64)[:, names.index(name)]


def _transform_stat(stat: str, x: np.ndarray) -> np.ndarray:
    if stat in _MAGNITUDE_STATS:
        return _log10_magnitude(x)
    if stat.endswith("frac"):
        x = np.asarray(x, dtype=np.float64)
        return np.where(np.isfinite(x), x, np.nan)  # undefined fraction: missing
    # Signed statistics (mean): symlog, a diverged (NaN) value at the ceiling.
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=CEILING, posinf=CEILING,
                      neginf=-CEILING)
    return symlog(np.clip(x, -CEILING, CEILING))


def frame_stat_features(run: Any, stat_names: Sequence[str] | None = None
                        ) -> tuple[np.ndarray, list[str]]:
    """Transformed per-layer frame statistics per capture step, plus derived columns.

    Magnitudes (``rms``, ``std``, ``absmax``) become ``log10`` (a non-finite value — a diverged
    layer — goes to ``log10(CEILING)``), signed means become :func:`symlog` (NaN at the ceiling),
    fractions stay as they are (NaN when non-finite), so every value is finite or NaN. Derived
    columns: ``{act,grad}_rms_log_ratio`` = ``log10(rms of the shallowest hooked layer / rms of
    the deepest)`` and ``frame_finite``.

    Args:
        stat_names: the raw columns to produce, in order (fix them at training time); names the
            run does not have become all-NaN columns (LightGBM treats them as missing).
            Default: the run's own names, sorted.

    Returns:
        ``(X [n, F], names)``.

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> x, names = frame_stat_features(toy_run(n_steps=20))
        >>> x.shape[1] == len(names), names[-3:]
        (True, ['act_rms_log_ratio', 'grad_rms_log_ratio', 'frame_finite'])
    """
    frames = run.frames
    own = list(getattr(frames, "stat_names", []) or [])
    names = list(stat_names) if stat_names is not None else sorted(own)
    n = len(frames.steps)
    raw = np.asarray(frames.stats, dtype=np.float64).reshape(n, len(own))
    cols = []
    for name in names:
        parsed = parse_stat_name(name)
        stat = parsed[2] if parsed else name
        if name in own:
            cols.append(_transform_stat(stat, raw[:, own.index(name)]))
        else:
            cols.append(np.full(n, np.nan))
    out_names = list(names)
    for kind in ("act", "grad"):
        layers = sorted({p[1] for p in map(parse_stat_name, names)
                         if p and p[0] == kind and p[2] == "rms"})
        if len(layers) >= 2:
            first = cols[names.index(f"{kind}{layers[0]}_rms")]
            last = cols[names.index(f"{kind}{layers[-1]}_rms")]
            cols.append(first - last)
        else:
            cols.append(np.full(n, np.nan))
        out_names.append(f"{kind}_rms_log_ratio")
    cols.append(np.asarray(frames.finite, dtype=np.float64).reshape(-1))
    out_names.append("frame_finite")
    return np.stack(cols, axis=1) if cols else np.zeros((n, 0)), out_names


def window_features(x: np.ndarray, names: Sequence[str], window: int
                    ) -> tuple[np.ndarray, list[str]]:
    """Per column, the current value and the mean, least-squares slope, min and max over the
    last ``window`` rows (the window ending at each row; before ``window`` rows exist it is
    left-padded with the first row, as TEViD's clips are).

    NaN columns stay NaN. Column order: for each input column, :data:`WINDOW_STATS`.

    Example:
        >>> x = np.arange(5, dtype=float)[:, None]
        >>> w, names = window_features(x, ["a"], 3)
        >>> names
        ['a@cur', 'a@mean', 'a@slope', 'a@min', 'a@max']
        >>> w[-1].tolist()
        [4.0, 3.0, 1.0, 2.0, 4.0]
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    x = np.asarray(x, dtype=np.float64)
    n, f = x.shape
    out_names = [f"{c}@{s}" for c in names for s in WINDOW_STATS]
    if n == 0:
        return np.zeros((0, f * len(WINDOW_STATS))), out_names
    padded = np.concatenate([np.repeat(x[:1], window - 1, axis=0), x], axis=0)
    win = sliding_window_view(padded, window, axis=0)  # [n, f, window]
    t = np.arange(window, dtype=np.float64) - (window - 1) / 2.0
    denom = float((t * t).sum())
    slope = (win * t).sum(-1) / denom if denom > 0 else np.zeros((n, f))
    stacked = np.stack([x, win.mean(-1), slope, win.min(-1), win.max(-1)], axis=2)
    return stacked.reshape(n, f * len(WINDOW_STATS)), out_names


def standardized_residuals(y: np.ndarray, span: float = 30.0, trend_span: float | None = 30.0,
                           warmup: int = 20, min_std: float = 0.01, clip: float = 10.0
                           ) -> np.ndarray:
    """Causal standardized one-step-ahead residuals ``z_t = (y_t - ŷ_t) / s_{t-1}``, clipped.

    The forecast ``ŷ_t`` is Holt's linear exponential smoothing (level smoothing
    ``α = 2 / (span + 1)``, trend smoothing ``β = 2 / (trend_span + 1)``) fitted on
    ``y_0..y_{t-1}``, so a steadily falling training loss gives unbiased residuals (a level-only
    EWMA lags a trend and would make every healthy run look like a downward shift);
    ``trend_span=None`` uses the level-only EWMA. ``s²`` is an exponentially weighted mean (same
    ``α``) of past squared residuals, started at and floored by ``min_std²``. The first
    ``warmup`` residuals are 0 (no reference yet) but still update the fit.

    Example:
        >>> t = np.arange(80.0)
        >>> y = np.r_[-0.01 * t[:60], np.full(20, 3.0)] + 0.01 * np.sin(t)
        >>> z = standardized_residuals(y)
        >>> bool(abs(z[:60]).max() < 3), float(z[60])
        (True, 10.0)
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.size == 0:
        return y.copy()
    if not np.all(np.isfinite(y)):
        raise ValueError("standardized_residuals needs finite input (see loss_signal)")
    alpha = 2.0 / (float(span) + 1.0)
    beta = 0.0 if trend_span is None else 2.0 / (float(trend_span) + 1.0)
    var_floor = min_std * min_std
    level, slope, var = float(y[0]), 0.0, var_floor
    z = np.zeros(y.shape[0])
    for t, yt in enumerate(y.tolist()):
        r = yt - (level + slope)
        if t >= warmup:
            z[t] = r / (var ** 0.5)
        var = max((1.0 - alpha) * var + alpha * r * r, var_floor)
        new_level = alpha * yt + (1.0 - alpha) * (level + slope)
        slope = beta * (new_level - level) + (1.0 - beta) * slope
        level = new_level
    return np.clip(z, -clip, clip)


def to_grid(values: np.ndarray, series: StepSeries, grid: CaptureGrid,
            how: Reduction = "max", initial: float = 0.0) -> np.ndarray:
    """Project a per-step series onto the capture grid: ``how`` over each capture interval.

    With ``how="max"`` a per-step detector's score at capture ``i`` is the strongest evidence
    seen since the previous capture, so a change between two captures is not missed. Empty
    intervals carry the previous value (``initial`` before any step).

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> run = toy_run(n_steps=30, every=10)
        >>> s = step_series(run)
        >>> to_grid(s.steps.astype(float), s, capture_grid(run)).tolist()
        [0.0, 10.0, 20.0]
    """
    ends = interval_ends(series.steps, grid.steps)
    return ffill(interval_reduce(values, ends, how), initial)


def loss_residuals(run: Any, span: float = 30.0, trend_span: float | None = 30.0,
                   warmup: int = 20, min_std: float = 0.01, clip: float = 10.0
                   ) -> tuple[StepSeries, CaptureGrid, np.ndarray]:
    """Per-step standardized training-loss residuals (the input of BOCPD and CUSUM).

    The loss is put on a log scale with :func:`loss_signal` (non-finite → ceiling) and
    standardized against its causal Holt forecast with :func:`standardized_residuals`. Only
    steps up to the last capture step are used (later ones cannot affect any capture score).

    Returns:
        ``(series, grid, z)`` with ``z`` aligned to ``series.steps``.

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> s, g, z = loss_residuals(toy_run(n_steps=80, explode_at=60))
        >>> bool(z[:60].max() < z[60:].max())
        True
    """
    series = step_series(run)
    grid = capture_grid(run, series)
    if len(grid):
        keep = series.steps <= grid.steps[-1]
        series = StepSeries(series.steps[keep], series.epoch[keep], series.loss[keep],
                            None if series.lr is None else series.lr[keep],
                            None if series.grad_norm is None else series.grad_norm[keep])
    z = standardized_residuals(loss_signal(series.loss), span=span, trend_span=trend_span,
                               warmup=warmup, min_std=min_std, clip=clip)
    return series, grid, z


def hold_max(x: np.ndarray, hold: int) -> np.ndarray:
    """Running maximum over the last ``hold`` rows (causal; ``hold=1`` is the identity).

    Example:
        >>> hold_max(np.array([0.0, 1.0, 0.0, 0.0, 0.0]), 3).tolist()
        [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if hold < 1:
        raise ValueError(f"hold must be >= 1, got {hold}")
    if hold == 1 or x.size == 0:
        return x.copy()
    padded = np.r_[np.full(hold - 1, -np.inf), x]
    return sliding_window_view(padded, hold).max(axis=1)
