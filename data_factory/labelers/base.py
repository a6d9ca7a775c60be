"""Shared pieces of the Appendix-A labelers: the run contract, rule results and step/epoch maps.

Every rule in this package reads a *run* (duck-typed, see :class:`RunLike`) and returns a
:class:`RuleResult`. Times are optimisation steps; epoch-based rules also report epochs.

Example:
    >>> import pandas as pd
    >>> steps = pd.DataFrame({"step": range(6), "epoch": [0, 0, 0, 1, 1, 1]})
    >>> tl = Timeline(steps, steps_per_epoch=3)
    >>> tl.epoch_start(1), tl.epoch_end(1), tl.epoch_of(4)
    (3, 5, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

__all__ = ["RuleResult", "RunLike", "Timeline", "eval_step", "jsonable", "last_step",
           "planned_epochs"]


@runtime_checkable
class RunLike(Protocol):
    """What a labeler needs from a stored run (the RunStore provides exactly this).

    Attributes:
        meta: ``dataset``, ``arch``, ``optimizer``, ``intervention`` (``{"kind", "severity",
            "start_step"}``), ``steps_per_epoch``, ``novel`` (held-out anomaly family) and
            ``task_switch_epoch`` (``None`` when the run has a single task).
        steps: one row per logged optimisation step: ``step, epoch, loss`` and optionally
            ``lyapunov`` (per-step log-growth factor ``log alpha_t`` from
            :class:`~data_factory.labelers.lyapunov.LyapunovProbe`; NaN where not computed).
        epochs: one row per epoch: ``epoch, train_loss, train_acc, val_loss, val_acc`` and
            optionally ``primary_acc`` (first-task accuracy) and ``val_ppl``.
        arrays: optional per-sample probe arrays: ``forget_correct_before``,
            ``forget_correct_after``, ``bias_correct``, ``bias_shortcut``, ``bias_class`` and the
            optional scalars ``forget_eval_step`` / ``bias_eval_step`` (step at which the
            "after" / bias probe was evaluated; the run's last step when absent).

    Example:
        >>> from types import SimpleNamespace
        >>> import pandas as pd
        >>> run = SimpleNamespace(meta={}, steps=pd.DataFrame(), epochs=pd.DataFrame(), arrays={})
        >>> isinstance(run, RunLike)
        True
    """

    meta: Mapping[str, Any]
    steps: pd.DataFrame
    epochs: pd.DataFrame
    arrays: Mapping[str, np.ndarray]


@dataclass
class RuleResult:
    """Outcome of one Appendix-A predicate on one run.

    Attributes:
        rule: the label the predicate stands for (a :mod:`data_factory.labels` constant).
        fired: whether the predicate holds on the run (full, hindsight data).
        onset: first step of the anomalous window (``None`` when not fired).
        fire_time: earliest step at which a causal application of the rule fires.
        onset_epoch: epoch of ``onset``.
        fire_epoch: epoch of ``fire_time``.
        applicable: ``False`` when the run lacks the signals the rule needs (e.g. no task
            switch for forgetting); ``fired`` is then ``False``.
        evidence: JSON-serialisable statistics (p-values, thresholds, sub-rule outcomes).

    Example:
        >>> r = RuleResult("Overfitting", fired=False)
        >>> r.to_dict()["fired"]
        False
    """

    rule: str
    fired: bool
    onset: int | None = None
    fire_time: int | None = None
    onset_epoch: int | None = None
    fire_epoch: int | None = None
    applicable: bool = True
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (non-finite floats become ``None``).

        Example:
            >>> RuleResult("Instability", True, onset=3, fire_time=5).to_dict()["fire_time"]
            5
        """
        return jsonable(asdict(self))


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and non-finite floats so ``json.dumps(allow_nan=False)`` works.

    Example:
        >>> jsonable({"p": np.float64(0.01), "z": float("inf"), "ok": np.bool_(True)})
        {'p': 0.01, 'z': None, 'ok': True}
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        # Strict JSON has no NaN/inf; None keeps the key visible without breaking parsers.
        return f if math.isfinite(f) else None
    return obj


class Timeline:
    """Maps between optimisation steps and epochs for one run.

    The ``steps`` frame is authoritative (it records which epoch every logged step belonged
    to); ``steps_per_epoch`` is the fallback for epochs that have no logged steps, with
    0-based epochs (epoch ``e`` spans steps ``[e*spe, (e+1)*spe - 1]``).

    Example:
        >>> Timeline(None, steps_per_epoch=10).epoch_end(2)
        29
    """

    def __init__(self, steps: pd.DataFrame | None, steps_per_epoch: int | None = None) -> None:
        self.spe = int(steps_per_epoch) if steps_per_epoch else None
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._steps = np.empty(0, dtype=np.int64)
        self._epochs = np.empty(0, dtype=np.int64)
        if steps is not None and len(steps) and {"step", "epoch"} <= set(steps.columns):
            s = steps[["step", "epoch"]].dropna().sort_values("step")
            self._steps = s["step"].to_numpy(np.int64)
            self._epochs = s["epoch"].to_numpy(np.int64)
            g = s.groupby("epoch")["step"]
            self._first = {int(k): int(v) for k, v in g.min().items()}
            self._last = {int(k): int(v) for k, v in g.max().items()}

    @classmethod
    def of(cls, run: RunLike) -> Timeline:
        """Timeline of a run (``run.steps`` plus ``meta["steps_per_epoch"]``).

        Example:
            >>> from types import SimpleNamespace
            >>> Timeline.of(SimpleNamespace(steps=None, meta={"steps_per_epoch": 5})).epoch_start(1)
            5
        """
        return cls(getattr(run, "steps", None), dict(run.meta).get("steps_per_epoch"))

    def epoch_start(self, epoch: int | None) -> int | None:
        """First step of ``epoch``."""
        if epoch is None:
            return None
        if int(epoch) in self._first:
            return self._first[int(epoch)]
        return int(epoch) * self.spe if self.spe else None

    def epoch_end(self, epoch: int | None) -> int | None:
        """Last step of ``epoch``: epoch-level metrics are known only from here on."""
        if epoch is None:
            return None
        if int(epoch) in self._last:
            return self._last[int(epoch)]
        return (int(epoch) + 1) * self.spe - 1 if self.spe else None

    def epoch_of(self, step: int | None) -> int | None:
        """Epoch a step belongs to (the last logged step at or before it decides)."""
        if step is None:
            return None
        if len(self._steps):
            i = int(np.searchsorted(self._steps, int(step), side="right")) - 1
            if i >= 0:
                return int(self._epochs[i])
        return int(step) // self.spe if self.spe else None

    @property
    def last_step(self) -> int | None:
        """Last logged step, or ``None`` for a run with no step log."""
        return int(self._steps[-1]) if len(self._steps) else None


def last_step(run: RunLike) -> int | None:
    """Last step of a run: the step log, else the end of the last logged epoch."""
    tl = Timeline.of(run)
    if tl.last_step is not None:
        return tl.last_step
    ep = getattr(run, "epochs", None)
    if ep is not None and len(ep) and "epoch" in ep.columns:
        return tl.epoch_end(int(ep["epoch"].max()))
    return None


def eval_step(run: RunLike, key: str) -> int | None:
    """Step at which a probe snapshot was taken: ``run.arrays[key]`` or the run's last step.

    Example:
        >>> from types import SimpleNamespace
        >>> import pandas as pd
        >>> run = SimpleNamespace(meta={}, steps=pd.DataFrame({"step": [0, 1], "epoch": [0, 0]}),
        ...                       epochs=pd.DataFrame(), arrays={"bias_eval_step": 7})
        >>> eval_step(run, "bias_eval_step"), eval_step(run, "forget_eval_step")
        (7, 1)
    """
    arrays = getattr(run, "arrays", None) or {}
    if key in arrays and arrays[key] is not None:
        return int(np.asarray(arrays[key]).reshape(-1)[0])
    return last_step(run)


def planned_epochs(meta: Mapping[str, Any]) -> int | None:
    """Epochs the run's schedule planned, known before training (so usable causally).

    Reads ``meta["plan"]["epochs"]``, else ``ceil(meta["total_steps"] / steps_per_epoch)``.

    Example:
        >>> planned_epochs({"plan": {"epochs": 20}}), planned_epochs({"total_steps": 95,
        ...                                                          "steps_per_epoch": 10})
        (20, 10)
    """
    plan = meta.get("plan")
    if isinstance(plan, Mapping) and plan.get("epochs") is not None:
        return int(plan["epochs"])
    total, spe = meta.get("total_steps"), meta.get("steps_per_epoch")
    if total and spe:
        return -(-int(total) // int(spe))  # ceiling division
    return None
