"""The search space as an Optuna objective: :class:`NASObjective`, for Optuna's own samplers.

Each trial draws a candidate with :meth:`SearchSpace.suggest
<tevid_hpo.nas.SearchSpace.suggest>` and trains it with the same evaluator (and hook) as
:class:`~tevid_hpo.nas.search.Bananas`.

Example:
    >>> import optuna
    >>> from tevid_hpo.nas import Candidate, CandidateResult, Cell, SearchSpace
    >>> class Fixed:                       # any evaluator; this one scores every candidate 0.5
    ...     num_classes = 10
    ...     def __call__(self, c, trial=None):
    ...         return CandidateResult(c, 0.5, 1.0)
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = optuna.create_study(direction="maximize")
    >>> for op in ("skip_connect", "none"):    # a cell of "none" edges is invalid: chance, 0.1
    ...     study.enqueue_trial(SearchSpace().params(Candidate(Cell((op,) * 6), 0.1)))
    >>> study.optimize(NASObjective(Fixed()), n_trials=2)
    >>> [t.value for t in study.trials]
    [0.5, 0.1]
"""

from __future__ import annotations

import optuna

from tevid_hpo.nas.space import SearchSpace
from tevid_hpo.nas.trainer import Evaluator

__all__ = ["NASObjective"]


class NASObjective:
    """The same candidate training as an Optuna objective (``direction="maximize"``).

    Each trial draws a candidate with :meth:`SearchSpace.suggest`, trains it with the
    evaluator (whose hook monitors it and writes the diagnosis to the trial), stores the
    :meth:`CandidateResult.to_dict` summary as the user attribute ``"nas"`` and returns the
    validation accuracy, or raises :class:`optuna.TrialPruned` when the hook or the study's
    pruner ended it. A cell without a live input→output path outputs zeros whatever its
    training: it is not trained and scores chance accuracy.

    Example:
        >>> import optuna, warnings
        >>> from tevid_hpo.nas import CandidateTrainer, TEViDHook, TrainSettings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     hook = TEViDHook("tiny")
        >>> objective = NASObjective(CandidateTrainer(settings=TrainSettings(epochs=1),
        ...                                           hook=hook))
        >>> study = optuna.create_study(direction="maximize")
        >>> study.optimize(objective, n_trials=2)                    # doctest: +SKIP
    """

    # SearchSpace is a frozen dataclass, so one shared default instance is safe.
    def __init__(self, evaluator: Evaluator,
                 space: SearchSpace = SearchSpace()) -> None:  # noqa: B008
        self.evaluator = evaluator
        self.space = space

    def __call__(self, trial: optuna.Trial) -> float:
        candidate = self.space.suggest(trial)
        if not candidate.cell.is_valid:
            trial.set_user_attr("nas", {"cell": str(candidate.cell), "lr": candidate.lr,
                                        "invalid": True})
            return 1.0 / self.evaluator.num_classes
        result = self.evaluator(candidate, trial)
        trial.set_user_attr("nas", result.to_dict())
        if result.pruned:
            reason = result.reason or {}
            raise optuna.TrialPruned(f"{reason.get('pruner')}: {reason.get('label', '')} "
                                     f"after {result.epochs:.2f} epochs")
        return result.val_accuracy
