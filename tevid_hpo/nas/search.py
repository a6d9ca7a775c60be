"""The BANANAS search loop: :class:`Bananas` proposes, evaluates and learns from candidates.

Random candidates first; then each proposal fits a fresh
:class:`~tevid_hpo.nas.predictor.PathPredictor` on the evaluations so far, mutates the best of
them into a pool of unseen candidates and picks one by independent Thompson sampling (the
acquisition). A pruned candidate enters the predictor's data as a failure. With an Optuna study
every candidate also becomes a trial (ask-and-tell).

Example:
    >>> from tevid_hpo.nas import Candidate, CandidateResult
    >>> class Fixed:                       # any evaluator; this one scores every candidate 0.5
    ...     num_classes = 10
    ...     def __call__(self, c, trial=None):
    ...         return CandidateResult(c, 0.5, 1.0)
    >>> result = Bananas(Fixed(), num_init=2, seed=0).run(2)
    >>> len(result.history), result.best.val_accuracy
    (2, 0.5)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np
import optuna

from tevid_hpo.nas.predictor import PathPredictor
from tevid_hpo.nas.results import CandidateResult, SearchResult
from tevid_hpo.nas.space import Candidate, SearchSpace
from tevid_hpo.nas.trainer import Evaluator

__all__ = ["Bananas"]


class Bananas:
    """BANANAS over a :class:`SearchSpace`, each candidate trained by an evaluator.

    The first ``num_init`` candidates (after any ``initial`` ones) are drawn at random. After
    that, every proposal fits a fresh :class:`PathPredictor` ensemble on the encodings and
    target errors of all evaluations so far, mutates the ``num_to_mutate`` best of them into a
    pool of ``pool_size`` unseen candidates, and picks the pool member with the lowest error
    under independent Thompson sampling (one draw from ``N(mean, std)`` of the ensemble per
    member).

    Args:
        evaluator: trains a candidate (``evaluator(candidate, trial)``), e.g. a
            :class:`CandidateTrainer` with a :class:`TEViDHook`.
        space: the search space.
        num_init: random candidates before the predictor is used.
        pool_size: mutations scored per proposal.
        num_to_mutate: how many of the best evaluations are mutated.
        mutation_rate: expected number of changed positions per mutation.
        pruned_error: the target error of a pruned candidate: ``"chance"`` (``1 - 1/K``),
            ``"last"`` (its validation error when stopped), or a number.
        predictor: the ensemble (default: 5 MLPs, see :class:`PathPredictor`).
        seed: seeds random draws, mutations and the Thompson samples.

    Attributes:
        history: every evaluation so far, in order (:meth:`run` continues from it).
        budget: one candidate's full budget in epochs (the evaluator's ``settings.epochs``;
            NaN for evaluators without one).

    Example:
        >>> import warnings
        >>> from tevid_hpo.nas import CandidateTrainer, TEViDHook, TrainSettings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     hook = TEViDHook("tiny")                   # use a trained checkpoint in practice
        >>> trainer = CandidateTrainer(settings=TrainSettings(epochs=2), hook=hook)
        >>> result = Bananas(trainer, num_init=2, seed=0).run(4)    # doctest: +SKIP
        >>> result.best.val_accuracy > 0.5                           # doctest: +SKIP
        True
    """

    # SearchSpace is a frozen dataclass, so one shared default instance is safe.
    def __init__(self, evaluator: Evaluator,
                 space: SearchSpace = SearchSpace(), *,  # noqa: B008
                 num_init: int = 4, pool_size: int = 100, num_to_mutate: int = 2,
                 mutation_rate: float = 1.0,
                 pruned_error: float | Literal["chance", "last"] = "chance",
                 predictor: PathPredictor | None = None, seed: int = 0) -> None:
        if num_init < 1 or pool_size < 1 or num_to_mutate < 1:
            raise ValueError("num_init, pool_size and num_to_mutate must be >= 1")
        if isinstance(pruned_error, str) and pruned_error not in ("chance", "last"):
            raise ValueError(f"pruned_error must be 'chance', 'last' or a number, "
                             f"got {pruned_error!r}")
        self.evaluator = evaluator
        self.space = space
        self.num_init = num_init
        self.pool_size = pool_size
        self.num_to_mutate = num_to_mutate
        self.mutation_rate = mutation_rate
        self.pruned_error = pruned_error
        self.predictor = predictor or PathPredictor(seed=seed)
        self.rng = np.random.default_rng(seed)
        self.history: list[CandidateResult] = []
        self._seen: set[str] = set()
        budget = getattr(getattr(evaluator, "settings", None), "epochs", None)
        self.budget = float(budget) if budget is not None else float("nan")

    # ------------------------------------------------------------------ ask / tell
    def target(self, result: CandidateResult) -> float:
        """The error the predictor learns for ``result`` (see ``pruned_error``)."""
        if not result.pruned:
            return result.error
        if self.pruned_error == "last":
            return result.error
        if self.pruned_error == "chance":
            return 1.0 - 1.0 / self.evaluator.num_classes
        return float(self.pruned_error)

    def propose(self) -> Candidate:
        """The next candidate to evaluate (random during the first ``num_init``)."""
        if len(self.history) < self.num_init:
            return self._random_unseen()
        x = np.stack([self.space.encode(r.candidate) for r in self.history])
        y = np.array([self.target(r) for r in self.history], dtype=np.float32)
        self.predictor.fit(x, y)
        pool = self._pool(y)
        if not pool:
            return self._random_unseen()
        mean, std = self.predictor.predict(np.stack([self.space.encode(c) for c in pool]))
        samples = self.rng.normal(mean, std)   # independent Thompson sampling
        return pool[int(np.argmin(samples))]

    def tell(self, result: CandidateResult) -> None:
        """Record an evaluation (done by :meth:`run`; call it yourself in a custom loop)."""
        self.history.append(result)
        self._seen.add(result.candidate.key)

    # ------------------------------------------------------------------ driver
    def run(self, n_candidates: int, *, initial: Iterable[Candidate] = (),
            study: optuna.Study | None = None,
            callback: Callable[[CandidateResult], None] | None = None) -> SearchResult:
        """Evaluate ``n_candidates`` candidates (``initial`` ones first) and return them all.

        Args:
            n_candidates: evaluations in this call (the search continues on a second call).
            initial: candidates to evaluate first, e.g. known baselines.
            study: an Optuna study (``direction="maximize"``) that receives every candidate as
                a trial through ask-and-tell: parameters as :meth:`SearchSpace.suggest` names
                them, the validation accuracy per epoch, the diagnosis, and the final value or
                a PRUNED state. Its pruner can end candidates too.
            callback: called with each :class:`CandidateResult`.
        """
        if study is not None and study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ValueError("the study must maximise (values are validation accuracies)")
        queue = list(initial)
        for _ in range(n_candidates):
            candidate = queue.pop(0) if queue else self.propose()
            result = (self._evaluate_in(study, candidate) if study is not None
                      else self.evaluator(candidate))
            self.tell(result)
            if callback is not None:
                callback(result)
        return SearchResult(list(self.history), self.budget)

    # ------------------------------------------------------------------ internals
    def _evaluate_in(self, study: optuna.Study, candidate: Candidate) -> CandidateResult:
        study.enqueue_trial(self.space.params(candidate), skip_if_exists=False)
        trial = study.ask()
        drawn = self.space.suggest(trial)   # returns the enqueued values
        if drawn != candidate:  # pragma: no cover - enqueue_trial guarantees it
            raise RuntimeError(f"Optuna suggested {drawn}, expected {candidate}")
        try:
            result = self.evaluator(candidate, trial)
        except Exception:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        trial.set_user_attr("nas", result.to_dict())
        if result.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, result.val_accuracy)
        return result

    def _random_unseen(self) -> Candidate:
        for _ in range(10_000):
            c = self.space.random(self.rng)
            if c.key not in self._seen:
                return c
        raise RuntimeError("could not find an unseen candidate: the space is exhausted")

    def _pool(self, targets: np.ndarray) -> list[Candidate]:
        order = np.argsort(targets, kind="stable")[:self.num_to_mutate]
        parents = [self.history[i].candidate for i in order]
        pool: dict[str, Candidate] = {}
        for k in range(self.pool_size * 5):   # duplicates and seen children are skipped
            if len(pool) >= self.pool_size:
                break
            child = self.space.mutate(parents[k % len(parents)], self.rng, self.mutation_rate)
            if child.key not in self._seen:
                pool.setdefault(child.key, child)
        return list(pool.values())
