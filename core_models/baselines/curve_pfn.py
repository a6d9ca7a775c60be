"""A learned learning-curve extrapolator in the style of LC-PFN (Adriaensen et al., NeurIPS 2023).

LC-PFN is a prior-data fitted network: a transformer trained only on learning curves *sampled
from a parametric prior* to output, given the first ``m`` points of a curve, the predictive
distribution of its value at a later epoch — approximate Bayesian inference under that prior in
one forward pass. Its early-stopping rule stops a trial when the predicted probability that the
curve ends above the best value seen so far falls below a threshold.

The ``lcpfn`` package cannot be used here (it pins ``torch<=1.11``, its attention layer does not
import under torch 2, and its weights are downloaded at run time), so this module trains its own,
smaller network on a documented prior:

**Prior** (:func:`sample_curves`). Curves of an accuracy-like metric on ``T`` epochs at
``x = epoch / T`` (``x`` in ``(0, 1]``), ``T`` uniform in ``[t_min, t_max]``. Each curve is one of
four parametric families of the LC-PFN paper's basis (``pow3``: ``c - a·x^-α``; ``ilog2``:
``c - a / log(x/x₁ + 1)``; ``janoschek``: ``α - (α - β)·exp(-κ·x^δ)``; ``exp3``:
``c - a·exp(-b·x)``), with ``c`` (the asymptote) uniform in ``[0.1, 1]``, the start somewhere
below it, then clipped to ``[0, 1]`` and observed with Gaussian noise of a per-curve scale
(log-uniform in ``[1e-3, 0.05]``). With probability ``p_diverge`` a curve *collapses* at a random
epoch to a chance-like level (a diverged run), and with probability ``p_overfit`` it decays
linearly after a random peak (over-fitting) — the two shapes HPO searches meet that the
saturating families do not cover. The target is the noisy value at the last epoch ``x = 1``.

**Model** (:class:`CurvePFN`). Each observed point ``(x, y)`` and one query token ``(x=1)`` are
embedded and read by a transformer encoder (no positional encoding: a point's position *is* its
``x``; the query token also carries the last observed point); the query's output is a
categorical distribution over ``n_bins`` equal bins of the *change* from the last observed value
to the final one, on ``[-1, 1]`` (the PFN's "Riemann" head, :func:`bin_edges`), trained with
cross-entropy. :meth:`CurvePFN.predict` returns the
bins' probabilities; :func:`quantile` and :func:`prob_above` read medians and exceedance
probabilities off them (uniform density inside a bin).

**Cache** (:func:`load_or_train`). ``~/.cache/tevid-hpo/curve_pfn/<key>.safetensors`` (weights)
+ ``<key>.json`` (architecture, prior, training settings, losses) — no pickle; the key hashes the
settings, so other settings train another file. Regenerate with
``python -m core_models.baselines.curve_pfn`` (minutes on one CPU thread).

Example:
    >>> cfg = PFNConfig(d_model=16, n_layers=1, n_heads=2, n_bins=20, steps=30, batch=16,
    ...                 t_max=10)
    >>> model = train(cfg, seed=0)
    >>> prefix = [0.1, 0.2, 0.3]
    >>> p = model.predict(prefix, n_epochs=10)
    >>> p.shape, round(float(p.sum()), 4)
    ((20,), 1.0)
    >>> 0.0 <= prob_above(p, 0.5, last=observed_last(prefix)) <= 1.0
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["CurvePFN", "PFNConfig", "bin_edges", "cache_dir", "evaluate", "load_or_train",
           "observed_last",
           "prob_above", "quantile",
           "sample_curves", "train"]

FAMILIES = ("pow3", "ilog2", "janoschek", "exp3")


@dataclass(frozen=True)
class PFNConfig:
    """Architecture, prior and training settings (all of them key the cached file).

    Example:
        >>> PFNConfig().n_bins, len(PFNConfig().key())
        (100, 12)
    """

    d_model: int = 48
    n_layers: int = 2
    n_heads: int = 4
    n_bins: int = 100
    t_min: int = 3
    t_max: int = 30
    p_diverge: float = 0.1
    p_overfit: float = 0.15
    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3
    version: int = 3   # of inputs and head (3: the query carries the last point; the head
    #                    bins the change from it, :func:`bin_edges`)

    def key(self) -> str:
        """A short hash of every setting."""
        return hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()[:12]


def _family(name: str, x: np.ndarray, rng: np.random.Generator, c: float, start: float
            ) -> np.ndarray:
    """One noiseless curve of ``name`` through roughly ``start`` at x=1/T rising to ``c``."""
    gap = c - start
    if name == "pow3":
        alpha = rng.uniform(0.2, 2.5)
        return c - gap * (x / x[0]) ** (-alpha)
    if name == "ilog2":
        return c - gap * math.log(2.0) / np.log(x / x[0] + 1.0)
    if name == "janoschek":
        kappa, delta = rng.uniform(0.5, 12.0), rng.uniform(0.5, 2.0)
        return c - gap * np.exp(-kappa * (x ** delta - x[0] ** delta))
    b = rng.uniform(1.0, 15.0)   # exp3
    return c - gap * np.exp(-b * (x - x[0]))


def sample_curves(n: int, rng: np.random.Generator, cfg: PFNConfig = PFNConfig()
                  ) -> list[np.ndarray]:
    """``n`` noisy curves from the prior, each of its own length ``T`` in ``[t_min, t_max]``.

    Example:
        >>> cs = sample_curves(5, np.random.default_rng(0))
        >>> len(cs), all(3 <= len(c) <= 30 and 0 <= c.min() and c.max() <= 1 for c in cs)
        (5, True)
    """
    out = []
    for _ in range(n):
        t = int(rng.integers(cfg.t_min, cfg.t_max + 1))
        x = np.arange(1, t + 1) / t
        c = rng.uniform(0.1, 1.0)
        start = rng.uniform(0.0, c)
        y = _family(str(rng.choice(FAMILIES)), x, rng, c, start)
        u = rng.random()
        if u < cfg.p_diverge:   # collapse to a chance-like level from a random epoch on
            at = int(rng.integers(0, t))
            y[at:] = rng.uniform(0.0, min(0.3, c))
        elif u < cfg.p_diverge + cfg.p_overfit and t > 2:   # decline after a peak
            at = int(rng.integers(1, t))
            y[at:] = y[at] - rng.uniform(0.0, 0.5) * (x[at:] - x[at])
        sigma = math.exp(rng.uniform(math.log(1e-3), math.log(0.05)))
        out.append(np.clip(y + rng.normal(0.0, sigma, size=t), 0.0, 1.0))
    return out


class CurvePFN(nn.Module):
    """The network: points ``(x, y)`` and a query ``x`` -> bin logits of the value at the query.

    Example:
        >>> m = CurvePFN(PFNConfig(d_model=16, n_layers=1, n_heads=2, n_bins=10))
        >>> m(torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool)).shape
        torch.Size([2, 10])
    """

    def __init__(self, cfg: PFNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.point = nn.Sequential(nn.Linear(2, cfg.d_model), nn.GELU(),
                                   nn.Linear(cfg.d_model, cfg.d_model))
        self.query = nn.Sequential(nn.Linear(2, cfg.d_model), nn.GELU(),
                                   nn.Linear(cfg.d_model, cfg.d_model))
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, 2 * cfg.d_model,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, cfg.n_bins))

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_bins)`` of the value at ``x = 1`` given points where ``mask``."""
        tokens = self.point(torch.stack([x, y], dim=-1))
        # The query carries the last observed point: "final = last + change" is then easy to
        # learn, where from the points alone a small network first learns the prior's marginal.
        last = mask.sum(dim=1).clamp(min=1) - 1
        rows = torch.arange(x.shape[0])
        q = self.query(torch.stack([x[rows, last], y[rows, last]], dim=-1))[:, None]
        seq = torch.cat([q, tokens], dim=1)
        pad = torch.cat([torch.zeros(x.shape[0], 1, dtype=torch.bool), ~mask], dim=1)
        return self.head(self.encoder(seq, src_key_padding_mask=pad)[:, 0])

    @torch.no_grad()
    def predict(self, prefix: Sequence[float], n_epochs: int) -> np.ndarray:
        """Probabilities of the bins of the value at epoch ``n_epochs`` given the first
        ``len(prefix)`` epochs' values (non-finite values count as 0: a diverged run).

        The bins are those of :func:`bin_edges` around the last observed value."""
        m = len(prefix)
        if m < 1 or n_epochs < m:
            raise ValueError(f"need 1 <= len(prefix) <= n_epochs, got {m} and {n_epochs}")
        y = torch.tensor(np.nan_to_num(np.asarray(prefix, dtype=np.float32), nan=0.0,
                                       posinf=1.0, neginf=0.0).clip(0.0, 1.0))[None]
        x = (torch.arange(1, m + 1, dtype=torch.float32) / n_epochs)[None]
        self.eval()
        logits = self(x, y, torch.ones(1, m, dtype=torch.bool))
        return torch.softmax(logits[0].double(), dim=0).numpy()


