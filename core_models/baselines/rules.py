"""AUTOTRAINER-style rules (Zhang et al., ICSE 2021) on frame statistics and the loss curve.

AUTOTRAINER's monitor (``AutoTrainer/utils/monitor.py`` in its repository) checks, with its
default parameters — and here, on what our runs record:

* ``nan`` — NaN/inf loss, weights or gradients, or a loss ``>= 1e5``. Here: a non-finite or
  ``>= 1e5`` training loss or gradient norm at any step so far, or a non-finite frame (latched).
* ``explode`` — ‖∇W first layer‖ / ‖∇W last layer‖ ``> 70`` (β₃). Here: the ratio
  ``grad{first}_rms / grad{last}_rms`` of the frame statistics.
* ``vanish`` — that ratio ``< 1e-3`` (β₁) *and* ‖∇W first‖ ``< 1e-4`` (β₂). Here: the same on
  ``rms``.
* ``dead`` — fraction of zero gradients ``>= 0.7`` (γ, "dying ReLU"). Here: the largest
  ``act{i}_nonpos_frac`` over the hooked layers.
* ``oscillation`` — ``ol_judge``: at least ``η·N`` pairs (k-th local maximum, k-th local minimum)
  of the training-accuracy history differ by ``>= ζ`` (ζ = 0.03, η = 0.2). Here: the same test on
  the per-capture mean of ``log(1 + loss)`` over the last ``N = 20`` captures, with ``ζ = 0.1``.

Adaptations, all forced by what a run records: the three hooked layers stand in for "first" and
"last" layer (:mod:`data_factory.capture` hooks layers at 25/50/75 % depth, shallowest first), and
their statistics are of *activation* gradients ``dL/d(output)`` (root-mean-square per element),
not weight-gradient norms; dead units are read from the hooked layers' outputs (the fraction of
non-positive values, which a following ReLU zeroes); oscillation is measured on the per-capture
mean of ``log(1 + loss)`` (the per-step loss only; per-epoch accuracy is not read) with
amplitude ``ζ = 0.1`` in those units. AUTOTRAINER's "slow convergence" and the
validation-accuracy checks are not used (they need validation curves).

Score: each rule gives an *exceedance* ``e ≥ 0`` that equals 1 exactly at its AUTOTRAINER
threshold (``e = ln ρ / ln 70`` for ``explode``, ``nonpos_frac / 0.7`` for ``dead``, ...;
``nan`` is 0 or ∞ and latches), and the score is ``max_k e_k / (1 + e_k)``: a rule fires exactly
when ``score >= 0.5`` (:attr:`AutoTrainerRules.fire_threshold`), while the graded value lets
event-time AUPRC and a validation-calibrated 5 %-FAR threshold treat the rules like any other
detector. ``nan``, ``explode`` and ``oscillation`` are instability symptoms, so when one of them
has the largest exceedance the anomalous mass goes to Instability (``[1 - a, 0, a, 0, 0]``);
``vanish`` and ``dead`` name no class of ours and spread it evenly
(:func:`~core_models.baselines.base.anomaly_probs`).

Example:
    >>> from core_models.baselines.toy import toy_run
    >>> s = AutoTrainerRules().score_run(toy_run(n_steps=120, explode_at=40))
    >>> [int(x) for x in s.extras["fired"]]        # ratio grad0/grad2 > 70 once 1.1**k > 70
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from core_models.baselines.base import (
    BaselineBase,
    BaselineRun,
    RunScores,
    anomaly_probs,
    run_id_of,
)
from core_models.baselines.features import (
    CURVE_FEATURES,
    capture_grid,
    curve_features,
    interval_ends,
    parse_stat_name,
    stat_column,
    step_series,
)
from data_factory.labels import HEALTHY, INSTABILITY, KNOWN_LABELS

__all__ = ["RULES", "RULE_CLASSES", "AutoTrainerRules", "AutoTrainerThresholds",
           "oscillation_pairs"]

#: Rule names, in the order of :meth:`AutoTrainerRules.evidence`.
RULES: tuple[str, ...] = ("nan", "explode", "vanish", "dead", "oscillation")
#: The known class each rule points at (``None``: no class of ours).
RULE_CLASSES: dict[str, str | None] = {"nan": INSTABILITY, "explode": INSTABILITY,
                                       "vanish": None, "dead": None,
                                       "oscillation": INSTABILITY}
_LATCHED = 1e12  # exceedance of a fired NaN rule (score 1 - 1e-12 → set to exactly 1)


@dataclass(frozen=True)
class AutoTrainerThresholds:
    """AUTOTRAINER's default parameters (``beta_1``, ``beta_2``, ``beta_3``, ``gamma``, ``zeta``,
    ``eta``) plus the adaptations described in the module docstring.

    Example:
        >>> AutoTrainerThresholds().explode_ratio
        70.0
    """

    vanish_ratio: float = 1e-3       # beta_1
    vanish_first: float = 1e-4       # beta_2
    explode_ratio: float = 70.0      # beta_3
    dead_frac: float = 0.7           # gamma
    osc_amplitude: float = 0.1       # zeta, in log(1 + loss) units (AUTOTRAINER: 0.03 accuracy)
    osc_rate: float = 0.2            # eta
    osc_window: int = 20             # captures examined for oscillation
    nan_loss: float = 1e5            # a loss this large counts as NaN (AUTOTRAINER's 1e5)

    def to_dict(self) -> dict[str, float]:
        """Plain dict, for reports."""
        return asdict(self)


def oscillation_pairs(y: np.ndarray, amplitude: float) -> int:
    """AUTOTRAINER's ``ol_judge`` count: pair the k-th local maximum with the k-th local minimum
    (interior points, ties count as extrema) and count pairs with ``|max - min| >= amplitude``.

    Example:
        >>> oscillation_pairs(np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]), 0.5)
        2
    """
    y = np.asarray(y, dtype=np.float64)
    if y.shape[0] < 3:
        return 0
    mid, left, right = y[1:-1], y[:-2], y[2:]
    maxima = mid[(mid >= left) & (mid >= right)]
    minima = mid[(mid <= left) & (mid <= right)]
    k = min(maxima.shape[0], minima.shape[0])
    return int(np.sum(np.abs(maxima[:k] - minima[:k]) >= amplitude))


def _exceed_log(value: np.ndarray, threshold: float) -> np.ndarray:
    """``ln(value) / ln(threshold)`` where it is positive (1 at the threshold), else 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.log(value) / math.log(threshold)
    return np.where(np.isfinite(e) & (e > 0), e, 0.0)


