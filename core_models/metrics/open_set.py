"""Open set: how well vacuity tells novel (``Unknown``) anomalies from known ones.

:func:`unknown_auroc` is the AUROC of Unknown vs known, per step or per run, against every known
sample or, as Appendix H's "known vs. unknown anomalies", against known anomalies only.

Example:
    >>> import numpy as np
    >>> from core_models.metrics import RunPrediction
    >>> p = np.tile([1.0, 0, 0, 0, 0], (2, 1))
    >>> a = RunPrediction("k", "Healthy", [0, 1], [0, 1], p, [0.1, 0.2])
    >>> b = RunPrediction("u", "Unknown", [0, 1], [0, 1], p, [0.7, 0.8], onset_step=0)
    >>> unknown_auroc([a, b], level="run")
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from sklearn.metrics import roc_auc_score

from core_models.metrics.record import ANOMALOUS_KNOWN, RunPrediction, _as_runs, _nonempty
from data_factory.labels import UNKNOWN

__all__ = ["unknown_auroc"]


def unknown_auroc(runs: Sequence[RunPrediction], level: Literal["step", "run"] = "step",
                  negatives: Literal["known", "known_anomalies"] = "known") -> float:
    """AUROC of novel (``Unknown``) vs known, scored by vacuity (sklearn ``roc_auc_score``).

    ``level="step"``: positives are steps whose event label is Unknown (a novel anomaly under way).
    ``level="run"``: positives are Unknown runs, each run scored by its largest vacuity.

    ``negatives="known"`` counts every other step (run) as a negative, healthy ones included.
    ``negatives="known_anomalies"`` is Appendix H's "known vs. unknown anomalies": only steps
    whose event label is a known anomalous class (runs labelled with one) are negatives, so the
    score must tell a novel failure from a known failure, not from healthy training.

    Raises:
        ValueError: when only one of the two groups is present, or for an unknown option.

    Example:
        >>> import numpy as np
        >>> p = np.tile([1.0, 0, 0, 0, 0], (2, 1))
        >>> a = RunPrediction("k", "Healthy", [0, 1], [0, 1], p, [0.1, 0.2])
        >>> b = RunPrediction("u", "Unknown", [0, 1], [0, 1], p, [0.7, 0.8], onset_step=0)
        >>> c = RunPrediction("o", "Overfitting", [0, 1], [0, 1], p, [0.75, 0.9], onset_step=0)
        >>> unknown_auroc([a, b, c]), unknown_auroc([a, b, c], negatives="known_anomalies")
        (0.625, 0.25)
    """
    rs = _as_runs(runs)
    _nonempty(rs, "unknown_auroc")
    if negatives not in ("known", "known_anomalies"):
        raise ValueError(f"negatives must be 'known' or 'known_anomalies', got {negatives!r}")
    if level == "step":
        ev = np.concatenate([r.event_labels for r in rs])
        s = np.concatenate([r.vacuity for r in rs])
    elif level == "run":
        rs = [r for r in rs if r.n_steps]
        ev = np.array([r.label for r in rs])
        s = np.array([r.vacuity.max() for r in rs])
    else:
        raise ValueError(f"level must be 'step' or 'run', got {level!r}")
    y = ev == UNKNOWN
    if negatives == "known_anomalies":
        keep = y | np.isin(ev, ANOMALOUS_KNOWN)
        y, s = y[keep], s[keep]
    if y.all() or not y.any():
        raise ValueError("unknown_auroc: needs both Unknown and known samples")
    return float(roc_auc_score(y, s))