def bin_edges(n_bins: int, last: float = 0.0) -> np.ndarray:
    """Edges of the head's bins: the final value is predicted as ``last + change`` with the
    change binned evenly on ``[-1, 1]`` (a curve in ``[0, 1]`` cannot move further).

    Predicting the change rather than the value puts the prior's mass near the last point from
    the first training step, which a small network trained for minutes needs.

    Example:
        >>> bin_edges(4, last=0.5).tolist()
        [-0.5, 0.0, 0.5, 1.0, 1.5]
    """
    return float(last) + np.linspace(-1.0, 1.0, n_bins + 1)


def quantile(probs: np.ndarray, q: float, last: float = 0.0) -> float:
    """The ``q``-quantile of the predicted final value, clipped to ``[0, 1]`` (uniform density
    inside a bin; ``last`` as given to :func:`bin_edges`).

    Example:
        >>> quantile(np.array([0.0, 0.0, 1.0, 0.0]), 0.5, last=0.3)
        0.55
    """
    cdf = np.concatenate([[0.0], np.cumsum(probs)])
    return float(np.clip(np.interp(q, cdf, bin_edges(len(probs), last)), 0.0, 1.0))


def prob_above(probs: np.ndarray, value: float, last: float = 0.0) -> float:
    """``P(final > value)`` under the predicted distribution (uniform inside a bin).

    Example:
        >>> round(prob_above(np.array([0.0, 0.5, 0.5, 0.0]), 0.75, last=0.5), 3)
        0.25
    """
    if value >= 1.0:   # the final value is clipped to [0, 1], as the curves are
        return 0.0
    if value < 0.0:
        return 1.0
    cdf = np.concatenate([[0.0], np.cumsum(probs)])
    return float(max(0.0, 1.0 - np.interp(value, bin_edges(len(probs), last), cdf)))


