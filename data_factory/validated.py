"""Validated draws: a procedural network and training recipe that are shown to learn before a run
uses them.

The paper's healthy runs train "with validated hyperparameters". A procedural draw
(:mod:`data_factory.procedural`, :mod:`data_factory.recipes`) is random, and in the first
procedural corpus a third of the draws of some cells never learned at all (a conv net stuck at
chance, a GRU at the unigram rate): their healthy runs were labelled Unknown (below the floor),
and a learning-rate fault on such a network changes nothing the labelers can see. So before a run
starts, its draw is checked with a short probe — ``steps`` optimizer steps at the recipe's peak
learning rate on the training split, from the network's own initial weights — and accepted when
the training loss over the probe's last quarter fell to ``ratio`` of the label prior's entropy
(the loss of predicting class frequencies: for a language model the unigram rate, which a net
reaches without learning any dynamics worth watching). A draw that fails is replaced by the next
one (same families, a derived seed); after ``tries`` failures the draw whose loss fell furthest is
kept, and the run's meta says so. Attempt 0 is exactly the undrawn-again draw, so runs whose first
draw learns are unchanged.

Example:
    >>> import torch
    >>> from data_factory.datasets import load_dataset
    >>> data = load_dataset("tabular", seed=0)
    >>> loss = lambda logits, y: torch.nn.functional.cross_entropy(logits, y)
    >>> d = draw_validated("mlp", "adam", data, seed=3, loss_fn=loss, steps=20)
    >>> d.attempt >= 0 and len(d.probes) == d.attempt + 1
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from data_factory.datasets import TensorData
from data_factory.procedural import build_procedural
from data_factory.recipes import Recipe, build_recipe_optimizer, sample_recipe

__all__ = ["Draw", "attempt_seed", "draw_validated", "prior_entropy", "probe_draw"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Draw:
    """An accepted (network, recipe) draw.

    Attributes:
        model: the network at its initial weights (the probe trained a copy).
        arch_desc: :func:`~data_factory.procedural.build_procedural`'s description.
        recipe: the training recipe.
        attempt: which draw was accepted (0: the first).
        accepted: whether its probe passed (False: every try failed; the best one is kept).
        probes: per attempt, ``{"start": loss, "end": loss, "ratio": end / prior entropy}``.
    """

    model: nn.Module
    arch_desc: dict[str, Any]
    recipe: Recipe
    attempt: int
    accepted: bool
    probes: list[dict[str, float]] = field(default_factory=list)


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed of draw ``attempt`` (attempt 0 keeps ``seed``).

    Example:
        >>> attempt_seed(5, 0), attempt_seed(5, 1) != 5
        (5, True)
    """
    return seed if attempt == 0 else (seed + 1_000_003 * attempt) % 2**32


def prior_entropy(y: torch.Tensor, num_classes: int) -> float:
    """Entropy (nats) of the class frequencies in ``y``: the loss of the best constant predictor.

    Example:
        >>> round(prior_entropy(torch.tensor([0, 1, 2, 3]), 4), 4)
        1.3863
    """
    p = torch.bincount(y.reshape(-1), minlength=num_classes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def probe_draw(model: nn.Module, recipe: Recipe, data: TensorData, seed: int, loss_fn: LossFn,
               steps: int = 100) -> dict[str, float]:
    """Train a copy of ``model`` for ``steps`` steps at the recipe's peak lr (its clip, no
    schedule, no label smoothing) and report the training loss over the first and last quarter.

    ``ratio`` is ``end`` over the label prior's entropy (:func:`prior_entropy`); a non-finite loss
    gives ``ratio = inf``.

    Example:
        >>> import dataclasses, torch
        >>> from data_factory.recipes import sample_recipe
        >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        >>> y = (x[:, 0] > 0).long()
        >>> data = TensorData("toy", x, y, x, y, x, y, num_classes=2)
        >>> recipe = dataclasses.replace(sample_recipe("adam", 0), lr=0.1)
        >>> p = probe_draw(torch.nn.Linear(4, 2), recipe, data, 0,
        ...                torch.nn.functional.cross_entropy, steps=40)
        >>> p["ratio"] < 0.9   # a separable task: well below the prior's entropy
        True
    """
    net = copy.deepcopy(model).train()
    opt = build_recipe_optimizer(recipe, net.parameters())
    gen = torch.Generator().manual_seed(seed)
    n, batch = len(data.y_train), min(recipe.batch_size, len(data.y_train))
    losses: list[float] = []
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen)
        loss = loss_fn(net(data.x_train[idx]), data.y_train[idx])
        if not torch.isfinite(loss):
            return {"start": losses[0] if losses else math.nan, "end": math.inf, "ratio": math.inf}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.clip_norm > 0:
            nn.utils.clip_grad_norm_(net.parameters(), recipe.clip_norm)
        opt.step()
        losses.append(loss.item())
    q = max(1, steps // 4)
    start, end = sum(losses[:q]) / q, sum(losses[-q:]) / q
    prior = prior_entropy(data.y_train, data.num_classes)
    return {"start": round(start, 5), "end": round(end, 5), "ratio": round(end / prior, 5)}


def draw_validated(arch_family: str, opt_family: str, data: TensorData, seed: int,
                   loss_fn: LossFn, tries: int = 6, steps: int = 100, ratio: float = 0.9) -> Draw:
    """The first of up to ``tries`` draws of ``(arch_family, opt_family)`` whose probe
    (:func:`probe_draw`) brings the training loss to ``ratio`` of the prior's entropy or below.

    Example:
        >>> import torch
        >>> from data_factory.datasets import load_dataset
        >>> d = draw_validated("mlp", "sgd", load_dataset("tabular", seed=0), seed=0,
        ...                    loss_fn=torch.nn.functional.cross_entropy, steps=20)
        >>> d.recipe.family, d.arch_desc["family"]
        ('sgd', 'mlp')
    """
    if tries < 1:
        raise ValueError(f"tries must be >= 1, got {tries}")
    shape, best = tuple(data.x_train.shape[1:]), None
    probes: list[dict[str, float]] = []
    for attempt in range(tries):
        s = attempt_seed(seed, attempt)
        with torch.random.fork_rng(devices=[]):
            model, desc = build_procedural(arch_family, shape, data.num_classes, s)
            recipe = sample_recipe(opt_family, s, arch=arch_family)
            probe = probe_draw(model, recipe, data, s, loss_fn, steps)
        probes.append(probe)
        if best is None or probe["ratio"] < best[0]:
            best = (probe["ratio"], attempt, model, desc, recipe)
        if probe["ratio"] <= ratio:
            return Draw(model, desc, recipe, attempt, True, probes)
    assert best is not None
    _, attempt, model, desc, recipe = best
    return Draw(model, desc, recipe, attempt, False, probes)
