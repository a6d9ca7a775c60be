"""The shared half of the supervised per-capture classifiers (Curve-TCN, Stats-GBDT).

Both are trained on the per-frame event labels of the training runs and output, at every capture
step, probabilities over :data:`~data_factory.labels.KNOWN_LABELS`; the anomaly score is
``1 - p_Healthy``. :class:`CaptureClassifier` turns ``predict_proba`` into :class:`RunScores`,
and :func:`labelled_captures` walks training runs with their capture grids and label indices.

Example:
    >>> import numpy as np
    >>> from core_models.baselines.toy import toy_run
    >>> class Constant(CaptureClassifier):
    ...     name = "constant"
    ...     def predict_proba(self, run):
    ...         return np.tile([0.7, 0.1, 0.1, 0.05, 0.05], (len(capture_grid(run)), 1))
    >>> s = Constant().score_run(toy_run())
    >>> s.score.round(2).tolist()[:3], s.has_classes
    ([0.3, 0.3, 0.3], True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from core_models.baselines.base import (
    BaselineBase,
    BaselineRun,
    LabelLike,
    RunScores,
    event_labels_for,
    label_indices,
    run_id_of,
)
from core_models.baselines.features import CaptureGrid, capture_grid
from data_factory.labels import HEALTHY, KNOWN_LABELS

__all__ = ["CaptureClassifier", "labelled_captures"]

_HEALTHY = KNOWN_LABELS.index(HEALTHY)


def labelled_captures(runs: Sequence[BaselineRun], labels: Sequence[LabelLike], ignore: int = -100
                      ) -> Iterator[tuple[BaselineRun, CaptureGrid, np.ndarray]]:
    """Each run with its capture grid and per-capture label indices (``ignore`` for Unknown).

    Raises:
        ValueError: ``runs`` and ``labels`` differ in length.

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> from data_factory.labelers.rules import RunLabel
        >>> healthy = RunLabel("Healthy", None, None)
        >>> [(len(g), y[:2].tolist()) for _, g, y in labelled_captures([toy_run()], [healthy])]
        [(10, [0, 0])]
    """
    if len(runs) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    for run, label in zip(runs, labels):
        grid = capture_grid(run)
        yield run, grid, label_indices(event_labels_for(label, grid.steps), ignore=ignore)


class CaptureClassifier(BaselineBase):
    """A supervised baseline with class probabilities at every capture step.

    Subclasses implement :meth:`predict_proba` (and :meth:`fit`); :meth:`score_run` reports those
    probabilities with the anomaly score ``1 - p_Healthy``.
    """

    supervised = True

    def predict_proba(self, run: BaselineRun) -> np.ndarray:  # pragma: no cover - abstract
        """``[n_captures, K]`` probabilities over :data:`KNOWN_LABELS`."""
        raise NotImplementedError

    def score_run(self, run: BaselineRun) -> RunScores:
        """Class probabilities; the anomaly score is ``1 - p_Healthy``."""
        grid = capture_grid(run)
        p = np.clip(self.predict_proba(run), 0.0, 1.0)
        score = np.clip(1.0 - p[:, _HEALTHY], 0.0, 1.0)
        return RunScores(self.name, run_id_of(run), grid.steps, grid.epochs, score, p)
