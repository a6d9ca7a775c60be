"""The external-dev recordings as labelled streams, for choosing settings on transfer.

The diagnostician pipeline chooses burn-in, run memory and thresholds on a validation set that
holds factors out (issue 24, point 4); external-dev is one. :func:`dev_streams` hands it the
recorded external-dev runs with a per-frame event label (the truth's label from its onset on,
``Healthy`` before) and whether the run is a healthy reference. Only ``counted`` runs (a healthy
reference or an anomaly that happened) are returned. external-test is never handed out: asking
for it raises :class:`~experiments.evaluate.LeakageError`, and every returned run passes a
:class:`~experiments.evaluate.LeakageGuard` built on the stored external-test recordings.

Example:
    >>> from experiments.external.transfer import dev_streams
    >>> dev_streams(half="external-test")
    Traceback (most recent call last):
    ...
    experiments.evaluate.leakage.LeakageError: external-test may not be used for tuning
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_factory.labels import HEALTHY
from data_factory.store import Run, RunStore
from experiments.evaluate.leakage import LeakageError, LeakageGuard
from experiments.external.record import as_monitored, store_for
from experiments.external.suite import DEV_HALF, POOL_HALF, TEST_HALF
from experiments.external.truth import truth_of

__all__ = ["dev_streams", "frame_labels"]


def frame_labels(run: Run, label: str, onset: int | None) -> np.ndarray:
    """Per-frame event labels of ``run``: ``label`` at capture steps ``>= onset``, ``Healthy``
    before (all ``Healthy`` when ``onset`` is ``None``).

    Example:
        >>> from types import SimpleNamespace as N
        >>> frame_labels(N(frames=N(steps=np.array([0, 10, 20]))), "Divergence", 10).tolist()
        ['Healthy', 'Divergence', 'Divergence']
    """
    steps = np.asarray(run.frames.steps, np.int64)
    if onset is None:
        return np.full(len(steps), HEALTHY, dtype=object)
    return np.where(steps >= int(onset), label, HEALTHY).astype(object)


def dev_streams(root: Path | None = None, key: str | None = None, half: str = DEV_HALF,
                store: RunStore | None = None, pool: bool = False
                ) -> list[tuple[Run, np.ndarray, bool]]:
    """The counted external-dev recordings as ``[(run, per-frame event labels, reference)]``.

    Args:
        root: recordings root (default the cache); ``key``: a given recordings directory
            (default the current frame / capture code's); ``store``: a store instead of both.
        half: must be external-dev; anything else raises :class:`LeakageError`.
        pool: also the external-train pool's recordings (after the dev runs;
            ``python -m experiments.external --half train`` records them).

    Example:
        >>> isinstance(dev_streams(root=Path("/nonexistent")), list)
        True
    """
    if half not in (DEV_HALF, "dev"):
        raise LeakageError(f"{half} may not be used for tuning")
    store = store if store is not None else store_for(root=root, key=key)
    if not store.root.is_dir():
        return []
    runs = [store.load(rid) for rid in store.list()]
    runs = [r for r in runs if (r.path / "frames.safetensors").exists()]
    test = [r for r in runs if r.meta.get("split") == TEST_HALF]
    splits = (DEV_HALF, POOL_HALF) if pool else (DEV_HALF,)
    dev = sorted((r for r in runs if r.meta.get("split") in splits),
                 key=lambda r: splits.index(r.meta["split"]))
    guard = LeakageGuard(test, factors=())   # same rule as the suite's own threshold choice
    out = []
    for run in guard.admit("transfer selection (external-dev)", "dev_streams", dev):
        t = truth_of(run)
        if t.counted:
            # TEViD reads the telemetry its monitor saw (clipped gradient norms included)
            out.append((as_monitored(run), frame_labels(run, t.label.label, t.label.onset),
                        t.reference))
    return out