class AutoTrainerRules(BaselineBase):
    """AUTOTRAINER-style threshold rules (no training; thresholds are the published ones).

    Args:
        thresholds: rule parameters (AUTOTRAINER's defaults).

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> ev = AutoTrainerRules().evidence(toy_run(n_steps=40))
        >>> sorted(ev) == sorted(RULES), ev["dead"].round(2).tolist()
        (True, [0.71, 0.71, 0.71, 0.71])
    """

    name = "rules"
    #: Score at which a rule's published threshold is crossed.
    fire_threshold: float = 0.5

    def __init__(self, thresholds: AutoTrainerThresholds | None = None) -> None:
        self.thresholds = thresholds or AutoTrainerThresholds()

    def evidence(self, run: BaselineRun) -> dict[str, np.ndarray]:
        """Per-rule exceedance per capture step (1 = at the AUTOTRAINER threshold)."""
        th = self.thresholds
        series = step_series(run)
        grid = capture_grid(run, series)
        n = len(grid)
        names = list(getattr(run.frames, "stat_names", []) or [])

        # nan: any non-finite or huge loss / gradient norm so far, or a non-finite frame.
        bad = ~np.isfinite(series.loss) | (series.loss >= th.nan_loss)
        if series.grad_norm is not None:
            bad |= ~np.isfinite(series.grad_norm) | (series.grad_norm >= th.nan_loss)
        first = int(np.argmax(bad)) if bad.any() else len(bad)
        nan_hit = interval_ends(series.steps, grid.steps) > first
        nan_hit |= ~np.asarray(run.frames.finite, dtype=bool).reshape(-1)[:n]
        raw = np.asarray(run.frames.stats, dtype=np.float64).reshape(n, -1) if n else None
        if raw is not None and raw.size:
            nan_hit |= ~np.all(np.isfinite(raw), axis=1)
        nan_hit = np.maximum.accumulate(nan_hit) if n else nan_hit

        # explode / vanish: gradient-rms ratio of the shallowest to the deepest hooked layer.
        layers = sorted({p[1] for p in map(parse_stat_name, names)
                         if p and p[0] == "grad" and p[2] == "rms"})
        explode = vanish = np.zeros(n)
        if len(layers) >= 2:
            g_first = stat_column(run, f"grad{layers[0]}_rms")
            g_last = stat_column(run, f"grad{layers[-1]}_rms")
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = g_first / g_last
            explode = _exceed_log(ratio, th.explode_ratio)
            vanish = np.minimum(_exceed_log(ratio, th.vanish_ratio),
                                _exceed_log(g_first, th.vanish_first))

        # dead units: the largest non-positive fraction of any hooked layer's output.
        dead_cols = [np.where(np.isfinite(c), c, 0.0) for nm in names
                     if (p := parse_stat_name(nm)) and p[0] == "act" and p[2] == "nonpos_frac"
                     and (c := stat_column(run, nm)) is not None]
        dead = np.zeros(n)
        if dead_cols:
            dead = np.max(np.stack(dead_cols), axis=0) / th.dead_frac

        # oscillation: ol_judge on the per-capture log loss over the last osc_window captures.
        loss = curve_features(run, grid, series)[:, CURVE_FEATURES.index("loss")]
        need = th.osc_rate * th.osc_window
        osc = np.array([oscillation_pairs(loss[max(0, i - th.osc_window + 1): i + 1],
                                          th.osc_amplitude) / need for i in range(n)])

        return {"nan": np.where(nan_hit, _LATCHED, 0.0), "explode": explode, "vanish": vanish,
                "dead": dead, "oscillation": osc}

    def score_run(self, run: BaselineRun) -> RunScores:
        """``max_k e_k / (1 + e_k)`` over the rules; 1 once the NaN rule has fired."""
        ev = self.evidence(run)
        grid = capture_grid(run)
        e = np.stack([ev[r] for r in RULES], axis=1) if len(grid) else np.zeros((0, len(RULES)))
        # A non-finite statistic is the NaN rule's business; it gives no other rule evidence.
        e = np.where(np.isfinite(e), e, 0.0)
        top = e.max(axis=1) if len(grid) else np.zeros(0)
        score = np.where(ev["nan"] > 0, 1.0, top / (1.0 + top)) if len(grid) else top
        probs = anomaly_probs(score)
        inst = np.array([RULE_CLASSES[RULES[j]] == INSTABILITY for j in e.argmax(axis=1)],
                        dtype=bool) if len(grid) else np.zeros(0, dtype=bool)
        probs[inst] = 0.0
        probs[inst, KNOWN_LABELS.index(HEALTHY)] = 1.0 - score[inst]
        probs[inst, KNOWN_LABELS.index(INSTABILITY)] = score[inst]
        extras = {f"e_{r}": ev[r] for r in RULES}
        extras["fired"] = (top >= 1.0).astype(np.float64)
        return RunScores(self.name, run_id_of(run), grid.steps, grid.epochs, score, probs,
                         extras)
