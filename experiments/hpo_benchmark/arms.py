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
from experiments.hpo_benchmark.stoppers import CHEAP, PFN
from tevid_hpo.decision import DEFAULT_SPARE_LEADERS
from tevid_hpo.pruners import TEViDPruner

#: Display names of who stopped a trial (prune reasons and pruner classes map onto these).
HYPERBAND, TEVID, CURVE_TCN = "Hyperband", "TEViD", "Curve-TCN"
_STOPPER_NAMES = {"HyperbandPruner": HYPERBAND, "HyperBandScheduler": HYPERBAND,
                  "SuccessiveHalvingPruner": "Successive halving", "MedianPruner": "Median",
                  "AsyncHyperBandScheduler": "ASHA", "TEViD": TEVID, "CurveTCN": CURVE_TCN,
                  "TEViDHyperband": HYPERBAND, "TEViDScheduler": "ASHA"}


@dataclass(frozen=True)
class Strategy:
    """One way to run the search: a base pruner/scheduler, optionally with a stop signal.

    Attributes:
        name: display name (table rows, plot legend).
        framework: ``"optuna"`` or ``"ray"``.
        make: builds a fresh pruner (Optuna) or scheduler (Ray Tune).
        monitored: reads TEViD's diagnosis (trials carry the monitor, and pay for it).
        curve: reads the Curve-TCN's alerts.
        reference: the strategy its paired comparisons are made against (its base alone).
        signal: the stop signal fed through the TEViD wrapper: ``"tevid"``, ``"cheap"``
            (:func:`~experiments.hpo_benchmark.stoppers.cheap_rule_stop`), ``"pfn"``
            (:class:`~experiments.hpo_benchmark.stoppers.PFNStopper`), ``"curve"`` or ``None``.
        base: the base's display name (``"Hyperband"``, ``"Ray ASHA"``, ...).
    """

    name: str
    framework: str
    make: Callable[[], Any]
    monitored: bool = False
    curve: bool = False
    reference: str = HYPERBAND
    signal: str | None = None
    base: str = HYPERBAND


#: Display names of the signals (arm name suffixes and "stopped by").
SIGNAL_NAMES = {"tevid": TEVID, "cheap": CHEAP, "pfn": PFN, "curve": CURVE_TCN}


def optuna_strategies(cfg: DictConfig, detector: CurveTCNDetector | None,
                      pfn: bool = False) -> list[Strategy]:
    """The Optuna arms: No pruning, and for every base in ``arms.optuna_bases`` the base alone
    and with each signal of ``arms.signals`` (``pfn`` only when ``pfn`` is true); Hyperband +
    Curve-TCN with a fitted detector.

    Every signal goes through ``TEViDPruner(base)`` (see :mod:`~experiments.hpo_benchmark
    .stoppers`), so the arms of one base differ only in the signal.

    Example:
        >>> from experiments.hpo_benchmark.config import load_config
        >>> names = [s.name for s in optuna_strategies(load_config(), None)]
        >>> names[:4], len(names)
        (['No pruning', 'Median', 'Median + TEViD', 'Median + Cheap rule'], 10)
    """
    hb = {"min_resource": int(cfg.hyperband.min_resource),
          "max_resource": int(cfg.problem.max_epochs),
          "reduction_factor": int(cfg.hyperband.reduction_factor)}
    prune_on = tuple(cfg.tevid.prune_on)
    spare = spare_leaders(cfg)
    bases: dict[str, Callable[[], Any]] = {
        "Median": lambda: MedianPruner(**cfg.median),
        "Successive halving": lambda: SuccessiveHalvingPruner(
            min_resource=hb["min_resource"], reduction_factor=hb["reduction_factor"]),
        HYPERBAND: lambda: HyperbandPruner(**hb),
    }
    out = [Strategy("No pruning", "optuna", NopPruner, reference="No pruning",
                    base="No pruning")]
    for base in _listed(cfg, "optuna_bases", list(bases)):
        if base not in bases:
            raise ValueError(f"arms.optuna_bases: unknown base {base!r}; use {list(bases)}")
        make = bases[base]
        out.append(Strategy(base, "optuna", make, reference=base, base=base))
        for signal in _signals(cfg, pfn):
            out.append(Strategy(
                f"{base} + {SIGNAL_NAMES[signal]}", "optuna",
                lambda make=make: TEViDPruner(make(), prune_on=prune_on,
                                              min_confidence=float(cfg.tevid.min_confidence),
                                              max_resource=hb["max_resource"],
                                              spare_leaders=spare),
                monitored=signal == "tevid", reference=base, signal=signal, base=base))
        if base == HYPERBAND and detector is not None:
            out.append(Strategy("Hyperband + Curve-TCN", "optuna",
                                lambda: CurveTCNPruner(**hb, prune_on=prune_on,
                                                       spare_leaders=spare), curve=True,
                                signal="curve", reference=base, base=base))
    return out


