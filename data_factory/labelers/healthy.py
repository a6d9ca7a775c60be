"""Healthy: no anomaly predicate holds and the run meets its performance floor (A.2, Table 10).

The paper sets each floor to 95 % of what a reference implementation with validated
hyperparameters reaches. :func:`choose_floors` does the same from our own reference runs (the
median reference run by default), per dataset or per (architecture, dataset).

Example:
    >>> f = Floor(threshold=0.7)
    >>> f.met(0.72), f.met(0.5)
    (True, False)
    >>> Floor("val_ppl", 65.0, higher_is_better=False).met(60.0)
    True
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from data_factory.labelers.base import RunLike

__all__ = ["Floor", "check_floor", "choose_floors", "final_metric", "floor_for"]


@dataclass(frozen=True)
class Floor:
    """A performance floor ``tau``: the final value of ``metric`` must reach ``threshold``.

    Attributes:
        metric: an ``run.epochs`` column (``val_acc``, or ``val_ppl`` for language models;
            ``val_ppl`` falls back to ``exp(val_loss)``).
        threshold: the floor.
        higher_is_better: ``False`` for perplexity-like metrics (``value <= threshold``).

    Example:
        >>> Floor("val_acc", 0.78).met(float("nan"))
        False
    """

    metric: str = "val_acc"
    threshold: float = 0.0
    higher_is_better: bool = True

    def met(self, value: float | None) -> bool:
        """Whether a final metric value reaches the floor (NaN/None never does)."""
        if value is None or not math.isfinite(value):
            return False
        return value >= self.threshold if self.higher_is_better else value <= self.threshold


def final_metric(run: RunLike, metric: str = "val_acc") -> float | None:
    """The run's *final* (last-epoch) value of ``metric``; ``None`` when it was never logged.

    A diverged run's last value is NaN, which fails every floor, as it should.

    Example:
        >>> from types import SimpleNamespace
        >>> import pandas as pd
        >>> ep = pd.DataFrame({"epoch": [0, 1], "val_loss": [4.0, 3.0], "val_acc": [0.2, 0.3]})
        >>> run = SimpleNamespace(epochs=ep)
        >>> final_metric(run), round(final_metric(run, "val_ppl"), 2)
        (0.3, 20.09)
    """
    ep = getattr(run, "epochs", None)
    if ep is None or not len(ep):
        return None
    ep = ep.sort_values("epoch") if "epoch" in ep.columns else ep
    if metric in ep.columns:
        return float(ep[metric].iloc[-1])
    if metric == "val_ppl" and "val_loss" in ep.columns:
        return float(np.exp(np.clip(ep["val_loss"].iloc[-1], None, 700.0)))
    return None


def _key(meta: Mapping[str, Any], by: Literal["dataset", "arch_dataset"]) -> str:
    ds = str(meta.get("dataset"))
    return f"{meta.get('arch')}/{ds}" if by == "arch_dataset" else ds


def choose_floors(
    reference_runs: Iterable[RunLike],
    quantile: float = 0.5,
    fraction: float = 0.95,
    by: Literal["dataset", "arch_dataset"] = "dataset",
    metric: str | None = None,
) -> dict[str, Floor]:
    """Floors like Table 10: ``fraction`` of the reference performance, per dataset.

    The reference performance of a group is the ``quantile`` of its reference runs' final
    metric, taken on the "goodness" scale (so ``quantile=0.5`` is the median run for both
    accuracy and perplexity). Accuracy floors are ``fraction * ref``; perplexity floors are
    ``ref / fraction`` (95 % of the performance means 1/0.95 times the perplexity).

    Args:
        reference_runs: runs trained with validated hyperparameters and no intervention.
        quantile: which reference run counts as "the reference" (0.5: the median one).
        fraction: share of the reference performance a Healthy run must reach (paper: 0.95).
        by: key floors by ``"dataset"`` (Table 10) or ``"arch_dataset"`` (``"arch/dataset"``,
            the paper's ``tau(arch, dataset)``).
        metric: force a metric; by default ``val_ppl`` when a group logs it, else ``val_acc``.

    Returns:
        ``{key: Floor}``, ready for ``LabelConfig(floors=...)``.

    Example:
        >>> from types import SimpleNamespace
        >>> import pandas as pd
        >>> def ref(acc):
        ...     return SimpleNamespace(meta={"dataset": "svhn", "arch": "r18"},
        ...                            epochs=pd.DataFrame({"epoch": [0], "val_acc": [acc]}))
        >>> floors = choose_floors([ref(0.90), ref(0.94), ref(0.96)])
        >>> round(floors["svhn"].threshold, 3)
        0.893
    """
    groups: dict[str, list[RunLike]] = defaultdict(list)
    for run in reference_runs:
        groups[_key(run.meta, by)].append(run)
    floors: dict[str, Floor] = {}
    for key, runs in groups.items():
        m = metric
        if m is None:
            has_ppl = any("val_ppl" in getattr(r, "epochs", {}).columns for r in runs)
            m = "val_ppl" if has_ppl else "val_acc"
        higher = m != "val_ppl" and not m.endswith("loss")
        vals = np.array([v for r in runs if (v := final_metric(r, m)) is not None], dtype=float)
        vals = vals[np.isfinite(vals)]
        if not len(vals):
            continue
        # Quantile on the goodness scale so `quantile` means the same for acc and ppl.
        ref = np.quantile(vals, quantile) if higher else np.quantile(vals, 1.0 - quantile)
        thr = fraction * ref if higher else ref / fraction
        floors[key] = Floor(metric=m, threshold=float(thr), higher_is_better=higher)
    return floors


def floor_for(meta: Mapping[str, Any], floors: Mapping[str, Floor | float]) -> Floor | None:
    """The floor that applies to a run: ``"arch/dataset"`` first, then ``"dataset"``.

    Example:
        >>> floor_for({"arch": "vit", "dataset": "c100"}, {"c100": 0.78}).threshold
        0.78
    """
    for key in (f"{meta.get('arch')}/{meta.get('dataset')}", str(meta.get("dataset"))):
        if key in floors:
            f = floors[key]
            return f if isinstance(f, Floor) else Floor("val_acc", float(f))
    return None


def check_floor(
    run: RunLike, floors: Mapping[str, Floor | float]
) -> tuple[bool | None, dict[str, Any]]:
    """Whether the run meets its floor: ``True``/``False``, or ``None`` when no floor is known.

    Example:
        >>> from types import SimpleNamespace
        >>> import pandas as pd
        >>> run = SimpleNamespace(meta={"dataset": "c100"},
        ...                       epochs=pd.DataFrame({"epoch": [0], "val_acc": [0.8]}))
        >>> check_floor(run, {"c100": 0.78})[0], check_floor(run, {})[0]
        (True, None)
    """
    floor = floor_for(run.meta, floors)
    if floor is None:
        return None, {"floor_checked": False}
    value = final_metric(run, floor.metric)
    ok = floor.met(value)
    return ok, {
        "floor_checked": True,
        "floor_metric": floor.metric,
        "floor_threshold": floor.threshold,
        "floor_higher_is_better": floor.higher_is_better,
        "final_value": value,
        "floor_met": ok,
    }
