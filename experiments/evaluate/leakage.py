"""The leakage guard: asserts, by code, that no test-split run — nor any run sharing a held-out
architecture, data set or optimizer with the test split — reaches fitting, tuning, calibration or
threshold selection (:class:`LeakageGuard`, :class:`LeakageError`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from core_models.baselines import run_id_of

#: The factors the test split holds out (paper Table 2): no test value may reach fitting/tuning.
FACTORS: tuple[str, ...] = ("arch", "dataset", "optimizer")
#: ``split`` values that are for reporting only: the factory's test split and the external
#: suite's pre-registered half (``experiments.external``). No step that learns or chooses may
#: see a run carrying one of them.
REPORT_ONLY_SPLITS: frozenset[str] = frozenset({"test", "external-test"})


_T = TypeVar("_T")


class LeakageError(AssertionError):
    """A test-split run, or a run sharing a held-out architecture, data set or optimizer with the
    test split, reached training, tuning, calibration or threshold selection."""


@dataclass(frozen=True)
class Use:
    """One admitted hand-over of runs to a fitting / tuning / threshold step.

    Attributes:
        purpose: what the runs were used for (``"fit"``, ``"alert threshold"``, ...).
        method: the model or baseline that used them.
        run_ids: ids of the runs.
        splits: the ``split`` recorded in each run's metadata (``None`` when absent).
        factors: ``{factor: values}`` of the runs' architectures, data sets and optimizers.
    """

    purpose: str
    method: str
    run_ids: frozenset[str]
    splits: frozenset[str | None]
    factors: Mapping[str, frozenset[str]]


def _meta(run: Any) -> Mapping[str, Any]:
    return dict(getattr(run, "meta", None) or {})


class LeakageGuard:
    """Asserts, by code, that nothing of the test split reaches fitting, tuning or calibration.

    Every run list handed to a step that learns or chooses anything (baseline ``fit``, validation
    tuning, TEViD training/calibration, threshold selection) goes through :meth:`admit`, which
    records it and raises :class:`LeakageError` at once when it holds a run that

    * is one of the evaluated test runs,
    * has ``split`` ``"test"`` or ``"external-test"`` in its metadata
      (:data:`REPORT_ONLY_SPLITS`; also catches unlabelled test runs), or
    * shares an architecture, data set or optimizer with any test run (the factorial hold-out of
      paper Table 2: a test *factor* must be unseen, not only a test run).

    Runs are anything with a ``run_id`` (or ``meta["run_id"]``) and a ``meta`` mapping: stored
    :class:`~data_factory.store.Run` objects and :class:`~core_models.metrics.RunPrediction`
    records built by :func:`predictions` both qualify.

    Example:
        >>> from types import SimpleNamespace as R
        >>> test = [R(run_id="test-0", meta={"arch": "mixer", "dataset": "text",
        ...                                  "optimizer": "lion", "split": "test"})]
        >>> guard = LeakageGuard(test)
        >>> ok = R(run_id="train-0", meta={"arch": "cnn", "dataset": "digits",
        ...                                "optimizer": "sgd", "split": "train"})
        >>> len(guard.admit("fit", "demo", [ok]))
        1
        >>> guard.admit("fit", "demo", test)
        Traceback (most recent call last):
        ...
        experiments.evaluate.leakage.LeakageError: demo fit: test runs ['test-0']; ...
    """

    def __init__(self, test_runs: Iterable[Any], factors: Sequence[str] = FACTORS) -> None:
        # ``factors=()`` for a test set held out from another corpus than the fitted one (the
        # external suite: its families are not the factory's, only its own halves are disjoint).
        runs = list(test_runs)
        self.factors = tuple(factors)
        self.test_ids: frozenset[str] = frozenset(run_id_of(r) for r in runs)
        self.test_factors: dict[str, frozenset[str]] = {
            f: frozenset(str(v) for r in runs if (v := _meta(r).get(f)) is not None)
            for f in self.factors}
        self.uses: list[Use] = []

    def _problems(self, use: Use) -> list[str]:
        out = []
        leaked = sorted(use.run_ids & self.test_ids)
        if leaked:
            out.append(f"test runs {leaked[:5]}" + (" ..." if len(leaked) > 5 else ""))
        for split in sorted(use.splits & REPORT_ONLY_SPLITS):
            out.append(f"runs whose metadata says split={split}")
        for f in self.factors:
            shared = sorted(use.factors[f] & self.test_factors[f])
            if shared:
                out.append(f"held-out {f} {shared}")
        return out

    def admit(self, purpose: str, method: str, runs: Sequence[_T]) -> Sequence[_T]:
        """Record that ``method`` uses ``runs`` for ``purpose``; return them unchanged.

        Raises:
            LeakageError: when any run belongs to the test split or shares a held-out factor.
        """
        use = Use(purpose, method, frozenset(run_id_of(r) for r in runs),
                  frozenset(_meta(r).get("split") for r in runs),
                  {f: frozenset(str(v) for r in runs if (v := _meta(r).get(f)) is not None)
                   for f in self.factors})
        problems = self._problems(use)
        self.uses.append(use)
        if problems:
            raise LeakageError(f"{method} {purpose}: " + "; ".join(problems) + "; the test split "
                               "must never reach fitting, tuning, calibration or thresholds")
        return runs

    def check(self) -> None:
        """Re-check every recorded use (raises :class:`LeakageError` listing all problems)."""
        problems = [f"{u.method} {u.purpose}: " + "; ".join(p)
                    for u in self.uses if (p := self._problems(u))]
        if problems:
            raise LeakageError("\n".join(problems))

    def seen_ids(self) -> frozenset[str]:
        """Every run id admitted to any step."""
        return frozenset().union(*(u.run_ids for u in self.uses)) if self.uses else frozenset()

    def summary(self) -> str:
        """One Markdown paragraph stating what was checked (for the results file)."""
        purposes = sorted({u.purpose for u in self.uses})
        held = "; ".join(f"{f}: " + ", ".join(sorted(v))
                         for f, v in self.test_factors.items() if v)
        # a guard built without factors checks run ids and splits only; it must not claim more
        factors = (", and none shares an architecture, data set or optimizer with the test "
                   f"split (held out: {held})" if held else "")
        return (f"Leakage guard (`experiments.evaluate.LeakageGuard`): {len(self.seen_ids())} "
                f"distinct runs reached {', '.join(purposes) or 'no step'} across "
                f"{len({u.method for u in self.uses})} methods; none is one of the "
                f"{len(self.test_ids)} test runs or has split=test{factors}.")