def observed_last(prefix: Sequence[float]) -> float:
    """The last value of ``prefix`` as :meth:`CurvePFN.predict` reads it (non-finite: 0, or 1
    for +inf; clipped to ``[0, 1]``) — the ``last`` of :func:`quantile` / :func:`prob_above`.

    Example:
        >>> observed_last([0.4, float("nan")]), observed_last([1.3])
        (0.0, 1.0)
    """
    v = float(prefix[-1])
    v = 1.0 if v == math.inf else 0.0 if not math.isfinite(v) else v
    return min(max(v, 0.0), 1.0)


def _batch(curves: list[np.ndarray], rng: np.random.Generator, n_bins: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(c) for c in curves) - 1
    x = torch.zeros(len(curves), width)
    y = torch.zeros(len(curves), width)
    mask = torch.zeros(len(curves), width, dtype=torch.bool)
    target = torch.zeros(len(curves), dtype=torch.long)
    for i, c in enumerate(curves):
        t = len(c)
        m = int(rng.integers(1, t))   # observed prefix: 1 .. T-1 epochs
        x[i, :m] = torch.arange(1, m + 1, dtype=torch.float32) / t
        y[i, :m] = torch.from_numpy(c[:m].astype(np.float32))
        mask[i, :m] = True
        change = (float(c[-1]) - float(c[m - 1]) + 1.0) / 2.0   # in [0, 1]
        target[i] = min(max(int(change * n_bins), 0), n_bins - 1)
    return x, y, mask, target


