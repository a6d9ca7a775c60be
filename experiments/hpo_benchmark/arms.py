"""The strategies compared: Optuna pruners (:func:`optuna_strategies`) and Ray Tune schedulers
(:func:`ray_strategies`), and the display names of who stopped a trial.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig
from optuna.pruners import HyperbandPruner, MedianPruner, NopPruner, SuccessiveHalvingPruner

from experiments.hpo_benchmark.curve_tcn import CurveTCNDetector, CurveTCNPruner
from tevid_hpo.pruners import TEViDPruner

#: Display names of who stopped a trial (prune reasons and pruner classes map onto these).
HYPERBAND, TEVID, CURVE_TCN = "Hyperband", "TEViD", "Curve-TCN"
_STOPPER_NAMES = {"HyperbandPruner": HYPERBAND, "HyperBandScheduler": HYPERBAND,
                  "SuccessiveHalvingPruner": "Successive halving", "MedianPruner": "Median",
                  "AsyncHyperBandScheduler": "ASHA", "TEViD": TEVID, "CurveTCN": CURVE_TCN}


@dataclass(frozen=True)
class Strategy:
    """One way to run the search.

    Attributes:
        name: display name (table rows, plot legend).
        framework: ``"optuna"`` or ``"ray"``.
        make: builds a fresh pruner (Optuna) or scheduler (Ray Tune).
        monitored: reads TEViD's diagnosis (trials carry the monitor, and pay for it).
        curve: reads the Curve-TCN's alerts.
        reference: the strategy its paired comparisons are made against.
    """

    name: str
    framework: str
    make: Callable[[], Any]
    monitored: bool = False
    curve: bool = False
    reference: str = HYPERBAND


def optuna_strategies(cfg: DictConfig, detector: CurveTCNDetector | None) -> list[Strategy]:
    """The Optuna strategies (Hyperband + Curve-TCN only with a fitted detector).

    Example:
        >>> from experiments.hpo_benchmark.config import load_config
        >>> [s.name for s in optuna_strategies(load_config(), None)]
        ['No pruning', 'Median', 'Successive halving', 'Hyperband', 'Hyperband + TEViD']
    """
    hb = {"min_resource": int(cfg.hyperband.min_resource),
          "max_resource": int(cfg.problem.max_epochs),
          "reduction_factor": int(cfg.hyperband.reduction_factor)}
    prune_on = tuple(cfg.tevid.prune_on)
    out = [
        Strategy("No pruning", "optuna", NopPruner),
        Strategy("Median", "optuna", lambda: MedianPruner(**cfg.median)),
        Strategy("Successive halving", "optuna", lambda: SuccessiveHalvingPruner(
            min_resource=hb["min_resource"], reduction_factor=hb["reduction_factor"])),
        Strategy(HYPERBAND, "optuna", lambda: HyperbandPruner(**hb)),
    ]
    if detector is not None:
        out.append(Strategy("Hyperband + Curve-TCN", "optuna",
                            lambda: CurveTCNPruner(**hb, prune_on=prune_on), curve=True))
    out.append(Strategy("Hyperband + TEViD", "optuna", lambda: TEViDPruner(
        HyperbandPruner(**hb), prune_on=prune_on,
        min_confidence=float(cfg.tevid.min_confidence)), monitored=True))
    return out


RAY_HYPERBAND = "Ray HyperBand"


def ray_strategies(cfg: DictConfig) -> list[Strategy]:
    """The Ray Tune schedulers: ``HyperBandScheduler``, ``TEViDHyperband``, ``ASHAScheduler``.

    Example:
        >>> from experiments.hpo_benchmark.config import load_config
        >>> [s.name for s in ray_strategies(load_config())]
        ['Ray HyperBand', 'Ray HyperBand + TEViD', 'Ray ASHA']
    """
    from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler

    from tevid_hpo.ray import TEViDHyperband

    metric, mode = _metric(cfg)
    max_t, eta = int(cfg.problem.max_epochs), int(cfg.hyperband.reduction_factor)
    prune_on = tuple(cfg.tevid.prune_on)
    return [
        Strategy(RAY_HYPERBAND, "ray", lambda: HyperBandScheduler(
            metric=metric, mode=mode, max_t=max_t, reduction_factor=eta),
            reference=RAY_HYPERBAND),
        Strategy("Ray HyperBand + TEViD", "ray", lambda: TEViDHyperband(
            metric=metric, mode=mode, max_t=max_t, reduction_factor=eta, prune_on=prune_on,
            min_confidence=float(cfg.tevid.min_confidence)), monitored=True,
            reference=RAY_HYPERBAND),
        Strategy("Ray ASHA", "ray", lambda: ASHAScheduler(
            metric=metric, mode=mode, max_t=max_t, grace_period=int(cfg.hyperband.min_resource),
            reduction_factor=eta), reference=RAY_HYPERBAND),
    ]


def _metric(cfg: DictConfig) -> tuple[str, str]:
    metric = str(cfg.metric)
    if metric not in ("val_acc", "val_loss"):
        raise ValueError(f"metric must be val_acc or val_loss, got {metric!r}")
    return metric, "max" if metric == "val_acc" else "min"
