"""BANANAS-style neural architecture search whose candidates TEViD can end early.

BANANAS (White et al., AAAI 2021) searches a cell-based space with a neural predictor: an
ensemble of small MLPs trained on the *path encoding* of the architectures evaluated so far, an
acquisition function over their predictions (independent Thompson sampling), and new candidates
made by mutating the best architectures found. This module implements it in PyTorch (the
reference code, ``naszilla/naszilla``, is TensorFlow 1.14 and not installable here) on a
NAS-Bench-201-like space small enough to train on a CPU, and adds what the paper's Appendix M
suggests: each candidate trains under a :class:`~tevid_hpo.monitor.TrialMonitor`, and a
:class:`TEViDHook` ends it on a confirmed Instability or Overfitting alert (or a
:class:`~tevid_hpo.cost.CostModel` stop) before it exhausts its budget.

**Space.** A :class:`Cell` is a DAG on 4 nodes (node 0 the cell input, node 3 its output) with
one operation on each of its 6 edges ``i → j`` (``i < j``), from ``none``, ``skip_connect``,
``nor_conv_1x1``, ``nor_conv_3x3``, ``avg_pool_3x3`` (ReLU-Conv-BN convolutions, as in
NAS-Bench-201): ``5^6 = 15,625`` cells. A node sums its incoming edges. :class:`CellNet` stacks the
cell NAS-Bench-201's way (stem, three stages of ``cells_per_stage`` cells at ``C``, ``2C``, ``4C``
channels joined by residual reduction blocks, global pooling, linear classifier) at ``C=8`` and
one cell per stage, which trains five epochs on scikit-learn's digits in a second or two. A
:class:`Candidate` is a cell plus the learning rate it trains with, drawn from
:attr:`SearchSpace.learning_rates` (a single value by default: plain NAS). Offering a learning
rate that is far too high is how a search space comes to contain candidates that diverge — the
ones a TEViD hook should stop.

**Path encoding.** One bit per input→output path, indexed by the sequence of operations along it
(paths of 1, 2 and 3 edges: ``5 + 25 + 125 = 155`` bits for five operations, with the reference
code's index layout). Paths through a ``none`` edge carry nothing and set no bit, so two cells
computing the same function encode alike (the reference code also sets bits for dead paths).
``path_cutoff`` keeps the first ``k`` bits only — the truncated encoding of the paper; the
layout puts the short paths first. With several learning rates, a one-hot of the rate is
appended.

**Failures.** A pruned candidate enters the predictor's data as a failure: its target error is
``pruned_error`` — by default the chance-level error ``1 - 1/num_classes``, so the predictor
learns that its neighbourhood is bad — or, with ``pruned_error="last"``, its validation error
when it was stopped; a number sets it directly. Its record keeps the budget it used
(:attr:`CandidateResult.epochs`, fractional: a candidate stopped mid-epoch used part of it), so
:class:`SearchResult` can say what the hook saved. Pruned candidates are never returned as the
best architecture (their training did not finish) but they are still mutated from if they rank
among the best (with the default failure value they do not).

**Two drivers, one hook.** :meth:`Bananas.run` searches on its own; with ``study=`` every
candidate also becomes an Optuna trial (ask-and-tell), so the hook writes its diagnosis to the
trial, a :class:`~tevid_hpo.pruners.TEViDPruner` (or any pruner) can prune it, and storages and
dashboards see the search. :class:`NASObjective` is the same training as an Optuna objective, for
searching this space with Optuna's own samplers.

**Layout.** ``cell.py`` (operations, edges, :class:`Cell`), ``encoding.py`` (the path
encoding), ``space.py`` (:class:`Candidate`, :class:`SearchSpace`), ``network.py``
(:class:`CellNet`), ``results.py`` (:class:`CandidateResult`, :class:`SearchResult`), ``hook.py``
(:class:`TEViDHook`), ``trainer.py`` (:class:`TrainSettings`, :class:`CandidateTrainer`),
``predictor.py`` (:class:`PathPredictor`), ``search.py`` (:class:`Bananas`: acquisition and search
loop), ``objective.py`` (:class:`NASObjective`). Import every name from ``tevid_hpo.nas``.

Example:
    >>> import numpy as np
    >>> cell = Cell.from_string("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|")
    >>> [list(p) for p in cell.paths()]
    [['nor_conv_3x3', 'skip_connect', 'avg_pool_3x3']]
    >>> enc = SearchSpace().encode(Candidate(cell, 0.1))
    >>> enc.shape, int(enc.sum())
    ((155,), 1)
    >>> child = SearchSpace().mutate(Candidate(cell, 0.1), np.random.default_rng(0))
    >>> child != Candidate(cell, 0.1) and child.cell.is_valid
    True
"""

from __future__ import annotations

from tevid_hpo.nas.cell import EDGES, OPS, PATHS, Cell
from tevid_hpo.nas.hook import TEViDHook
from tevid_hpo.nas.network import CellNet
from tevid_hpo.nas.objective import NASObjective
from tevid_hpo.nas.predictor import PathPredictor
from tevid_hpo.nas.results import CandidateResult, SearchResult
from tevid_hpo.nas.search import Bananas
from tevid_hpo.nas.space import Candidate, SearchSpace
from tevid_hpo.nas.trainer import (
    CandidateTrainer,
    Evaluator,  # noqa: F401  (importable from here, as before the split; not star-exported)
    TrainSettings,
)

__all__ = [
    "EDGES",
    "OPS",
    "PATHS",
    "Bananas",
    "Candidate",
    "CandidateResult",
    "CandidateTrainer",
    "Cell",
    "CellNet",
    "NASObjective",
    "PathPredictor",
    "SearchResult",
    "SearchSpace",
    "TEViDHook",
    "TrainSettings",
]
