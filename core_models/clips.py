"""Clips of internal-state videos for pretraining, fine-tuning and evaluation.

A clip is the window of ``W`` frames ending at one capture step — exactly what the streaming
:class:`~tevid_hpo.diagnostician.Diagnostician` sees at that step, including its left padding
(the first frame repeated) before ``W`` frames exist. The diagnostician withholds its verdict
until a run has produced its burn-in of real frames (:func:`core_models.calibration.withhold`),
so training can skip the earlier windows (``min_frames``): a padded still picture carries no
dynamics, only the architecture's look, which is what the model must not learn to read. Its label is the run's event label at the
window's last frame (:func:`data_factory.labelers.frame_event_labels`), so a model is trained to
say what is true *now*, never what happens later.

Example:
    >>> import torch
    >>> from types import SimpleNamespace
    >>> frames = SimpleNamespace(tensor=torch.zeros(4, 6, 8, 8, dtype=torch.bfloat16),
    ...                          steps=torch.arange(4).numpy() * 10)
    >>> ds = ClipDataset([SimpleNamespace(frames=frames)], window=3)
    >>> len(ds), tuple(ds[0].shape)
    (4, (3, 6, 8, 8))
    >>> len(ClipDataset([SimpleNamespace(frames=frames)], window=3, min_frames=3))
    2
    >>> import pandas as pd
    >>> steps = pd.DataFrame({"step": range(40), "loss": 1.0, "lr": 0.1, "grad_norm": 1.0})
    >>> item = ClipDataset([SimpleNamespace(frames=frames, steps=steps)], window=3,
    ...                    telemetry=True)[0]
    >>> tuple(item["clips"].shape), tuple(item["telemetry"].shape)
    ((3, 6, 8, 8), (3, 13))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from core_models.telemetry import run_telemetry
from data_factory.labels import KNOWN_LABELS


def window_indices(n_frames: int, end: int, window: int) -> list[int]:
    """Frame indices of the window ending at ``end``, left-padded with frame 0.

    Example:
        >>> window_indices(10, 1, 4)
        [0, 0, 0, 1]
    """
    start = end - window + 1
    return [max(0, i) for i in range(start, end + 1)]


class ClipDataset(Dataset):
    """Every (or every ``stride``-th) window of ``window`` frames over a list of runs.

    Args:
        runs: objects with ``.frames.tensor`` (``N×6×S×S``) and ``.frames.steps`` (a stored
            :class:`~data_factory.store.Run` or anything shaped like it).
        event_labels: per run, a per-frame array of label names (``None``: unlabelled clips, for
            pretraining). Labels outside ``label_names`` (``Unknown``) become ``-1``.
        window: frames per clip (``W``).
        stride: keep every ``stride``-th window end (the last frame of a run is always kept).
        label_names: class order of the head.
        min_frames: only windows ending at a run's ``min_frames``-th frame or later (1: all).
            A run shorter than that contributes its last window, so no run is dropped.
        telemetry: also read each run's ``.steps`` (``steps.csv``) into per-frame features
            (:func:`core_models.telemetry.run_telemetry`); the clip is then the dict
            ``{"clips": W×6×S×S, "telemetry": W×F}``, both windows with the same indices and
            left padding (the diagnostician's streaming window).

    Yields ``clip`` (float32 ``W×6×S×S``) or ``(clip, label)`` when labels are given.
    """

    def __init__(self, runs: Sequence[Any], event_labels: Sequence[np.ndarray] | None = None,
                 window: int = 10, stride: int = 1, label_names: Sequence[str] = KNOWN_LABELS,
                 min_frames: int = 1, telemetry: bool = False) -> None:
        if window < 1 or stride < 1 or min_frames < 1:
            raise ValueError("window, stride and min_frames must be >= 1")
        if event_labels is not None and len(event_labels) != len(runs):
            raise ValueError(f"{len(event_labels)} label arrays for {len(runs)} runs")
        self.window = window
        self.frames = [r.frames.tensor for r in runs]
        self.telemetry = ([torch.from_numpy(run_telemetry(r.steps, r.frames.steps)) for r in runs]
                          if telemetry else None)
        self.index: list[tuple[int, int]] = []
        lookup = {name: i for i, name in enumerate(label_names)}
        self.labels: list[int] | None = [] if event_labels is not None else None
        for r, frames in enumerate(self.frames):
            n = int(frames.shape[0])
            first = min(min_frames, n) - 1
            ends = sorted(set(range(first, n, stride)) | ({n - 1} if n else set()))
            for end in ends:
                self.index.append((r, end))
                if self.labels is not None:
                    names = event_labels[r]
                    if len(names) != n:
                        raise ValueError(f"run {r}: {len(names)} labels for {n} frames")
                    self.labels.append(lookup.get(str(names[end]), -1))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        r, end = self.index[i]
        idx = window_indices(len(self.frames[r]), end, self.window)
        clip = self.frames[r][idx].float()
        if self.telemetry is not None:
            clip = {"clips": clip, "telemetry": self.telemetry[r][idx]}
        if self.labels is None:
            return clip
        return clip, self.labels[i]

    def label_counts(self) -> dict[int, int]:
        """How many clips each label index has (``-1`` = Unknown)."""
        if self.labels is None:
            return {}
        values, counts = np.unique(np.array(self.labels), return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}
