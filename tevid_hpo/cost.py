"""Decision-theoretic cost of diagnostic alerts (paper Appendix I) and a per-trial stop rule.

Appendix I prices an alert policy over a set of runs as

    Cost = C_FA·N_FA + C_MD·N_MD + C_Lead·Σ_{detected i} Lead_i

with ``N_FA`` false alarms (Healthy runs that alerted), ``N_MD`` missed detections (anomalous
runs that never alerted) and ``Lead_i`` the lead in epochs of each detection over the labelling
rule (positive = earlier). ``C_Lead < 0`` rewards early detection. The paper's defaults are
``(C_FA, C_MD, C_Lead) = (1, 10, -0.5)``.

:class:`CostModel` evaluates that cost for an alert policy on labelled runs
(:meth:`CostModel.expected_cost`), finds the cost-minimising operating point
(:meth:`CostModel.best_threshold`) and turns one live diagnosis into a stop/continue decision
(:meth:`CostModel.should_stop`), which :class:`tevid_hpo.pruners.TEViDPruner` can consult. What
stopping risks beyond a false alarm is the trial's standing in the search (:func:`standing_so_far`:
the share of the other trials whose best value up to its step its best so far beats): the better
it stands, the surer the diagnosis must be.

Example:
    >>> from types import SimpleNamespace
    >>> cm = CostModel()
    >>> cm.cost(n_fa=5, n_md=3, leads=[6.0, 2.0])
    31.0
    >>> d = SimpleNamespace(probs={"Healthy": 0.1, "Instability": 0.9}, vacuity=0.0,
    ...                     label="Instability", alert=None)
    >>> cm.should_stop(d, epochs_done=5, epochs_max=50)
    True
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core_models.metrics import (
    RunPrediction,
    ScoreKind,
    alert_profile,
    diagnostic_cost,
    evaluate_alerts,
)
from data_factory.labels import HEALTHY, INSTABILITY, KNOWN_LABELS, LABELS, OVERFITTING, UNKNOWN

__all__ = ["CostModel", "OperatingPoint", "StopDecision", "standing", "standing_so_far"]

#: Alert labels that stop a trial unless told otherwise (DESIGN §7); every integration's default
#: (re-exported by :mod:`tevid_hpo.decision`).
DEFAULT_PRUNE_ON: tuple[str, ...] = (INSTABILITY, OVERFITTING)


def _finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _field(diagnosis: Any, name: str) -> Any:
    # Diagnoses arrive as objects in the trial's process and as JSON dicts when a pruner reads
    # them back from Optuna storage; accept both rather than forcing a conversion on callers.
    if isinstance(diagnosis, Mapping):
        if name not in diagnosis:
            raise TypeError(f"diagnosis has no {name!r} entry")
        return diagnosis[name]
    if not hasattr(diagnosis, name):
        raise TypeError(f"diagnosis has no .{name} attribute (got {type(diagnosis).__name__})")
    return getattr(diagnosis, name)


def standing(value: float, others: Iterable[float], maximize: bool) -> float | None:
    """The trial's standing at a step: the share of ``others`` (the values the other trials
    reported at the same step) that its ``value`` beats, in ``[0, 1]``; ``None`` without rivals.

    "Beats" is strict and follows the objective's direction (``maximize``: higher is better). A
    tie is not beaten: stopping a trial that only ties the leader loses no configuration, since
    an equally good one goes on. A NaN (a diverged trial) beats nothing and is beaten by any
    number; ``±inf`` compare as numbers. This is the ``standing`` that :meth:`CostModel.decide`
    takes.

    Example:
        >>> standing(0.9, [0.5, 0.7, 0.9, 0.95], maximize=True)   # beats 2 of 4; a tie is not
        0.5
        >>> standing(0.3, [0.5, float("nan")], maximize=False)    # a loss: lower is better
        1.0
        >>> standing(0.3, [], maximize=True) is None               # no rival: unknown
        True
    """
    if not isinstance(maximize, bool):
        raise TypeError(f"maximize must be a bool, got {maximize!r}")
    v = float(value)
    rivals = [float(o) for o in others]
    if not rivals:
        return None
    if math.isnan(v):
        return 0.0
    beaten = sum(math.isnan(o) or (v > o if maximize else v < o) for o in rivals)
    return beaten / len(rivals)


def _best(values: Iterable[float], maximize: bool) -> float:
    """The best of ``values`` (not empty) in the objective's direction, ignoring NaN (a diverged
    report); NaN if all are."""
    finite = [v for v in map(float, values) if not math.isnan(v)]
    if not finite:
        return math.nan
    return max(finite) if maximize else min(finite)


def standing_so_far(curve: Mapping[float, float], rivals: Iterable[Mapping[float, float]],
                    maximize: bool) -> float | None:
    """A trial's standing in the search at its last reported step: the :func:`standing` of its
    best value so far among each rival's best value up to the same step.

    ``curve`` and every rival map a step (epoch, iteration, time) to the value reported there.
    The trial's step is its last (largest) one. A rival counts with the best value it reported
    at or before that step — also a rival that stopped earlier, with what it reached — and is
    left out if it had not reported by then. This is what a false stop risks: under successive
    halving few or no rivals reach a late step, and a trial's latest value may dip below its
    best for one report, yet stopping it loses the configuration that leads the search. Every
    integration's leader guard and cost rule weigh this standing.

    Example:
        >>> stopped = {0: 0.3, 1: 0.5}                     # a rival pruned after step 1
        >>> running = {0: 0.2, 1: 0.4, 2: 0.7, 3: 0.6}     # 0.6 dips below its best 0.7
        >>> standing_so_far(running, [stopped, {0: 0.9}], maximize=True)   # beats 0.5, not 0.9
        0.5
        >>> standing_so_far({0: 0.1}, [{1: 0.0}], maximize=True) is None  # no rival by step 0
        True
    """
    if not curve:
        return None
    step = max(curve)
    reached = ([v for s, v in rival.items() if s <= step] for rival in rivals)
    return standing(_best(curve.values(), maximize),
                    [_best(values, maximize) for values in reached if values], maximize)


@dataclass(frozen=True)
class OperatingPoint:
    """An alert threshold and what it costs on a set of labelled runs.

    Attributes:
        threshold: Score threshold of the 3-consecutive alert rule (``inf`` = never alert).
        cost: Expected cost per run (Appendix I cost divided by the number of runs).
        n_false_alarms, n_missed, n_detected: Run counts at this threshold.
        lead_sum: Σ Lead over detections with a known rule firing time (epochs).
        far: False-alarm rate, the fraction of Healthy runs that alerted.

    Example:
        >>> op = OperatingPoint(0.8, 0.25, 1, 0, 3, 4.0, 0.5)
        >>> op.cost * 100   # per 100 runs, as in Table 19
        25.0
    """

    threshold: float
    cost: float
    n_false_alarms: int
    n_missed: int
    n_detected: int
    lead_sum: float
    far: float


@dataclass(frozen=True)
class StopDecision:
    """The per-trial decision with its reasons, for logs and the pruner's recorded reason.

    Attributes:
        stop: Whether stopping is strictly cheaper than continuing.
        p_anomaly: Evidence-backed probability that the trial is one of ``prune_on``.
        remaining: Fraction of the epoch budget still to run, in ``[0, 1]``.
        cost_stop, cost_continue: Expected costs of the two actions.
        p_threshold: The ``p`` above which stopping wins at this remaining budget and standing.
        standing: The trial's standing among its peers at the same step (``None``: unknown).

    Example:
        >>> StopDecision(True, 0.9, 0.5, 0.1, 4.5, 0.16).stop
        True
    """

    stop: bool
    p_anomaly: float
    remaining: float
    cost_stop: float
    cost_continue: float
    p_threshold: float
    standing: float | None = None


@dataclass(frozen=True)
class CostModel:
    """Appendix I cost coefficients, with policy evaluation and a per-trial stop rule.

    Args:
        c_fa: Cost of one false alarm (``>= 0``); the paper prices it at ~1 epoch of an
            engineer's investigation.
        c_md: Cost of one missed detection (``>= 0``); ~a wasted run budget, 10 in the paper.
        c_lead: Cost per epoch of lead (``<= 0``: earlier detection is cheaper); -0.5 in the paper.
        c_best: Extra cost of stopping a healthy trial in proportion to its *standing* among the
            trials at the same step (``>= 0``; 0 ignores standing). Losing the trial that leads
            is the worst thing a pruner can do — the user loses their best configuration — so
            by default it costs as much as a missed detection (10). Not part of Appendix I: it
            only enters the per-trial stop rule (:meth:`decide`), never policy costs.

    Example:
        >>> CostModel(c_fa=1, c_md=10, c_lead=-0.5).cost(n_fa=1, n_md=1, leads=[4.0])
        9.0
        >>> CostModel(c_lead=0.5)
        Traceback (most recent call last):
        ...
        ValueError: c_lead must be <= 0 (a positive value would reward late detection), got 0.5
    """

    c_fa: float = 1.0
    c_md: float = 10.0
    c_lead: float = -0.5
    c_best: float = 10.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "c_best", _finite("c_best", self.c_best))
        if self.c_best < 0:
            raise ValueError(f"c_best must be >= 0, got {self.c_best}")
        set_(self, "c_fa", _finite("c_fa", self.c_fa))
        set_(self, "c_md", _finite("c_md", self.c_md))
        set_(self, "c_lead", _finite("c_lead", self.c_lead))
        if self.c_fa < 0:
            raise ValueError(f"c_fa must be >= 0, got {self.c_fa}")
        if self.c_md < 0:
            raise ValueError(f"c_md must be >= 0, got {self.c_md}")
        if self.c_lead > 0:
            raise ValueError(
                f"c_lead must be <= 0 (a positive value would reward late detection), "
                f"got {self.c_lead}"
            )

    # ----------------------------------------------------------------------------------------
    # Policy cost on labelled runs
    # ----------------------------------------------------------------------------------------

    def cost(self, n_fa: float, n_md: float, leads: Sequence[float] | float = ()) -> float:
        """``c_fa·n_fa + c_md·n_md + c_lead·Σ leads`` (leads in epochs, or already summed).

        Example:
            >>> CostModel().cost(2, 0, [1.0, 3.0])
            0.0
        """
        n_fa_ = _finite("n_fa", n_fa)
        n_md_ = _finite("n_md", n_md)
        if n_fa_ < 0 or n_md_ < 0:
            raise ValueError(f"counts must be >= 0, got n_fa={n_fa}, n_md={n_md}")
        lead_arr = np.asarray(leads, dtype=np.float64)
        if not np.all(np.isfinite(lead_arr)):
            raise ValueError("leads must be finite")
        return diagnostic_cost(n_fa_, n_md_, lead_arr, self.c_fa, self.c_md, self.c_lead)

    def expected_cost(
        self,
        runs: Sequence[RunPrediction],
        threshold: float | None,
        *,
        per: float = 1.0,
        score: ScoreKind = "not_healthy",
        consecutive: int = 3,
        vacuity_threshold: float | None = None,
    ) -> float:
        """Appendix I cost of an alert policy on labelled runs, per ``per`` runs.

        The policy is the 3-consecutive rule on the anomaly score at ``threshold``
        (:func:`core_models.metrics.evaluate_alerts`), or the alerts recorded on the runs when
        ``threshold`` is ``None``. Detections without a rule firing time add no lead term.

        Args:
            per: Normalisation; 1 gives the expected cost of one run, 100 the "per 100 runs" of
                Table 19.

        Example:
            >>> import numpy as np
            >>> def run(label, s, **kw):
            ...     p = np.tile([1 - s, 0, s, 0, 0], (4, 1))
            ...     return RunPrediction(label + str(s), label, range(4), range(4), p, [0] * 4, **kw)
            >>> runs = [run("Healthy", 0.1), run("Instability", 0.9, onset_epoch=0, fire_epoch=3)]
            >>> CostModel().expected_cost(runs, threshold=0.5)  # detected at epoch 2: lead 1
            -0.25
        """
        rs = list(runs)
        if not rs:
            raise ValueError("expected_cost: no runs")
        per_ = _finite("per", per)
        if per_ <= 0:
            raise ValueError(f"per must be > 0, got {per}")
        s = evaluate_alerts(rs, threshold, score, consecutive, vacuity_threshold)
        total = self.cost(s.n_false_alarms, s.n_missed, s.leads)
        return total / len(rs) * per_

    def best_threshold(
        self,
        runs: Sequence[RunPrediction],
        thresholds: Sequence[float] | np.ndarray | None = None,
        *,
        score: ScoreKind = "not_healthy",
        consecutive: int = 3,
        vacuity_threshold: float | None = None,
    ) -> OperatingPoint:
        """The threshold with the lowest expected cost on ``runs`` (tune on validation runs).

        With ``thresholds=None`` the search is exact over all real thresholds: a run's first
        alert only changes when the threshold crosses one of its window scores, so those values
        (plus ``inf``, never alert) are the only candidates that matter. Ties go to the highest
        threshold (fewest alerts).

        Example:
            >>> import numpy as np
            >>> healthy, sick = (np.tile([1 - s, 0, s, 0, 0], (4, 1)) for s in (0.3, 0.6))
            >>> runs = [RunPrediction("h", "Healthy", range(4), range(4), healthy, [0] * 4),
            ...         RunPrediction("i", "Instability", range(4), range(4), sick, [0] * 4,
            ...                       onset_epoch=0, fire_epoch=2)]
            >>> op = CostModel().best_threshold(runs)
            >>> round(op.threshold, 2), op.n_false_alarms, op.n_missed
            (0.6, 0, 0)
        """
        rs = list(runs)
        if not rs:
            raise ValueError("best_threshold: no runs")
        profiles = [alert_profile(r, score, consecutive, vacuity_threshold) for r in rs]
        if thresholds is None:
            values = [m[np.isfinite(m)] for m, _ in profiles]
            cand = np.unique(np.concatenate(values + [np.array([np.inf])]))
        else:
            cand = np.asarray(thresholds, dtype=np.float64).reshape(-1)
            if cand.size == 0:
                raise ValueError("best_threshold: empty thresholds")
            if np.any(np.isnan(cand)) or np.any(cand == -np.inf):
                raise ValueError("thresholds must be numbers or +inf")
            cand = np.unique(cand)

        # Vectorised over candidates: for each run, where does each threshold first fire?
        n_fa = np.zeros(cand.size, dtype=np.int64)
        n_md = np.zeros(cand.size, dtype=np.int64)
        lead_sum = np.zeros(cand.size, dtype=np.float64)
        n_healthy = 0
        for r, (m, confirm_epochs) in zip(rs, profiles):
            j = np.searchsorted(m, cand, side="left")
            alerted = j < m.shape[0]
            if not r.is_anomalous:
                n_healthy += 1
                n_fa += alerted
                continue
            n_md += ~alerted
            if r.fire_epoch is not None and alerted.any():
                lead = r.fire_epoch - confirm_epochs[np.minimum(j, m.shape[0] - 1)]
                lead_sum += np.where(alerted, lead, 0.0)
        n_det = sum(r.is_anomalous for r in rs) - n_md
        cost = (self.c_fa * n_fa + self.c_md * n_md + self.c_lead * lead_sum) / len(rs)
        # Highest threshold among the (numerically) cheapest: fewest alerts for the same cost.
        best = np.nonzero(cost <= cost.min() + 1e-12 * max(1.0, abs(cost.min())))[0][-1]
        return OperatingPoint(
            threshold=float(cand[best]),
            cost=float(cost[best]),
            n_false_alarms=int(n_fa[best]),
            n_missed=int(n_md[best]),
            n_detected=int(n_det[best]),
            lead_sum=float(lead_sum[best]),
            far=float(n_fa[best] / n_healthy) if n_healthy else float("nan"),
        )

    # ----------------------------------------------------------------------------------------
    # Per-trial decision
    # ----------------------------------------------------------------------------------------

    @staticmethod
    def anomaly_probability(diagnosis: Any, prune_on: Collection[str] = DEFAULT_PRUNE_ON) -> float:
        """Evidence-backed probability that the trial belongs to one of ``prune_on``.

        An EDL head's expected probability is ``p_c = b_c + u/K`` (belief mass plus an equal
        share of the vacuity ``u``). Only the belief ``b_c = p_c - u/K`` is backed by evidence,
        so it is what we act on: a maximally uncertain diagnosis (uniform ``p``, ``u = 1``) has
        zero belief and never stops a trial, whereas summing raw ``p_c`` would give
        ``|prune_on|/K`` and stop it. ``b_c`` is clipped at 0 for temperature-scaled outputs.
        If ``Unknown`` is in ``prune_on`` its mass is the vacuity itself.

        Example:
            >>> from types import SimpleNamespace as D
            >>> d = D(probs={"Healthy": 0.3, "Instability": 0.5, "Overfitting": 0.2},
            ...       vacuity=0.5)
            >>> round(CostModel.anomaly_probability(d), 3)   # (0.5 - 0.1) + (0.2 - 0.1)
            0.5
        """
        prune = set(prune_on)
        if not prune:
            raise ValueError("prune_on must name at least one label")
        bad = prune - set(LABELS)
        if bad:
            raise ValueError(f"prune_on has unknown labels {sorted(bad)}; use {LABELS}")
        if HEALTHY in prune:
            raise ValueError("prune_on must not contain Healthy")
        probs = _field(diagnosis, "probs")
        if not isinstance(probs, Mapping):
            raise TypeError(f"diagnosis.probs must be a mapping label -> p, got {type(probs)}")
        u = _finite("diagnosis.vacuity", _field(diagnosis, "vacuity"))
        if not 0.0 <= u <= 1.0:
            raise ValueError(f"diagnosis.vacuity must lie in [0, 1], got {u}")
        for label, p in probs.items():
            if label not in LABELS:
                raise ValueError(f"diagnosis.probs has unknown label {label!r}; use {LABELS}")
            pv = _finite(f"diagnosis.probs[{label!r}]", p)
            if not 0.0 <= pv <= 1.0:
                raise ValueError(f"diagnosis.probs[{label!r}] must lie in [0, 1], got {pv}")
        share = u / len(KNOWN_LABELS)
        p_anom = sum(max(float(probs.get(c, 0.0)) - share, 0.0) for c in prune if c != UNKNOWN)
        if UNKNOWN in prune:
            p_anom += u
        return min(p_anom, 1.0)

    def stop_threshold(self, epochs_done: float, epochs_max: float,
                       standing: float | None = None) -> float:
        """The anomaly probability above which :meth:`should_stop` stops, at this budget point.

        ``p* = a / (a + r·(c_md - c_lead))`` with ``a = c_fa + c_best·s`` the cost of a false
        stop at standing ``s`` (0 when unknown) and ``r`` the remaining budget fraction (``1.0``
        — never — when nothing can be gained). Decreasing in ``r``: early in a trial a weaker
        diagnosis suffices; increasing in ``s``: the better the trial stands, the surer the
        diagnosis must be.

        Example:
            >>> cm = CostModel()
            >>> round(cm.stop_threshold(0, 100), 4), round(cm.stop_threshold(90, 100), 4)
            (0.087, 0.4878)
            >>> round(cm.stop_threshold(0, 100, standing=1.0), 4)   # the leader
            0.5116
        """
        r = self._remaining(epochs_done, epochs_max)
        risk = self._false_stop_cost(standing)
        denom = risk + r * (self.c_md - self.c_lead)
        return risk / denom if denom > 0 else 1.0

    def _false_stop_cost(self, standing: float | None) -> float:
        if standing is None:
            return self.c_fa
        s = _finite("standing", standing)
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"standing must lie in [0, 1], got {standing}")
        return self.c_fa + self.c_best * s

    def decide(
        self,
        diagnosis: Any,
        epochs_done: float,
        epochs_max: float,
        prune_on: Collection[str] = DEFAULT_PRUNE_ON,
        standing: float | None = None,
    ) -> StopDecision:
        """:meth:`should_stop` with its numbers (for the pruner's recorded reason), and with
        what stopping risks beyond a false alarm: the trial's ``standing`` among the trials at
        the same step (the share of them it beats, in ``[0, 1]``; ``None`` when unknown).

        A false stop then costs ``c_fa + c_best·standing``:
        ``E[stop] = (c_fa + c_best·s)·(1 - p) + c_lead·p·r``, ``E[continue] = c_md·p·r``.

        Example:
            >>> from types import SimpleNamespace as D
            >>> d = D(probs={"Healthy": 0.5, "Overfitting": 0.5}, vacuity=0.0)
            >>> dec = CostModel().decide(d, epochs_done=50, epochs_max=100)
            >>> dec.stop, dec.cost_stop, dec.cost_continue
            (True, 0.375, 2.5)
            >>> CostModel().decide(d, epochs_done=50, epochs_max=100, standing=1.0).stop
            False
        """
        p = self.anomaly_probability(diagnosis, prune_on)
        r = self._remaining(epochs_done, epochs_max)
        cost_stop = self._false_stop_cost(standing) * (1.0 - p) + self.c_lead * p * r
        cost_continue = self.c_md * p * r
        # Strict: on a tie keep training (stopping is irreversible, continuing is not).
        return StopDecision(
            stop=cost_stop < cost_continue,
            p_anomaly=p,
            remaining=r,
            cost_stop=cost_stop,
            cost_continue=cost_continue,
            p_threshold=self.stop_threshold(epochs_done, epochs_max, standing),
            standing=standing,
        )

    def should_stop(
        self,
        diagnosis: Any,
        epochs_done: float,
        epochs_max: float,
        prune_on: Collection[str] = DEFAULT_PRUNE_ON,
    ) -> bool:
        """Stop the trial now iff the expected cost of stopping is below that of continuing.

        Let ``p`` be the evidence-backed probability that the trial is one of ``prune_on``
        (:meth:`anomaly_probability`) and ``r = (epochs_max - epochs_done) / epochs_max`` the
        fraction of the budget still to run. Myopically comparing "stop now" with "run to the
        end":

        * stop: if the trial is healthy (``1 - p``) the stop is a false alarm, ``c_fa``; if it is
          anomalous (``p``) it is a detection whose lead is at most the remaining budget, credited
          ``c_lead·r`` (lead counted in budget fractions, ``c_lead <= 0``);
          ``E[stop] = c_fa·(1 - p) + c_lead·p·r``.
        * continue: a healthy trial costs nothing more; an anomalous one is a missed detection
          that wastes the remaining budget, and ``c_md`` prices a whole wasted budget, so
          ``E[continue] = c_md·p·r``.

        Stop iff ``E[stop] < E[continue]``, i.e. ``c_fa·(1 - p) < p·r·(c_md - c_lead)``, i.e.
        ``p > c_fa / (c_fa + r·(c_md - c_lead))`` (:meth:`stop_threshold`). The rule is monotone
        (more ``p`` or more remaining budget never turns a stop into a continue), never stops at
        ``p = 0`` and never stops when no budget remains (nothing left to save).

        Args:
            diagnosis: Object or mapping with ``probs`` (``{label: p}``) and ``vacuity``.
            epochs_done: Epochs already trained, ``0 <= epochs_done <= epochs_max``.
            epochs_max: The trial's epoch budget, ``> 0``.
            prune_on: Labels a stop is meant to catch.

        Example:
            >>> from types import SimpleNamespace as D
            >>> cm = CostModel()
            >>> d = D(probs={"Healthy": 0.8, "Instability": 0.2}, vacuity=0.0, label="Healthy",
            ...       alert=None)
            >>> cm.should_stop(d, 10, 100), cm.should_stop(d, 95, 100)
            (True, False)
        """
        return self.decide(diagnosis, epochs_done, epochs_max, prune_on).stop

    @staticmethod
    def _remaining(epochs_done: float, epochs_max: float) -> float:
        done = _finite("epochs_done", epochs_done)
        total = _finite("epochs_max", epochs_max)
        if total <= 0:
            raise ValueError(f"epochs_max must be > 0, got {epochs_max}")
        if done < 0:
            raise ValueError(f"epochs_done must be >= 0, got {epochs_done}")
        if done > total:
            raise ValueError(f"epochs_done ({epochs_done}) exceeds epochs_max ({epochs_max})")
        return (total - done) / total
