"""Curve-TCN: a causal temporal convolutional network on scalar training curves (Table 3).

The scalar-telemetry learned baseline: what a monitor that only logs the loss, learning rate and
gradient norm could learn. Its input at each capture step is the vector of
:data:`~core_models.baselines.features.CURVE_FEATURES` (per-step loss resampled onto the capture
grid as the interval mean/spread/max of ``log(1 + loss)``, its change, log learning rate, log
gradient norm, non-finite flags), standardized with training-set statistics. The network follows
Bai et al. (2018) and paper Appendix F.2's TCN: 4 residual blocks of two dilated *causal*
``Conv1d`` layers (kernel 5, dilations 1, 2, 4, 8; left padding only), so the output at capture
``t`` depends on captures ``t - R + 1 .. t`` with receptive field ``R = 1 + 2·(k-1)·Σd = 121``
captures — it classifies that window into :data:`~data_factory.labels.KNOWN_LABELS`. Applying
it to a whole run at once gives every window's prediction in one pass.

Training: per-capture cross-entropy against the per-frame event labels of the training runs
(Unknown steps ignored, classes weighted to equal total weight), Adam, whole runs as sequences
(right-padded in a batch, which a causal network cannot see). The epoch with the best validation
balanced accuracy (mean per-class recall over the labelled capture steps of the validation runs)
is kept, with early stopping after ``patience`` epochs without improvement — validation runs
only. (Validation cross-entropy is a poor stopping signal here: it rises as soon as the network
grows confident, long before its per-step classification stops improving.)

Example:
    >>> import torch
    >>> net = CausalTCN(in_features=3, n_classes=5, channels=8).eval()
    >>> x = torch.randn(1, 3, 50)
    >>> y = x.clone(); y[..., 30:] = 100.0        # change the future after capture 29
    >>> bool(torch.allclose(net(x)[..., :30], net(y)[..., :30])), net.receptive_field
    (True, 121)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core_models.baselines.base import BaselineRun, LabelLike, NotFittedError
from core_models.baselines.classifier import CaptureClassifier, labelled_captures
from core_models.baselines.features import CURVE_FEATURES, curve_features
from data_factory.labels import KNOWN_LABELS

__all__ = ["CausalTCN", "CurveTCN"]

_IGNORE = -100


class _CausalConv1d(nn.Conv1d):
    """``Conv1d`` padded on the left only: output ``t`` sees inputs ``<= t``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, dilation: int) -> None:
        super().__init__(cin, cout, kernel_size, dilation=dilation)
        self.left = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


class _TemporalBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int, dilation: int,
                 dropout: float) -> None:
        super().__init__()
        self.conv1 = _CausalConv1d(cin, cout, kernel_size, dilation)
        self.conv2 = _CausalConv1d(cout, cout, kernel_size, dilation)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(self.conv1(x)))
        h = self.drop(F.relu(self.conv2(h)))
        return F.relu(h + self.skip(x))


