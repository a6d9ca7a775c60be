"""SMAC 2.x: end a target function's training at a confirmed TEViD diagnosis.

SMAC has no intermediate reporting and no "pruned" status: its multi-fidelity intensifiers
(Hyperband, SuccessiveHalving) run a configuration at a *budget* (here: epochs) and only see the
cost the target function returns. So the early stop happens inside the target function, and SMAC
is told about it through the returned cost and ``additional_info``:

* :class:`TEViDTarget` wraps your target function. It hands it a :class:`TEViDTrial` as the
  keyword argument ``tevid``; ``tevid.monitor(model, optimizer=opt)`` is a
  :class:`~tevid_hpo.monitor.TrialMonitor` (the optimizer is read for its learning rate, which
  a telemetry diagnostician uses), ``tevid.report(value, epoch)`` records the cost so
  far, and ``tevid.should_stop()`` applies the stop rules of :mod:`tevid_hpo.decision` (a
  confirmed alert in ``prune_on``; with ``cost=CostModel(...)`` also the cost rule). End training
  when it says so: ``break``/``return``, or ``raise TrialStopped()`` from any depth.
  What a stop risks is the trial's standing in the search
  (:func:`~tevid_hpo.cost.standing_so_far`): the share of the other trials at the same budget
  whose best cost up to its epoch its own best so far beats (see :class:`TEViDTarget`).
* The wrapper then returns ``(cost, additional_info)``: the **cost at stopping, penalised** (see
  :meth:`TEViDTarget.stopped_cost`), and the diagnosis under ``additional_info["tevid"]`` —
  ``stopped``, the stop reason, the alerts, the latest diagnosis, epochs done — for every
  trial, stopped or not. SMAC stores it in its run history (``runhistory.json``).
* :class:`TEViDCallback` (a ``smac.Callback``) collects those records per trial as SMAC is told
  the results, in the main process, also when trials run on dask workers.

**The cost SMAC sees.** A trial stopped at epoch ``e`` of budget ``b`` has no cost at ``b``. Its
last reported cost ``v`` (say a validation error) is optimistic: the run was failing. With ``p``
the evidence that it is one of ``prune_on`` — :meth:`CostModel.anomaly_probability
<tevid_hpo.cost.CostModel.anomaly_probability>` of the diagnosis that stopped it (the belief
``p_c − u/K`` behind an alert, ``1`` for the non-finite-loss rule, the cost rule's own ``p``) —
the returned cost is the expected cost at the full budget if a failing run ends at
``worst_cost`` (the cost of a useless model, e.g. 1.0 for an error rate, chance-level loss for a
loss) and a healthy one at ``v``::

    cost = max(v, v + p · (worst_cost − v))      # worst_cost when nothing finite was reported

So a confidently diagnosed trial is ranked near the worst (Hyperband will not promote it, the
surrogate learns the region is bad), a weakly diagnosed one near what it showed, and the number
is always finite (a NaN cost would corrupt SMAC's cost normalisation).

Example:
    >>> import torch
    >>> from ConfigSpace import ConfigurationSpace, Float
    >>> from smac import MultiFidelityFacade, Scenario
    >>> from data_factory.architectures import small_cnn
    >>> def train(config, seed: int = 0, budget: float = 3, *, tevid):
    ...     torch.manual_seed(seed)
    ...     model = small_cnn(in_channels=1)
    ...     opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    ...     error = 1.0
    ...     with tevid.monitor(model, optimizer=opt) as mon:   # opt: for its learning rate
    ...         for epoch in range(round(budget)):
    ...             for _ in range(30):
    ...                 x, y = torch.randn(32, 1, 16, 16), torch.randint(0, 10, (32,))
    ...                 loss = torch.nn.functional.cross_entropy(model(x), y)
    ...                 opt.zero_grad(); loss.backward(); mon.step(loss=loss.item()); opt.step()
    ...                 if tevid.should_stop():
    ...                     raise TrialStopped()
    ...             mon.epoch_end(epoch)
    ...             error = 1.0 - (model(x).argmax(1) == y).float().mean().item()
    ...             tevid.report(error, epoch)
    ...     return error
    >>> target = TEViDTarget(train, worst_cost=1.0, diagnostician="/path/to/checkpoint")
    >>> cs = ConfigurationSpace({"lr": Float("lr", (1e-4, 3.0), log=True)})
    >>> scenario = Scenario(cs, n_trials=20, min_budget=1, max_budget=9)
    >>> callback = TEViDCallback()
    >>> smac = MultiFidelityFacade(scenario, target, callbacks=[callback])   # doctest: +SKIP
    >>> incumbent = smac.optimize()                                          # doctest: +SKIP
    >>> [(r["config"]["lr"], r["stop"]["label"]) for r in callback.stopped]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from smac import Callback
from smac.runhistory import TrialInfo, TrialValue

from core_models.checkpoint import checkpoint_paths
from tevid_hpo.cost import CostModel, standing_so_far
from tevid_hpo.decision import DEFAULT_PRUNE_ON, DEFAULT_SPARE_LEADERS, TEVID, StopRules, describe
from tevid_hpo.diagnostician import DEFAULT_CHECKPOINT, Diagnostician
from tevid_hpo.monitor import NONFINITE_LOSS, TrialMonitor

__all__ = ["INFO_KEY", "TEViDCallback", "TEViDTarget", "TEViDTrial", "TrialStopped"]

logger = logging.getLogger(__name__)

#: Key of the diagnosis in the ``additional_info`` the wrapper returns to SMAC.
INFO_KEY = "tevid"
#: Version of the ``additional_info["tevid"]`` layout.
FORMAT_VERSION = 1
#: Name of the keyword argument through which the target function receives its TEViDTrial.
TRIAL_ARGUMENT = "tevid"


class TrialStopped(Exception):
    """Raise inside the target function to end training after ``tevid.should_stop()``.

    :class:`TEViDTarget` catches it and returns the penalised cost at stopping, as for a
    ``break``; it is the convenient way out of nested loops (like ``optuna.TrialPruned``).
    """


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class TEViDTrial:
    """What a wrapped target function gets as ``tevid``: monitor, reports, stop decision.

    Created by :class:`TEViDTarget` for each call; do not build one yourself.

    Attributes:
        budget: the budget SMAC asked for (``None`` without multi-fidelity).
        seed, instance: as SMAC passed them (``None`` when it did not).
    """

    def __init__(self, target: TEViDTarget, budget: float | None, seed: int | None,
                 instance: str | None) -> None:
        self._target = target
        self.budget = budget
        self.seed = seed
        self.instance = instance
        self._monitor: TrialMonitor | None = None
        self._value: float | None = None
        self._epochs_done = 0
        self._stop: dict[str, Any] | None = None
        self._warned = False
        self._id = target._new_trial_id()

    # ------------------------------------------------------------------ target-function calls
    def monitor(self, model: Any, optimizer: torch.optim.Optimizer | None = None,
                **kwargs: Any) -> TrialMonitor:
        """The trial's :class:`~tevid_hpo.monitor.TrialMonitor` on ``model`` (use it as
        ``with tevid.monitor(model, optimizer=opt) as mon:``); ``kwargs`` override the
        target's ``monitor_kwargs``. One monitor per trial.

        ``optimizer`` is read only for its learning rate at capture steps: a telemetry
        diagnostician reads it (without it the learning rate is unknown to it).

        Example:
            >>> import warnings
            >>> def train(config, *, tevid):
            ...     model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)])
            ...     opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
            ...     return float(tevid.monitor(model, optimizer=opt).optimizer is opt)
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")            # "tiny": an untrained model
            ...     TEViDTarget(train, worst_cost=1.0, diagnostician="tiny")({"lr": 0.1})[0]
            1.0
        """
        if self._monitor is not None:
            raise RuntimeError("tevid.monitor() was already called in this trial")
        options = {**self._target.monitor_kwargs, **kwargs}
        self._monitor = TrialMonitor(model, diagnostician=self._target.diagnostician(),
                                     optimizer=optimizer, **options)
        return self._monitor

    def report(self, value: float, epoch: int | None = None) -> None:
        """Record the cost so far (what the function would return if it ended now).

        Args:
            value: the cost at this point (lower is better, as SMAC minimises).
            epoch: the epoch just finished (0-based); default one more than the last report.
                Epochs done count against ``budget`` in the cost rule.
        """
        self._value = _finite(value)
        self._epochs_done = self._epochs_done + 1 if epoch is None else int(epoch) + 1
        self._target._record(self, value)

    def should_stop(self) -> bool:
        """Whether training should end now; latched once true. Cheap: call it every step.

        True on a confirmed alert in ``prune_on`` (confidence at least ``min_confidence``),
        or, with ``cost``, when :meth:`CostModel.decide <tevid_hpo.cost.CostModel.decide>` on
        the latest diagnosis (epochs reported so far out of ``budget``, at the trial's standing
        after its last report) says stopping is cheaper. A failure inside these rules is logged
        once and answers ``False``.
        """
        if self._stop is not None:
            return True
        mon = self._monitor
        if mon is None:
            return False
        t = self._target
        try:
            budget = self.budget if self.budget is not None else t.max_budget
            # After a monitor failure the latest diagnosis is stale: alerts only.
            latest = mon.last.to_dict() if mon.error is None and mon.last is not None else None
            reason = t.rules.reason(mon.alerts, latest, self._epochs_done,
                                    float(budget) if budget else None,
                                    t._standing(self) if t.cost is not None
                                    or t.rules.spare_leaders is not None else None)
        except Exception as err:
            if not self._warned:
                self._warned = True
                logger.warning("TEViD stop rules failed (%s: %s); the trial continues",
                               type(err).__name__, err, exc_info=err)
            return False
        if reason is None:
            return False
        reason["report_step"] = self._epochs_done
        self._stop = reason
        logger.info("SMAC trial (budget %s, seed %s) stopped by TEViD: %s", self.budget,
                    self.seed, describe(reason))
        return True

    # ------------------------------------------------------------------ results
    @property
    def stop_reason(self) -> dict[str, Any] | None:
        """Why :meth:`should_stop` said stop (decision format), or ``None``."""
        return dict(self._stop) if self._stop is not None else None

    @property
    def value(self) -> float | None:
        """The last finite value passed to :meth:`report`."""
        return self._value

    @property
    def epochs_done(self) -> int:
        """Epochs reported so far."""
        return self._epochs_done

    def summary(self) -> dict[str, Any]:
        """The JSON-able diagnosis stored as ``additional_info["tevid"]`` (without the cost
        fields the wrapper adds for stopped trials)."""
        mon = self._monitor
        out: dict[str, Any] = {"version": FORMAT_VERSION, "stopped": self._stop is not None,
                               "monitored": mon is not None, "budget": self.budget,
                               "epochs_done": self._epochs_done}
        if mon is not None:
            history = mon.history
            out.update({"alert": mon.alert, "alerts": mon.alerts,
                        "latest": history[-1] if history else None,
                        "n_diagnoses": len(history), "error": mon.error})
        if self._stop is not None:
            out["stop"] = dict(self._stop)
        return out


class TEViDTarget:
    """Wrap a SMAC target function so that it trains under TEViD and stops early.

    The wrapped function takes what SMAC passes (``config`` and, as its signature asks,
    ``seed``, ``budget``, ``instance``) plus the keyword argument ``tevid``, a
    :class:`TEViDTrial`. The wrapper is a drop-in target function: SMAC sees the function's own
    signature without ``tevid``.

    It returns ``(cost, additional_info)`` with ``additional_info["tevid"]`` the trial's
    diagnosis (:meth:`TEViDTrial.summary`). For a trial that ``tevid.should_stop()`` stopped,
    ``cost`` is :meth:`stopped_cost` of the cost at stopping — the function's return value, or
    when it ended by ``raise TrialStopped()`` the last ``tevid.report`` value — and the record
    adds ``value_at_stop``, ``p_anomaly`` and ``cost``. Other trials return the function's cost
    unchanged. Single-objective only.

    **Standing** (for the cost rule and the leader guard). SMAC shows a target function no
    other trial, so the wrapper remembers every ``tevid.report`` of the trials it runs; a
    trial's standing is the share of the other trials at the same ``budget`` whose lowest cost
    up to its epoch its own lowest cost so far beats (:func:`~tevid_hpo.cost.standing_so_far`;
    a trial that stopped earlier counts with what it reached), recorded as the stop reason's
    ``standing``. Only the same budget counts: a run at another budget follows another
    schedule (a learning-rate decay over its budget, say), so its cost at an epoch is not
    comparable. Trials run by other processes (dask workers each get their own copy of the
    wrapper) are not seen; a trial with no rival seen has no standing (``None``), the rule
    without standing.

    Args:
        function: the target function; must accept the keyword argument ``tevid``.
        worst_cost: the cost of a useless model on the function's scale (1.0 for an error
            rate, ``log(n_classes)`` for a cross-entropy loss): what a failing run is expected
            to end at. Required: no default is right for every objective.
        diagnostician: a :class:`~tevid_hpo.diagnostician.Diagnostician`, a checkpoint path
            (loaded once per worker thread, on CPU, at the first ``tevid.monitor()``), or
            ``None`` for the shipped default.
        prune_on: alert labels that stop a trial.
        cost: a :class:`~tevid_hpo.cost.CostModel` to also stop on the cost rule; ``None``
            (default) stops on confirmed alerts only. Penalties use
            :meth:`CostModel.anomaly_probability` either way.
        min_confidence: ignore alerts whose probability for their label is below this.
        spare_leaders: the leader guard (:func:`~tevid_hpo.decision.spares`): a trial whose
            standing (above) reaches this share is not stopped by TEViD, except for a
            non-finite loss. Default 0.9 (the top tenth);
            ``None`` stops on every confirmed alert.
        max_budget: epochs for the cost rule when SMAC passes no ``budget``.
        monitor_kwargs: defaults for :meth:`TEViDTrial.monitor` (``every``, ``layers``, ...;
            not ``optimizer``, which is each trial's own: ``tevid.monitor(model, optimizer=opt)``).

    Raises:
        FileNotFoundError: ``diagnostician=None`` and no default checkpoint is installed (here,
            once, rather than in every trial).

    Example:
        >>> def train(config, budget: float = 1, *, tevid):
        ...     tevid.report(0.25, epoch=0)
        ...     return 0.25
        >>> target = TEViDTarget(train, worst_cost=1.0, diagnostician="my/checkpoint")
        >>> import inspect; list(inspect.signature(target).parameters)
        ['config', 'budget']
        >>> cost, info = target({"lr": 0.1}, budget=1)
        >>> cost, info["tevid"]["stopped"], info["tevid"]["monitored"]
        (0.25, False, False)
    """

    def __init__(self, function: Callable[..., Any], *, worst_cost: float,
                 diagnostician: Diagnostician | str | os.PathLike[str] | None = None,
                 prune_on: Collection[str] = DEFAULT_PRUNE_ON, cost: CostModel | None = None,
                 min_confidence: float = 0.0, max_budget: float | None = None,
                 monitor_kwargs: Mapping[str, Any] | None = None,
                 spare_leaders: float | None = DEFAULT_SPARE_LEADERS) -> None:
        if not callable(function):
            raise TypeError(f"function must be callable, got {type(function)}")
        signature = inspect.signature(function)
        if TRIAL_ARGUMENT not in signature.parameters:
            raise TypeError(f"the target function must accept a keyword argument "
                            f"{TRIAL_ARGUMENT!r} (its TEViDTrial)")
        worst = _finite(worst_cost)
        if worst is None:
            raise ValueError(f"worst_cost must be a finite number, got {worst_cost!r}")
        #: The validated stop settings (:class:`~tevid_hpo.decision.StopRules`).
        self.rules = StopRules(tuple(prune_on) if not isinstance(prune_on, str) else prune_on,
                               cost, min_confidence, spare_leaders)
        self.prune_on, self.min_confidence = self.rules.prune_on, self.rules.min_confidence
        if diagnostician is not None and not isinstance(diagnostician,
                                                        (Diagnostician, str, os.PathLike)):
            raise TypeError(f"diagnostician must be a Diagnostician, a checkpoint path or None, "
                            f"got {type(diagnostician).__name__}")
        if max_budget is not None and not (_finite(max_budget) or 0) > 0:
            raise ValueError(f"max_budget must be None or a finite number > 0, got {max_budget!r}")
        if monitor_kwargs is not None and not isinstance(monitor_kwargs, Mapping):
            raise TypeError(f"monitor_kwargs must be a mapping of TrialMonitor arguments, got "
                            f"{type(monitor_kwargs).__name__}")
        # The optimizer is the trial's own: it goes to tevid.monitor(model, optimizer=opt).
        allowed = set(inspect.signature(TrialMonitor).parameters) - {"model", "diagnostician",
                                                                     "optimizer"}
        unknown = sorted(set(monitor_kwargs or {}) - allowed)
        if unknown:
            raise TypeError(f"monitor_kwargs has unknown TrialMonitor arguments {unknown}; "
                            f"allowed: {sorted(allowed)}")
        if diagnostician is None and not checkpoint_paths(DEFAULT_CHECKPOINT)[0].is_file():
            # Fail here, once, rather than crash every trial SMAC runs (as TrialMonitor does).
            raise FileNotFoundError(
                f"no default TEViD checkpoint at {DEFAULT_CHECKPOINT}: pass "
                "diagnostician=<checkpoint path or Diagnostician>")
        self.function = function
        self.worst_cost = worst
        self.cost = cost
        self.max_budget = max_budget
        self.monitor_kwargs = dict(monitor_kwargs or {})
        self._diagnostician = diagnostician
        self._local = threading.local()
        self._reports_lock = threading.Lock()
        # (budget, epochs done) -> trial id -> reported cost: what standings are measured on.
        # budget -> trial id -> epochs done -> the cost reported there
        self._reports: dict[float | None, dict[int, dict[int, float]]] = {}
        self._n_trials = 0
        # SMAC inspects the signature to decide which of seed/budget/instance to pass and warns
        # about parameters it does not set: show it the function's own, minus `tevid`.
        self.__signature__ = signature.replace(parameters=[
            p for name, p in signature.parameters.items() if name != TRIAL_ARGUMENT])

    def __repr__(self) -> str:
        name = getattr(self.function, "__qualname__", repr(self.function))
        return (f"TEViDTarget({name}, worst_cost={self.worst_cost}, prune_on={self.prune_on!r}, "
                f"cost={self.cost!r})")

    @property
    def __code__(self) -> Any:
        # SMAC's runner metadata (used to recognise a continued run) reads
        # target_function.__code__: give it the wrapped function's code, not ours.
        f = self.function
        while not hasattr(f, "__code__") and hasattr(f, "func"):   # functools.partial
            f = f.func
        return getattr(f, "__code__", TEViDTarget.__call__.__code__)

    def __getstate__(self) -> dict[str, Any]:
        # Dask ships the target to its workers; the per-thread diagnostician cache stays here.
        state = self.__dict__.copy()
        state.pop("_local")
        state.pop("_reports_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._reports_lock = threading.Lock()

    def _new_trial_id(self) -> int:
        with self._reports_lock:
            self._n_trials += 1
            return self._n_trials

    def _record(self, trial: TEViDTrial, value: Any) -> None:
        try:
            v = float(value)   # a NaN is kept: a diverged trial is beaten by every rival
        except (TypeError, ValueError):
            return
        with self._reports_lock:
            self._reports.setdefault(trial.budget, {}).setdefault(trial._id, {})[
                trial.epochs_done] = v

    def _standing(self, trial: TEViDTrial) -> float | None:
        """``trial``'s standing in the search after its last report
        (:func:`~tevid_hpo.cost.standing_so_far` among the other trials at the same budget;
        ``None`` before a report or without a rival)."""
        with self._reports_lock:
            curves = {k: dict(c) for k, c in self._reports.get(trial.budget, {}).items()}
        own = curves.pop(trial._id, None)
        if not own:
            return None
        return standing_so_far(own, curves.values(), maximize=False)   # SMAC minimises cost

    def diagnostician(self) -> Diagnostician:
        """This thread's diagnostician (a monitor owns its streaming state while active, so
        concurrent trials in one process must not share one)."""
        diag = getattr(self._local, "diagnostician", None)
        if diag is None:
            source = self._diagnostician
            if isinstance(source, Diagnostician):
                diag = (source if threading.current_thread() is threading.main_thread()
                        else copy.deepcopy(source))
            else:
                diag = Diagnostician.from_pretrained(source, device="cpu")
            self._local.diagnostician = diag
        return diag

    def stopped_cost(self, value: float | None, p_anomaly: float) -> float:
        """The cost returned for a stopped trial: ``max(v, v + p·(worst_cost − v))``.

        ``v`` is the cost at stopping, ``p`` the evidence that the trial is failing. Without a
        finite ``v`` (stopped before any report, or a NaN loss) it is ``worst_cost``.

        Example:
            >>> t = TEViDTarget(lambda config, *, tevid: 0.0, worst_cost=1.0, diagnostician="ck")
            >>> t.stopped_cost(0.3, 0.9), t.stopped_cost(None, 0.5), t.stopped_cost(2.0, 1.0)
            (0.93, 1.0, 2.0)
        """
        v = _finite(value)
        if v is None:
            return self.worst_cost
        return round(max(v, v + p_anomaly * (self.worst_cost - v)), 12)

    def __call__(self, config: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        trial = TEViDTrial(self, budget=kwargs.get("budget"), seed=kwargs.get("seed"),
                           instance=kwargs.get("instance"))
        rval: Any = None
        try:
            rval = self.function(config, **kwargs, **{TRIAL_ARGUMENT: trial})
        except TrialStopped:
            if trial.stop_reason is None:
                # Raised without a TEViD decision: the user's own early stop, plain cost.
                trial._stop = {"pruner": "user", "rule": "user", "label": None,
                               "reason": "TrialStopped", "report_step": trial.epochs_done}
        cost, info = rval if isinstance(rval, tuple) else (rval, {})
        info = dict(info or {})
        try:
            info[INFO_KEY], cost = self._finish(trial, cost)
        except Exception as err:   # bookkeeping must never turn a finished trial into a crash
            logger.warning("TEViD could not summarise the trial (%r); returning its cost as is",
                           err, exc_info=err)
            if cost is None:
                cost = self.worst_cost
        return cost, info

    def _finish(self, trial: TEViDTrial, cost: Any) -> tuple[dict[str, Any], Any]:
        summary = trial.summary()
        reason = trial.stop_reason
        if reason is None:
            return summary, cost
        value = _finite(cost) if cost is not None else trial.value
        if reason["pruner"] != TEVID:
            p = 0.0
        elif reason["rule"] == "cost":
            p = float(reason["confidence"])
        elif reason.get("reason") == NONFINITE_LOSS:
            p = 1.0
        else:
            label = reason["label"]
            diagnosis = {"probs": {label: float(reason.get("confidence") or 0.0)},
                         "vacuity": float(reason.get("vacuity") or 0.0)}
            p = CostModel.anomaly_probability(diagnosis, (label,))
        returned = self.stopped_cost(value, p)
        summary.update({"value_at_stop": value, "p_anomaly": round(p, 4), "cost": returned})
        return summary, returned


class TEViDCallback(Callback):
    """A ``smac.Callback`` that records the TEViD diagnosis of every trial SMAC is told about.

    Reads ``additional_info["tevid"]`` written by :class:`TEViDTarget` in ``on_tell_end``, so
    it runs in the optimiser's process whatever runner executes the trials (local, dask).

    Attributes:
        trials: one record per told trial, in order: ``config_id``, ``config`` (a dict),
            ``budget``, ``seed``, ``instance``, ``cost``, ``status`` and the diagnosis fields
            (``stopped``, ``alert``, ``alerts``, ``latest``, ``epochs_done``, and for stopped
            trials ``stop``, ``value_at_stop``, ``p_anomaly``).

    Example:
        >>> cb = TEViDCallback()
        >>> cb.trials, cb.stopped
        ([], [])
    """

    def __init__(self) -> None:
        super().__init__()
        self.trials: list[dict[str, Any]] = []

    @property
    def stopped(self) -> list[dict[str, Any]]:
        """The records of trials TEViD stopped early."""
        return [r for r in self.trials
                if r.get("stopped") and (r.get("stop") or {}).get("pruner") == TEVID]

    def on_tell_end(self, smbo: Any, info: TrialInfo, value: TrialValue) -> bool | None:
        try:
            tevid = (value.additional_info or {}).get(INFO_KEY)
            if not isinstance(tevid, Mapping):
                return None
            try:
                config_id = smbo.runhistory.get_config_id(info.config)
            except Exception:   # not in the run history (e.g. a told-only trial)
                config_id = None
            record = {"config_id": config_id, "config": dict(info.config),
                      "budget": info.budget, "seed": info.seed, "instance": info.instance,
                      "cost": value.cost, "status": getattr(value.status, "name", value.status),
                      **tevid}
            self.trials.append(record)
            if record.get("stopped") and (record.get("stop") or {}).get("pruner") == TEVID:
                logger.info("SMAC config %s (budget %s) ended early by TEViD: %s; cost %s",
                            config_id, info.budget, describe(record["stop"]), value.cost)
        except Exception as err:   # a callback error would abort the optimisation
            logger.warning("TEViDCallback could not record a trial: %r", err)
        return None
