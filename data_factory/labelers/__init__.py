"""Appendix-A ground-truth labelers: deterministic rules with onset and causal firing times.

Offline and privileged: the rules read validation curves, per-sample probe predictions and the
optimizer-derived Lyapunov proxy, none of which TEViD sees. One module per rule
(:mod:`.overfitting`, :mod:`.instability`, :mod:`.forgetting`, :mod:`.concept_bias`,
:mod:`.healthy`), the Lyapunov proxy of Algorithm 1 (:mod:`.lyapunov`, imported lazily because it
needs torch) and their combination (:mod:`.rules`).

Example:
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> from data_factory.labelers import label_run, LabelConfig, frame_event_labels
    >>> steps = pd.DataFrame({"step": range(40), "epoch": np.arange(40) // 10,
    ...                       "loss": [1.0] * 30 + [np.inf] * 10})
    >>> run = SimpleNamespace(meta={"dataset": "svhn", "steps_per_epoch": 10}, steps=steps,
    ...                       epochs=pd.DataFrame(), arrays={})
    >>> lab = label_run(run, LabelConfig())
    >>> lab.label, lab.fire_time
    ('Instability', 30)
"""

from __future__ import annotations

from typing import Any

from data_factory.labelers.base import RuleResult, RunLike, Timeline
from data_factory.labelers.concept_bias import concept_bias_rule, shortcut_reliance
from data_factory.labelers.config import PRIORITY_SWAP, VARIANTS, LabelConfig, spike_windows
from data_factory.labelers.forgetting import forgetting_rule, mcnemar_drop
from data_factory.labelers.healthy import Floor, check_floor, choose_floors, final_metric
from data_factory.labelers.instability import (
    choose_lyap_margin,
    instability_rule,
    lyapunov_lower_bounds,
    lyapunov_windows,
    spike_scores,
)
from data_factory.labelers.overfitting import overfitting_rule, trend_pvalue
from data_factory.labelers.rules import (
    RunLabel,
    TruncatedRun,
    frame_event_labels,
    label_run,
    label_variants,
    truncate_run,
)

# Names served lazily by __getattr__ (they need torch).
_LAZY = {"LyapunovProbe", "FunctionalOptimizer", "LyapunovEstimate", "LogGrowth",
         "jvp_log_growth", "lyapunov_exponent"}

__all__ = [
    "PRIORITY_SWAP",
    "VARIANTS",
    "Floor",
    "FunctionalOptimizer",
    "LabelConfig",
    "LogGrowth",
    "LyapunovEstimate",
    "LyapunovProbe",
    "RuleResult",
    "RunLabel",
    "RunLike",
    "Timeline",
    "TruncatedRun",
    "check_floor",
    "choose_floors",
    "choose_lyap_margin",
    "concept_bias_rule",
    "final_metric",
    "forgetting_rule",
    "frame_event_labels",
    "instability_rule",
    "jvp_log_growth",
    "label_run",
    "label_variants",
    "lyapunov_exponent",
    "lyapunov_lower_bounds",
    "lyapunov_windows",
    "mcnemar_drop",
    "overfitting_rule",
    "shortcut_reliance",
    "spike_scores",
    "spike_windows",
    "trend_pvalue",
    "truncate_run",
]


def __getattr__(name: str) -> Any:
    # Labeling stored runs needs no torch; only the factory's in-training probe does.
    if name in _LAZY:
        from data_factory.labelers import lyapunov

        return getattr(lyapunov, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
