"""BOCPD: Bayesian online change-point detection on training-loss residuals (Table 3).

Adams & MacKay (2007), written out here (about 40 lines, no package): the per-step training loss
is put on a log scale and standardized against its causal Holt (level + trend) forecast
(:func:`~core_models.baselines.features.loss_residuals`); the residuals ``z_t`` are modelled as
Gaussian with unknown mean and variance inside each segment (Normal–Inverse-Gamma prior, Student-t
predictive) and a constant hazard ``1/λ`` of a change at every step. The run-length posterior
``P(r_t | z_1..t)`` is updated online and truncated at ``max_run``.

Score: the posterior mass at short run lengths, ``P(r_t <= short_run | z_1..t)`` — close to 1
just after a change, close to the hazard in a stable stretch. On the capture grid the score of
capture ``i`` is the maximum over the steps of the last ``hold`` capture intervals (evidence of
a change since capture ``i - hold``): a change is a momentary event, and holding it for
``hold = 3`` captures lets one change satisfy the evaluation's "3 consecutive steps" alert rule
(E.1) instead of being invisible to it. It is a probability already, so it is the anomaly score
as is.

``fit`` learns nothing from training runs; given validation runs and labels it picks
``hazard_lambda`` and ``short_run`` from :attr:`BOCPD.grid` by validation event-time AUPRC.

Example:
    >>> from core_models.baselines.toy import toy_run
    >>> s = BOCPD().score_run(toy_run(n_steps=200, explode_at=120))
    >>> bool(s.score[:11].max() < 0.5 < s.score[13:].max())
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import gammaln

from core_models.baselines.base import BaselineRun, RunScores, run_id_of
from core_models.baselines.features import hold_max, to_grid
from core_models.baselines.residuals import LossResidualDetector

__all__ = ["BOCPD", "bocpd_short_run_mass"]


def bocpd_short_run_mass(x: np.ndarray, hazard: float, short_run: int = 10,
                         max_run: int = 200, mu0: float = 0.0, kappa0: float = 1.0,
                         alpha0: float = 1.0, beta0: float = 1.0) -> np.ndarray:
    """Online BOCPD with a Normal–Inverse-Gamma model; returns ``P(r_t <= short_run)`` per step.

    Args:
        x: ``[m]`` finite observations, processed in order (row ``t`` sees ``x[:t+1]``).
        hazard: prior probability of a change at each step (``1/λ``), in ``(0, 1)``.
        short_run: run lengths counted as "short". The hypothesis "no change since ``x[0]``"
            is never counted, even while the series is shorter than ``short_run``.
        max_run: run lengths kept (the posterior tail beyond is dropped and renormalized).
        mu0, kappa0, alpha0, beta0: NIG prior of a fresh segment.

    Example:
        >>> x = np.r_[np.zeros(100), np.full(20, 5.0)] + 0.1 * np.cos(np.arange(120))
        >>> p = bocpd_short_run_mass(x, hazard=0.01, short_run=5)
        >>> bool(p[90:100].max() < 0.1 and p[100:105].min() > 0.9)
        True
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if not 0.0 < hazard < 1.0:
        raise ValueError(f"hazard must lie in (0, 1), got {hazard!r}")
    if max_run < 1 or short_run < 0:
        raise ValueError("max_run must be >= 1 and short_run >= 0")
    if not np.all(np.isfinite(x)):
        raise ValueError("bocpd_short_run_mass needs finite observations")
    # Index r of every buffer is the run length r: kappa and alpha depend on r only, so their
    # functions are precomputed; mu, beta and the log posterior shift up by one each step.
    size = max_run + 1
    r = np.arange(size, dtype=np.float64)
    kappa = kappa0 + r
    alpha = alpha0 + r / 2.0
    nu = 2.0 * alpha
    t_const = gammaln((nu + 1.0) / 2.0) - gammaln(nu / 2.0) - 0.5 * np.log(nu * np.pi)
    scale_coef = (kappa + 1.0) / (alpha * kappa)      # predictive scale² = beta · scale_coef
    half_nu1 = (nu + 1.0) / 2.0
    beta_coef = kappa / (2.0 * (kappa + 1.0))
    log_h, log_1mh = float(np.log(hazard)), float(np.log1p(-hazard))
    log_r = np.full(size, -np.inf)
    log_r[0] = 0.0                             # P(r = 0) = 1 before any data
    mu, beta = np.full(size, float(mu0)), np.full(size, float(beta0))
    out = np.empty(x.shape[0])
    k = 1
    for t, xt in enumerate(x.tolist()):
        scale2 = beta[:k] * scale_coef[:k]
        dev = xt - mu[:k]
        log_pred = t_const[:k] - 0.5 * np.log(scale2) - half_nu1[:k] * np.log1p(
            dev * dev / (nu[:k] * scale2))
        joint = log_r[:k] + log_pred
        top = joint.max()
        evidence = top + np.log(np.exp(joint - top).sum())
        grow = min(k + 1, size)                # run lengths 1..grow-1 grow from 0..grow-2
        # Right-hand sides are evaluated before assignment, so the shifts are safe in place.
        log_r[1:grow] = joint[: grow - 1] + log_1mh
        beta[1:grow] = beta[: grow - 1] + beta_coef[: grow - 1] * dev[: grow - 1] ** 2
        mu[1:grow] = (kappa[: grow - 1] * mu[: grow - 1] + xt) / (kappa[: grow - 1] + 1.0)
        log_r[0], beta[0], mu[0] = evidence + log_h, beta0, mu0
        k = grow                               # beyond max_run the tail is dropped
        post = log_r[:k]
        top = post.max()
        post -= top + np.log(np.exp(post - top).sum())
        # Index t + 1 is "no change since the first observation": at the start of a series every
        # run length is short, which is not evidence of a change, so it never counts.
        out[t] = np.exp(post[: min(short_run, t) + 1]).sum()
    return np.clip(out, 0.0, 1.0)


