"""The diagnostic cost of Appendix I: :func:`diagnostic_cost`.

``C_FA·N_FA + C_MD·N_MD + C_Lead·Σ Lead`` from counts and leads, e.g. those of an
:class:`~core_models.metrics.AlertSummary`. :class:`tevid_hpo.cost.CostModel` builds policy
search on top of it.

Example:
    >>> diagnostic_cost(1, 0, 4.0)
    -1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["diagnostic_cost"]


def diagnostic_cost(
    n_fa: float,
    n_md: float,
    leads: Sequence[float] | np.ndarray | float = (),
    c_fa: float = 1.0,
    c_md: float = 10.0,
    c_lead: float = -0.5,
) -> float:
    """Appendix I: ``C_FA·N_FA + C_MD·N_MD + C_Lead·Σ Lead_i`` over detected anomalies.

    ``leads`` is either the per-detection leads (epochs, positive = early) or their sum. With
    ``C_Lead < 0`` early detections lower the cost and late ones (negative lead) raise it.
    See :class:`tevid_hpo.cost.CostModel` for validated coefficients and policy search.

    Example:
        >>> diagnostic_cost(5, 3, [6.0, 2.0])   # 5·1 + 3·10 - 0.5·8
        31.0
    """
    total_lead = float(np.sum(np.asarray(leads, dtype=np.float64)))
    return float(c_fa * n_fa + c_md * n_md + c_lead * total_lead)