def train(cfg: PFNConfig = PFNConfig(), seed: int = 0, log_every: int = 0) -> CurvePFN:
    """Train a :class:`CurvePFN` on fresh prior samples every step (Adam, cosine decay).

    ``model.losses`` keeps the mean training loss per 100 steps.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CurvePFN(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    # One-cycle needs a few warm-up steps; the tiny doctest/quick models keep a constant rate.
    sched: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps,
                                            pct_start=0.05)
        if cfg.steps >= 40 else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    losses, run = [], []
    model.train()
    for step in range(cfg.steps):
        x, y, mask, target = _batch(sample_curves(cfg.batch, rng, cfg), rng, cfg.n_bins)
        loss = nn.functional.cross_entropy(model(x, y, mask), target)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        run.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            losses.append(round(float(np.mean(run)), 4))
            run = []
            if log_every and (step + 1) % log_every == 0:
                print(f"[curve_pfn] step {step + 1}/{cfg.steps} loss {losses[-1]}", flush=True)
    model.eval()
    model.losses = losses   # type: ignore[attr-defined]
    return model


def cache_dir() -> Path:
    """``$TEVID_CACHE/curve_pfn`` (default ``~/.cache/tevid-hpo/curve_pfn``)."""
    root = os.environ.get("TEVID_CACHE") or str(Path.home() / ".cache" / "tevid-hpo")
    return Path(root).expanduser() / "curve_pfn"


def load_or_train(cfg: PFNConfig = PFNConfig(), seed: int = 0, directory: Path | None = None,
                  log_every: int = 0) -> CurvePFN:
    """The cached network for ``(cfg, seed)``, trained and saved (safetensors + JSON) if absent.

    Example:
        >>> import tempfile
        >>> small = PFNConfig(d_model=8, n_layers=1, n_heads=2, n_bins=10, steps=5, batch=4,
        ...                   t_max=6)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     a = load_or_train(small, directory=Path(d))
        ...     b = load_or_train(small, directory=Path(d))     # read back, not retrained
        ...     bool(torch.equal(a.head[1].weight, b.head[1].weight)), sorted(
        ...         p.suffix for p in Path(d).iterdir())
        (True, ['.json', '.safetensors'])
    """
    d = Path(directory) if directory is not None else cache_dir()
    stem = d / f"{cfg.key()}-seed{seed}"
    weights, meta = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if weights.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("config") == asdict(cfg) and info.get("seed") == seed:
            model = CurvePFN(cfg)
            model.load_state_dict(load_file(str(weights)))
            model.eval()
            model.losses = info.get("losses", [])   # type: ignore[attr-defined]
            return model
    t0 = time.perf_counter()
    model = train(cfg, seed=seed, log_every=log_every)
    d.mkdir(parents=True, exist_ok=True)
    # Write both files under temporary names, then move: a reader never sees half a model.
    fd, tmp_w = tempfile.mkstemp(prefix=".pfn.", suffix=".safetensors", dir=d)
    os.close(fd)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_w)
    fd, tmp_m = tempfile.mkstemp(prefix=".pfn.", suffix=".json", dir=d)
    with os.fdopen(fd, "w") as f:
        json.dump({"config": asdict(cfg), "seed": seed, "losses": model.losses,   # type: ignore[attr-defined]
                   "train_seconds": round(time.perf_counter() - t0, 1),
                   "command": "python -m core_models.baselines.curve_pfn"}, f, indent=1)
    os.replace(tmp_w, weights)
    os.replace(tmp_m, meta)
    return model


def evaluate(model: CurvePFN, n: int = 500, seed: int = 123, share: int = 3,
             cfg: PFNConfig = PFNConfig()) -> tuple[float, float]:
    """Mean absolute error on the final value of ``n`` fresh prior curves seen up to
    ``1/share`` of their length: ``(median of the prediction, last observed value)``.

    Example:
        >>> net = train(PFNConfig(d_model=8, n_layers=1, n_heads=2, n_bins=10, steps=2, batch=4,
        ...                       t_max=6))
        >>> pfn, last = evaluate(net, n=5, cfg=PFNConfig(t_max=6))
        >>> pfn >= 0 and last >= 0
        True
    """
    curves = sample_curves(n, np.random.default_rng(seed), cfg)
    err_pfn, err_last = [], []
    for c in curves:
        k = max(1, len(c) // share)
        probs = model.predict(c[:k], len(c))
        err_pfn.append(abs(quantile(probs, 0.5, observed_last(c[:k])) - c[-1]))
        err_last.append(abs(c[k - 1] - c[-1]))
    return float(np.mean(err_pfn)), float(np.mean(err_last))


if __name__ == "__main__":   # regenerate (or load) the cached default network and evaluate it
    torch.set_num_threads(1)
    net = load_or_train(log_every=500)
    print(f"[curve_pfn] {cache_dir() / PFNConfig().key()}-seed0.safetensors, "
          f"final loss {net.losses[-1] if net.losses else '?'}")   # type: ignore[attr-defined]
    for part in (3, 2):
        e_pfn, e_last = evaluate(net, share=part)
        print(f"[curve_pfn] 500 prior curves (seed 123) seen to 1/{part}: final-value MAE "
              f"{e_pfn:.4f} (median of the prediction) vs {e_last:.4f} (last value)")