class BOCPD(LossResidualDetector):
    """Bayesian online change-point detection on standardized loss residuals.

    Args:
        hazard_lambda: expected segment length ``λ`` in steps (hazard ``1/λ``).
        short_run: run lengths (steps) whose posterior mass is the score.
        max_run: run-length truncation.
        hold: capture intervals over which the per-step mass is maximised (>= 1).
        span, trend_span, warmup, clip: residual standardization (see
            :func:`~core_models.baselines.features.standardized_residuals`); the detector starts
            after the ``warmup`` steps (score 0 before).
        grid: candidates tried on validation runs in :meth:`fit` (empty: no tuning).

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> BOCPD(hazard_lambda=100).score_run(toy_run()).score.shape
        (10,)
    """

    name = "bocpd"
    #: Default validation grid (4 candidates).
    DEFAULT_GRID: Mapping[str, Sequence[Any]] = {"hazard_lambda": (100.0, 1000.0),
                                                 "short_run": (5, 20)}

    def __init__(self, hazard_lambda: float = 250.0, short_run: int = 10, max_run: int = 200,
                 hold: int = 3,
                 span: float = 30.0, trend_span: float | None = 30.0, warmup: int = 50,
                 clip: float = 10.0,
                 grid: Mapping[str, Sequence[Any]] | None = None) -> None:
        if hazard_lambda <= 1.0:
            raise ValueError(f"hazard_lambda must be > 1, got {hazard_lambda!r}")
        self.hazard_lambda = float(hazard_lambda)
        self.short_run = int(short_run)
        self.max_run = int(max_run)
        if hold < 1:
            raise ValueError(f"hold must be >= 1, got {hold!r}")
        self.hold = int(hold)
        self._init_residuals(span, trend_span, warmup, clip, grid)

    def score_run(self, run: BaselineRun) -> RunScores:
        """``P(run length <= short_run)``, maximum over the last ``hold`` capture intervals."""
        series, grid, z = self.residuals(run)
        mass = np.zeros(z.shape[0])
        start = min(self.warmup, z.shape[0])
        if z.shape[0] > start:
            mass[start:] = bocpd_short_run_mass(z[start:], 1.0 / self.hazard_lambda,
                                                self.short_run, self.max_run)
        score = hold_max(to_grid(mass, series, grid, "max"), self.hold)
        zmax = to_grid(np.abs(z), series, grid, "max")
        return RunScores(self.name, run_id_of(run), grid.steps, grid.epochs, np.clip(score, 0, 1),
                         extras={"abs_residual_max": zmax})
