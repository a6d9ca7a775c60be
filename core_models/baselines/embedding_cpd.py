"""Embedding-CPD: MMD change-point detection on frozen TEViD embeddings (paper Appendix L).

At every capture step the frozen TEViD backbone embeds the window of ``W`` frames ending there
(the clip the streaming :class:`~tevid_hpo.diagnostician.Diagnostician` would see, left-padded
with the first frame; :meth:`core_models.tevid.TEViD.embed`, the final-normalised [CLS] token).
Two rolling windows of ``L = 20`` embeddings are compared with the (biased, V-statistic) squared
maximum mean discrepancy under an RBF kernel ``k(a, b) = exp(-‖a - b‖² / (2σ²))``:

* the *recent* window holds the embeddings of captures ``t - L + 1 .. t``;
* the *reference* window is anchored ``L`` captures earlier: ``t - 2L + 1 .. t - L``.

Both lie in the past (indices before the first capture are clamped to it, as TEViD's clips are),
so the score at ``t`` uses frames up to ``t`` only. ``MMD² ∈ [0, 2]``; the score is ``MMD² / 2``.

Appendix L projects the [CLS] token to 64 dimensions with "a learned linear layer"; here the
projection is PCA fitted on the training runs' embeddings (unsupervised, so it learns nothing
about labels), to ``proj_dim`` dimensions when the embedding is wider. The bandwidth ``σ`` is
the median pairwise distance of validation-run embeddings (the median heuristic on validation,
as in Appendix L; training runs when no validation run is given). The 5 %-FAR alert threshold is
calibrated by the evaluation on validation predictions, like every other baseline's.

Example:
    >>> from core_models.tevid import TEViD
    >>> from core_models.baselines.toy import toy_run
    >>> cpd = EmbeddingCPD(TEViD("tiny"), window=4).fit([toy_run(frame_size=16)], [None])
    >>> s = cpd.score_run(toy_run(n_steps=200, explode_at=100, frame_size=16))
    >>> bool(s.score[:10].max() < s.score[11:16].max())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core_models.baselines.base import (
    BaselineBase,
    BaselineRun,
    NotFittedError,
    RunScores,
    run_id_of,
)
from core_models.baselines.features import capture_grid
from core_models.clips import window_indices
from core_models.tevid import TEViD

__all__ = ["EmbeddingCPD", "median_bandwidth", "mmd2_rbf"]


def mmd2_rbf(sq_dists: np.ndarray, ref: Sequence[int], recent: Sequence[int],
             bandwidth: float) -> float:
    """Biased squared MMD between two index sets of points, from their squared distances.

    Example:
        >>> d = np.array([[0.0, 4.0], [4.0, 0.0]])
        >>> round(mmd2_rbf(d, [0], [1], 1.0), 4)     # 2 - 2·exp(-2)
        1.7293
    """
    k = np.exp(-sq_dists / (2.0 * bandwidth * bandwidth))
    a, b = np.asarray(ref), np.asarray(recent)
    return float(k[np.ix_(a, a)].mean() + k[np.ix_(b, b)].mean() - 2.0 * k[np.ix_(a, b)].mean())


def median_bandwidth(points: np.ndarray, max_points: int = 2000, seed: int = 0) -> float:
    """Median heuristic: the median pairwise Euclidean distance (on a subsample).

    Example:
        >>> median_bandwidth(np.array([[0.0], [1.0], [3.0]]))
        2.0
    """
    x = np.asarray(points, dtype=np.float64)
    if x.shape[0] > max_points:
        x = x[np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False)]
    if x.shape[0] < 2:
        raise ValueError("median_bandwidth needs at least two points")
    d = np.sqrt(np.maximum(_sq_dists(x), 0.0))
    iu = np.triu_indices(x.shape[0], k=1)
    med = float(np.median(d[iu]))
    return med if med > 0 else 1.0


def _sq_dists(x: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)


class EmbeddingCPD(BaselineBase):
    """MMD between a reference and a recent window of frozen TEViD [CLS] embeddings.

    Args:
        model: a trained :class:`~core_models.tevid.TEViD` (its weights are not changed).
        window: ``L``, embeddings per MMD window (20 in Appendix L).
        proj_dim: PCA dimension (64 in Appendix L; ``None``: no projection).
        bandwidth: fixed RBF bandwidth (skips the median heuristic).
        batch_size: clips per forward pass.
        device: torch device for the embedding pass.

    Attributes (after :meth:`fit`):
        bandwidth_: the RBF bandwidth used; ``pca_mean_``/``pca_components_``: the projection.
    """

    name = "embedding_cpd"

    def __init__(self, model: TEViD, window: int = 20, proj_dim: int | None = 64,
                 bandwidth: float | None = None, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.window, self.proj_dim = int(window), proj_dim
        self.batch_size = int(batch_size)
        self.bandwidth_: float | None = None if bandwidth is None else float(bandwidth)
        self._fixed_bandwidth = bandwidth is not None
        self.pca_mean_: np.ndarray | None = None
        self.pca_components_: np.ndarray | None = None

    # ------------------------------------------------------------------ embeddings
    def raw_embeddings(self, run: BaselineRun) -> np.ndarray:
        """``[n_captures, D]`` [CLS] embeddings of the clip ending at each capture step."""
        frames = run.frames.tensor
        n = int(frames.shape[0])
        p = self.model.profile
        if n and tuple(frames.shape[1:]) != (p.in_chans, p.frame_size, p.frame_size):
            raise ValueError(f"frames of shape {tuple(frames.shape[1:])} do not match TEViD "
                             f"profile {p.name!r}")
        clip_value = float(self.model.input_norm.clip)
        out = []
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = [window_indices(n, end, p.window)
                       for end in range(start, min(n, start + self.batch_size))]
                clips = frames[torch.tensor(idx)].to(self.device, torch.float32)
                # Non-finite frames are saturated exactly as the Diagnostician does.
                clips = torch.nan_to_num(clips, nan=clip_value, posinf=clip_value,
                                         neginf=-clip_value)
                out.append(self.model.embed(clips).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, p.embed_dim))

    def embeddings(self, run: BaselineRun) -> np.ndarray:
        """Embeddings after the fitted PCA projection (raw when none was fitted)."""
        e = self.raw_embeddings(run)
        if self.pca_components_ is not None and self.pca_mean_ is not None:
            e = (e - self.pca_mean_) @ self.pca_components_.T
        return e

    # ------------------------------------------------------------------ fitting
    def fit(self, train_runs: Sequence[BaselineRun], train_labels: Sequence[Any] | None = None,
            val_runs: Sequence[BaselineRun] | None = None,
            val_labels: Sequence[Any] | None = None) -> EmbeddingCPD:
        """PCA on training-run embeddings; bandwidth by the median heuristic on validation runs
        (training runs when there are none). Labels are not used."""
        if self.proj_dim is not None and train_runs:
            e = np.concatenate([self.raw_embeddings(r) for r in train_runs])
            if e.shape[1] > self.proj_dim and e.shape[0] > self.proj_dim:
                mean = e.mean(axis=0)
                _, _, vt = np.linalg.svd(e - mean, full_matrices=False)
                self.pca_mean_, self.pca_components_ = mean, vt[: self.proj_dim]
        if not self._fixed_bandwidth:
            ref = list(val_runs or []) or list(train_runs)
            if not ref:
                raise ValueError("EmbeddingCPD.fit needs runs for the median heuristic")
            self.bandwidth_ = median_bandwidth(np.concatenate([self.embeddings(r) for r in ref]))
        return self

    # ------------------------------------------------------------------ scoring
    def score_run(self, run: BaselineRun) -> RunScores:
        """``MMD² / 2`` between the reference and recent windows at each capture step."""
        if self.bandwidth_ is None:
            raise NotFittedError("EmbeddingCPD needs fit() (or a fixed bandwidth) first")
        grid = capture_grid(run)
        e = self.embeddings(run)
        n = e.shape[0]
        d = _sq_dists(e) if n else np.zeros((0, 0))
        mmd = np.array([mmd2_rbf(d, window_indices(n, i - self.window, self.window),
                                 window_indices(n, i, self.window), self.bandwidth_)
                        for i in range(n)])
        mmd = np.clip(mmd, 0.0, 2.0)
        return RunScores(self.name, run_id_of(run), grid.steps, grid.epochs, mmd / 2.0,
                         extras={"mmd2": mmd})
