"""BANANAS' neural predictor: :class:`PathPredictor`, an ensemble of small MLPs on path encodings.

The ensemble's mean and spread are the predicted error of a candidate and its uncertainty, which
the search's acquisition (independent Thompson sampling) turns into a choice.

Example:
    >>> import numpy as np
    >>> mean, std = PathPredictor(num_models=2, epochs=5).fit(np.eye(3), [0.1, 0.2, 0.3]).predict(
    ...     np.eye(3))
    >>> mean.shape, std.shape
    ((3,), (3,))
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["PathPredictor"]


class PathPredictor:
    """BANANAS' predictor: an ensemble of small MLPs on path encodings, trained with MAE.

    Every member sees all the data (diversity comes from its own initialisation and batch
    order, as in the reference code); the ensemble's mean and standard deviation are the
    prediction and its uncertainty. Targets are standardised for training and predictions
    returned in the original units.

    Args:
        num_models: ensemble size (5 in the paper).
        hidden: width of the hidden layers.
        layers: hidden layers (the reference code uses 10 of width 20; 3 suffice for the small
            data sets a CPU search produces and train in a fraction of the time).
        epochs: passes over the data per fit.
        lr: Adam learning rate.
        batch_size: minibatch size.
        seed: seeds the members' initialisation and batch orders.

    Example:
        >>> import numpy as np
        >>> x = np.eye(6, dtype=np.float32)
        >>> y = np.arange(6, dtype=np.float32) / 10
        >>> mean, std = PathPredictor(epochs=100).fit(x, y).predict(x)
        >>> mean.shape, bool(np.abs(mean - y).mean() < 0.1)
        ((6,), True)
    """

    def __init__(self, num_models: int = 5, hidden: int = 20, layers: int = 3,
                 epochs: int = 200, lr: float = 0.01, batch_size: int = 32,
                 seed: int = 0) -> None:
        if num_models < 1 or hidden < 1 or layers < 1 or epochs < 1 or batch_size < 1:
            raise ValueError("num_models, hidden, layers, epochs and batch_size must be >= 1")
        self.num_models, self.hidden, self.layers = num_models, hidden, layers
        self.epochs, self.lr, self.batch_size, self.seed = epochs, lr, batch_size, seed
        self.models: list[nn.Module] = []
        self._center, self._scale = 0.0, 1.0
        self._fits = 0

    def _mlp(self, n_in: int) -> nn.Module:
        parts: list[nn.Module] = []
        width = n_in
        for _ in range(self.layers):
            parts += [nn.Linear(width, self.hidden), nn.ReLU()]
            width = self.hidden
        return nn.Sequential(*parts, nn.Linear(width, 1))

    def fit(self, x: np.ndarray, y: np.ndarray) -> PathPredictor:
        """Train a fresh ensemble on encodings ``x`` (``N×D``) and target errors ``y``."""
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        yt = torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(-1)
        if len(xt) != len(yt) or len(xt) == 0:
            raise ValueError(f"need matching, non-empty x and y, got {len(xt)} and {len(yt)}")
        self._center = float(yt.mean())
        self._scale = float(yt.std()) if len(yt) > 1 and float(yt.std()) > 1e-8 else 1.0
        z = (yt - self._center) / self._scale
        self._fits += 1
        self.models = []
        for m in range(self.num_models):
            seed = self.seed * 7919 + self._fits * 101 + m
            torch.manual_seed(seed)
            g = torch.Generator().manual_seed(seed)
            model = self._mlp(xt.shape[1])
            opt = torch.optim.Adam(model.parameters(), lr=self.lr)
            for _ in range(self.epochs):
                order = torch.randperm(len(xt), generator=g)
                for b in range(0, len(xt), self.batch_size):
                    idx = order[b:b + self.batch_size]
                    loss = (model(xt[idx]).squeeze(1) - z[idx]).abs().mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            self.models.append(model.eval())
        return self

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` of the members' predicted errors for each row of ``x``."""
        if not self.models:
            raise RuntimeError("PathPredictor.predict() before fit()")
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        preds = torch.stack([m(xt).squeeze(1) for m in self.models]).numpy()
        preds = preds * self._scale + self._center
        return preds.mean(0), preds.std(0)
