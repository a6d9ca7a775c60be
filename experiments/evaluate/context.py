"""What every table needs: the evaluation's context (:class:`_Context`: configuration, methods,
guard, cost model, where to write), bootstrap intervals, number formatting and the method order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from core_models.metrics import (
    ConfidenceInterval,
    RunPrediction,
    bootstrap_ci,
    paired_bootstrap_ci,
)
from data_factory.labels import LABELS
from experiments.evaluate.leakage import LeakageGuard
from experiments.evaluate.methods import MethodEval
from experiments.report import write_section
from tevid_hpo.cost import CostModel


def _interval(metric: Callable[[list[RunPrediction]], float], runs: Sequence[RunPrediction],
              n_resamples: int, seed: int) -> ConfidenceInterval:
    rs = list(runs)
    if len(rs) < 2:
        try:
            est = float(metric(rs)) if rs else float("nan")
        except ValueError:
            est = float("nan")
        return ConfidenceInterval(est, float("nan"), float("nan"), "none", note="fewer than 2 runs")
    return bootstrap_ci(metric, rs, n_resamples=n_resamples, seed=seed)


def _fmt(ci: ConfidenceInterval | None, digits: int = 3) -> str:
    """``est [low, high]``; ``*`` marks a percentile fallback; ``N/A`` when undefined."""
    if ci is None or not math.isfinite(ci.estimate):
        return "N/A"
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return f"{ci.estimate:.{digits}f}"
    mark = "" if ci.method == "BCa" else "*"
    return f"{ci.estimate:.{digits}f} [{ci.low:.{digits}f}, {ci.high:.{digits}f}]{mark}"


def _num(x: float | None, digits: int = 3) -> str:
    return "N/A" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"


def _ci_dict(ci: ConfidenceInterval | None) -> dict[str, Any] | None:
    if ci is None:
        return None
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high, "method": ci.method,
            "n_failed": ci.n_failed, "note": ci.note}


def _markdown(rows: list[dict[str, Any]]) -> str:
    # disable_numparse: tabulate would otherwise re-format "0.050" as "0.05" and "N/A" columns.
    return (pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows
            else "_(no rows)_")


_CI_NOTE = ("Intervals: 95 % BCa bootstrap over test runs (`core_models.metrics.bootstrap_ci`); "
            "`*` marks a percentile interval where BCa is undefined on these runs (e.g. some "
            "resamples leave the metric undefined).")


@dataclass
class _Context:
    """What every table needs."""

    cfg: DictConfig
    command: str
    results: Path
    figures: Path
    seed: int
    n_resamples: int
    corpus: str
    methods: dict[str, MethodEval]
    guard: LeakageGuard
    missing_variants: dict[str, Path]
    cost: CostModel
    summary: dict[str, Any] = field(default_factory=dict)

    def ci(self, metric: Callable[[list[RunPrediction]], float],
           runs: Sequence[RunPrediction]) -> ConfidenceInterval:
        return _interval(metric, runs, self.n_resamples, self.seed)

    def paired(self, metric: Callable[[list[RunPrediction]], float], a: MethodEval,
               b: MethodEval) -> ConfidenceInterval:
        """Interval of ``metric(a) - metric(b)`` on the test runs, both scored on the same
        resamples (:func:`~core_models.metrics.paired_bootstrap_ci`)."""
        return paired_bootstrap_ci(metric, a.test, b.test, n_resamples=self.n_resamples,
                                   seed=self.seed)

    def write(self, name: str, body: str) -> None:
        write_section(name, body, command=self.command, path=self.results, seed=self.seed,
                      corpus=self.corpus, n_resamples=self.n_resamples,
                      far=float(self.cfg.far))

    def figure_link(self, path: Path) -> str:
        return os.path.relpath(path, self.results.parent)


def _order(ctx: _Context) -> list[MethodEval]:
    """Scalar baselines, then layer-statistics and embedding baselines, then TEViD variants."""
    rank = {"Scalar telemetry": 0, "Layer statistics": 1, "Layer statistics + scalar telemetry": 2,
            "Internal-state video": 3}
    return sorted(ctx.methods.values(), key=lambda m: (rank.get(m.input_type, 3), m.is_tevid))


def _test_mix(runs: Sequence[RunPrediction]) -> str:
    counts = pd.Series([r.label for r in runs]).value_counts()
    return ", ".join(f"{c} {int(counts[c])}" for c in LABELS if c in counts)