class CausalTCN(nn.Module):
    """Residual dilated causal TCN: ``[B, F, T]`` features → ``[B, K, T]`` logits.

    Args:
        in_features: input channels ``F``.
        n_classes: output classes ``K``.
        channels: hidden width.
        kernel_size: temporal kernel (5 in Appendix F.2).
        dilations: one residual block per dilation ((1, 2, 4, 8) in Appendix F.2).
        dropout: dropout after each convolution.
    """

    def __init__(self, in_features: int, n_classes: int = len(KNOWN_LABELS), channels: int = 32,
                 kernel_size: int = 5, dilations: Sequence[int] = (1, 2, 4, 8),
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.kernel_size, self.dilations = int(kernel_size), tuple(int(d) for d in dilations)
        blocks, cin = [], in_features
        for d in self.dilations:
            blocks.append(_TemporalBlock(cin, channels, kernel_size, d, dropout))
            cin = channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv1d(channels, n_classes, 1)

    @property
    def receptive_field(self) -> int:
        """Captures that influence one output: ``1 + 2·(kernel-1)·Σ dilations``."""
        return 1 + 2 * (self.kernel_size - 1) * sum(self.dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class CurveTCN(CaptureClassifier):
    """Causal TCN over scalar curves, trained on per-frame event labels.

    Args:
        channels, kernel_size, dilations, dropout: :class:`CausalTCN` shape.
        epochs: maximum training epochs (passes over the training runs).
        lr, weight_decay: Adam.
        batch_size: runs per batch.
        patience: epochs without validation improvement before stopping (needs validation
            runs; without them every epoch is run and the last is kept).
        seed: initialisation and shuffling seed.
        device: torch device.

    Attributes (after :meth:`fit`):
        model_: the trained :class:`CausalTCN` (eval mode).
        mean_, std_: feature standardization from the training runs.
        best_epoch_: epoch kept; history_: ``[(train_loss, val_loss, val_balanced_accuracy),
        ...]`` per epoch (NaN without validation runs).
    """

    name = "curve_tcn"

    def __init__(self, channels: int = 32, kernel_size: int = 5,
                 dilations: Sequence[int] = (1, 2, 4, 8), dropout: float = 0.1,
                 epochs: int = 100, lr: float = 3e-3, weight_decay: float = 1e-4,
                 batch_size: int = 16, patience: int = 15, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        self.channels, self.kernel_size = int(channels), int(kernel_size)
        self.dilations, self.dropout = tuple(dilations), float(dropout)
        self.epochs, self.lr, self.weight_decay = int(epochs), float(lr), float(weight_decay)
        self.batch_size, self.patience, self.seed = int(batch_size), int(patience), int(seed)
        self.device = torch.device(device)
        self.model_: CausalTCN | None = None
        self.mean_ = np.zeros(len(CURVE_FEATURES))
        self.std_ = np.ones(len(CURVE_FEATURES))
        self.best_epoch_ = 0
        self.history_: list[tuple[float, float, float]] = []

    # ------------------------------------------------------------------ data
    def _sequences(self, runs: Sequence[BaselineRun], labels: Sequence[LabelLike]
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(curve_features(run, grid), y)
                for run, grid, y in labelled_captures(runs, labels, ignore=_IGNORE) if len(y)]

    def _batch(self, seqs: Sequence[tuple[np.ndarray, np.ndarray]]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        t_max = max(len(y) for _, y in seqs)
        xb = np.zeros((len(seqs), len(CURVE_FEATURES), t_max), dtype=np.float32)
        yb = np.full((len(seqs), t_max), _IGNORE, dtype=np.int64)
        for i, (x, y) in enumerate(seqs):
            xb[i, :, : len(y)] = ((x - self.mean_) / self.std_).T
            yb[i, : len(y)] = y
        return torch.from_numpy(xb).to(self.device), torch.from_numpy(yb).to(self.device)

    def _evaluate(self, model: CausalTCN, seqs: Sequence[tuple[np.ndarray, np.ndarray]],
                  weight: torch.Tensor) -> tuple[float, float]:
        """(weighted cross-entropy, balanced accuracy) over the labelled steps of ``seqs``."""
        model.eval()
        total, norm = 0.0, 0.0
        ys, preds = [], []
        with torch.no_grad():
            for i in range(0, len(seqs), self.batch_size):
                xb, yb = self._batch(seqs[i: i + self.batch_size])
                logits = model(xb)
                total += float(F.cross_entropy(logits, yb, weight=weight, ignore_index=_IGNORE,
                                               reduction="sum"))
                keep = yb != _IGNORE
                norm += float(weight[yb[keep]].sum())
                ys.append(yb[keep].cpu().numpy())
                preds.append(logits.argmax(dim=1)[keep].cpu().numpy())
        y, p = np.concatenate(ys), np.concatenate(preds)
        recalls = [float(np.mean(p[y == c] == c)) for c in np.unique(y)]
        return total / max(norm, 1e-12), float(np.mean(recalls)) if recalls else math.nan

    # ------------------------------------------------------------------ training
    def fit(self, train_runs: Sequence[BaselineRun], train_labels: Sequence[LabelLike],
            val_runs: Sequence[BaselineRun] | None = None,
            val_labels: Sequence[LabelLike] | None = None) -> CurveTCN:
        """Train on the training runs; keep the epoch with the best validation balanced
        accuracy (the last epoch when no validation run is given)."""
        train = self._sequences(train_runs, train_labels)
        if not train:
            raise ValueError("CurveTCN.fit: no training capture steps")
        val = self._sequences(val_runs, val_labels) if val_runs and val_labels is not None \
            else []
        xs = np.concatenate([x for x, _ in train])
        self.mean_ = xs.mean(axis=0)
        self.std_ = np.maximum(xs.std(axis=0), 1e-3)
        ys = np.concatenate([y for _, y in train])
        counts = np.bincount(ys[ys >= 0], minlength=len(KNOWN_LABELS)).astype(np.float64)
        present = counts > 0
        w = np.zeros(len(KNOWN_LABELS))
        w[present] = counts[present].sum() / (present.sum() * counts[present])
        weight = torch.tensor(w, dtype=torch.float32, device=self.device)

        torch.manual_seed(self.seed)
        gen = np.random.default_rng(self.seed)
        model = CausalTCN(len(CURVE_FEATURES), len(KNOWN_LABELS), self.channels,
                          self.kernel_size, self.dilations, self.dropout).to(self.device)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best_state, best_val, stale = copy.deepcopy(model.state_dict()), -math.inf, 0
        self.history_ = []
        for epoch in range(self.epochs):
            model.train()
            order = gen.permutation(len(train))
            run_loss, n_batches = 0.0, 0
            for i in range(0, len(order), self.batch_size):
                xb, yb = self._batch([train[j] for j in order[i: i + self.batch_size]])
                loss = F.cross_entropy(model(xb), yb, weight=weight, ignore_index=_IGNORE)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                run_loss, n_batches = run_loss + loss.item(), n_batches + 1
            val_loss, val_bacc = self._evaluate(model, val, weight) if val else (math.nan,
                                                                                 math.nan)
            self.history_.append((run_loss / max(n_batches, 1), val_loss, val_bacc))
            if not val:
                best_state, self.best_epoch_ = model.state_dict(), epoch
                continue
            if val_bacc > best_val + 1e-9:
                best_val, stale, self.best_epoch_ = val_bacc, 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= self.patience:
                    break
        model.load_state_dict(best_state)
        self.model_ = model.eval()
        return self

    # ------------------------------------------------------------------ inference
    def predict_proba(self, run: BaselineRun) -> np.ndarray:
        """``[n_captures, K]`` softmax probabilities over :data:`KNOWN_LABELS`."""
        if self.model_ is None:
            raise NotFittedError("CurveTCN.fit must be called before scoring")
        x = curve_features(run)
        if x.shape[0] == 0:
            return np.zeros((0, len(KNOWN_LABELS)))
        xt = torch.from_numpy(((x - self.mean_) / self.std_).T.astype(np.float32))
        with torch.inference_mode():
            logits = self.model_(xt[None].to(self.device))[0]
        return torch.softmax(logits.double(), dim=0).T.cpu().numpy()
