"""The causal-integrity protocol of Table 15: :func:`truncate_before_fire`.

It keeps each anomalous run's diagnoses up to ``Δ`` epochs before the labelling rule first fired,
so a metric computed on the result shows what the model knew before the rule's evidence existed.

Example:
    >>> import numpy as np
    >>> from core_models.metrics import RunPrediction
    >>> run = RunPrediction("r", "Instability", [0, 1, 2], [0.0, 1.0, 2.0],
    ...     np.tile([0.5, 0, 0.5, 0, 0], (3, 1)), [0, 0, 0], onset_epoch=1, fire_epoch=2)
    >>> [r.n_steps for r in truncate_before_fire([run], 0.0)]
    [3]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from core_models.metrics.record import RunPrediction, _as_runs

__all__ = ["truncate_before_fire"]


def truncate_before_fire(
    runs: Sequence[RunPrediction] | RunPrediction, delta_epochs: float
) -> list[RunPrediction]:
    """Causal-integrity view of Table 15: drop diagnoses after ``fire_epoch - delta_epochs``.

    Diagnoses are causal (the one at step ``t`` sees frames up to ``t`` only), so keeping those
    at epochs ``<= fire_epoch - Δ`` is the same as feeding input windows that end ``Δ`` epochs
    before the rule's first evidence. Runs without a ``fire_epoch`` (Healthy runs) are kept whole.
    A recorded alert after the cut is dropped with the steps.

    Example:
        >>> import numpy as np
        >>> run = RunPrediction("r", "Instability", [0, 1, 2], [0.0, 1.0, 2.0],
        ...     np.tile([0.5, 0, 0.5, 0, 0], (3, 1)), [0, 0, 0], onset_epoch=1, fire_epoch=2)
        >>> truncate_before_fire([run], 1.0)[0].n_steps
        2
    """
    if not math.isfinite(delta_epochs) or delta_epochs < 0:
        raise ValueError(f"delta_epochs must be finite and >= 0, got {delta_epochs!r}")
    out = []
    for r in _as_runs(runs):
        if r.fire_epoch is None:
            out.append(r)
            continue
        keep = r.epochs <= r.fire_epoch - delta_epochs
        alert_kept = r.alert_epoch is not None and r.alert_epoch <= r.fire_epoch - delta_epochs
        out.append(
            RunPrediction(
                run_id=r.run_id,
                label=r.label,
                steps=r.steps[keep],
                epochs=r.epochs[keep],
                probs=r.probs[keep],
                vacuity=r.vacuity[keep],
                onset_step=r.onset_step,
                onset_epoch=r.onset_epoch,
                fire_step=r.fire_step,
                fire_epoch=r.fire_epoch,
                event_labels=r.event_labels[keep],
                alert_step=r.alert_step if alert_kept else None,
                alert_epoch=r.alert_epoch if alert_kept else None,
                meta=r.meta,
            )
        )
    return out