def spare_leaders(cfg: DictConfig) -> float | None:
    """The leader guard every signal's arm uses (``tevid.spare_leaders``; absent: the product
    default, :data:`~tevid_hpo.decision.DEFAULT_SPARE_LEADERS`).

    Example:
        >>> from omegaconf import OmegaConf
        >>> spare_leaders(OmegaConf.create({"tevid": {"spare_leaders": None}})) is None
        True
    """
    tevid = cfg.get("tevid") or {}
    if "spare_leaders" not in tevid:
        return DEFAULT_SPARE_LEADERS
    value = tevid["spare_leaders"]
    return None if value is None else float(value)


def _listed(cfg: DictConfig, key: str, default: list[str]) -> list[str]:
    arms = cfg.get("arms") or {}
    value = arms.get(key) if hasattr(arms, "get") else None
    return [str(v) for v in value] if value is not None else default


def _signals(cfg: DictConfig, pfn: bool) -> list[str]:
    signals = _listed(cfg, "signals", ["tevid", "cheap", "pfn"])
    bad = [s for s in signals if s not in ("tevid", "cheap", "pfn")]
    if bad:
        raise ValueError(f"arms.signals: unknown signal(s) {bad}; use tevid, cheap, pfn")
    return [s for s in signals if s != "pfn" or pfn]


RAY_HYPERBAND, RAY_ASHA = "Ray HyperBand", "Ray ASHA"


def ray_strategies(cfg: DictConfig) -> list[Strategy]:
    """The Ray Tune arms: ``HyperBandScheduler`` and ``ASHAScheduler`` alone and with the
    signals of ``ray.signals`` (through ``TEViDHyperband`` / ``TEViDScheduler``).

    Example:
        >>> from experiments.hpo_benchmark.config import load_config
        >>> [s.name for s in ray_strategies(load_config())]   # doctest: +NORMALIZE_WHITESPACE
        ['Ray HyperBand', 'Ray HyperBand + TEViD', 'Ray HyperBand + Cheap rule', 'Ray ASHA',
         'Ray ASHA + TEViD', 'Ray ASHA + Cheap rule']
    """
    from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler

    from tevid_hpo.ray import TEViDHyperband, TEViDScheduler

    metric, mode = _metric(cfg)
    max_t, eta = int(cfg.problem.max_epochs), int(cfg.hyperband.reduction_factor)
    prune_on = tuple(cfg.tevid.prune_on)
    conf = float(cfg.tevid.min_confidence)
    spare = spare_leaders(cfg)

    def asha() -> Any:
        return ASHAScheduler(metric=metric, mode=mode, max_t=max_t,
                             grace_period=int(cfg.hyperband.min_resource), reduction_factor=eta)

    signals = [str(s) for s in (cfg.ray.get("signals") or ["tevid", "cheap"])]
    bad = [s for s in signals if s not in ("tevid", "cheap")]
    if bad:
        raise ValueError(f"ray.signals: unknown signal(s) {bad}; use tevid, cheap")
    out = []
    for base in [str(b) for b in (cfg.ray.get("bases") or [RAY_HYPERBAND, RAY_ASHA])]:
        if base == RAY_HYPERBAND:
            out.append(Strategy(base, "ray", lambda: HyperBandScheduler(
                metric=metric, mode=mode, max_t=max_t, reduction_factor=eta),
                reference=base, base=base))
            wrapped = lambda: TEViDHyperband(
                metric=metric, mode=mode, max_t=max_t, reduction_factor=eta, prune_on=prune_on,
                min_confidence=conf, spare_leaders=spare)
        elif base == RAY_ASHA:
            out.append(Strategy(base, "ray", asha, reference=base, base=base))
            wrapped = lambda: TEViDScheduler(asha(), prune_on=prune_on,
                                             min_confidence=conf, spare_leaders=spare)
        else:
            raise ValueError(f"ray.bases: unknown base {base!r}; use {RAY_HYPERBAND!r}, "
                             f"{RAY_ASHA!r}")
        for signal in signals:
            out.append(Strategy(f"{base} + {SIGNAL_NAMES[signal]}", "ray", wrapped,
                                monitored=signal == "tevid", reference=base, signal=signal,
                                base=base))
    return out


def _metric(cfg: DictConfig) -> tuple[str, str]:
    metric = str(cfg.metric)
    if metric not in ("val_acc", "val_loss"):
        raise ValueError(f"metric must be val_acc or val_loss, got {metric!r}")
    return metric, "max" if metric == "val_acc" else "min"
