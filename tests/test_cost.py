"""CostModel (Appendix I): hand-computed costs, an optimal operating point, the stop rule."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from core_models.metrics import RunPrediction
from data_factory.labels import FORGETTING, HEALTHY, INSTABILITY, KNOWN_LABELS, OVERFITTING, UNKNOWN
from tevid_hpo.cost import CostModel, OperatingPoint, standing, standing_so_far


def make_run(label: str, scores, *, onset=None, fire=None, run_id=None) -> RunPrediction:
    """One diagnosis per epoch; ``scores[t]`` is P(Instability), the rest is Healthy."""
    s = np.asarray(scores, dtype=float)
    probs = np.zeros((s.size, len(KNOWN_LABELS)))
    probs[:, KNOWN_LABELS.index(INSTABILITY)] = s
    probs[:, KNOWN_LABELS.index(HEALTHY)] = 1 - s
    return RunPrediction(
        run_id or f"{label}-{id(s)}",
        label,
        steps=np.arange(s.size),
        epochs=np.arange(s.size, dtype=float),
        probs=probs,
        vacuity=np.zeros(s.size),
        onset_epoch=onset,
        fire_epoch=fire,
    )


def diag(vacuity=0.0, **probs) -> SimpleNamespace:
    label = max(probs, key=probs.get) if probs else HEALTHY
    return SimpleNamespace(probs=probs, vacuity=vacuity, label=label, alert=None)


# Scores are dyadic so 1 - (1 - s) == s exactly and thresholds are exact.
H1 = make_run(HEALTHY, [0.5] * 6, run_id="h1")
H2 = make_run(HEALTHY, [0.75] * 6, run_id="h2")
A1 = make_run(INSTABILITY, [0.625] * 6, onset=0, fire=5, run_id="a1")  # confirms at epoch 2
A2 = make_run(INSTABILITY, [0.0, 0.0, 0.875, 0.875, 0.875, 0.875], onset=1, fire=5, run_id="a2")
RUNS = [H1, H2, A1, A2]

# Hand-computed total costs with (1, 10, -0.5), per threshold (A2's windows have minima
# 0, 0, .875, so at threshold 0 it confirms at epoch 2, otherwise at epoch 4):
#   0     : FA 2, leads 3 + 3      -> 2 - 3          = -1
#   0.5   : FA 2, leads 3 + 1      -> 2 - 2          =  0
#   0.625 : FA 1, leads 3 + 1      -> 1 - 2          = -1
#   0.75  : FA 1, MD 1 (A1), lead 1 -> 1 + 10 - 0.5  = 10.5
#   0.875 : MD 1, lead 1            -> 10 - 0.5      =  9.5
#   inf   : MD 2                    -> 20
HAND_TOTALS = {0.0: -1.0, 0.5: 0.0, 0.625: -1.0, 0.75: 10.5, 0.875: 9.5, np.inf: 20.0}


# --------------------------------------------------------------------------------------------
# Coefficients and the raw cost
# --------------------------------------------------------------------------------------------


def test_defaults_are_the_papers():
    cm = CostModel()
    assert (cm.c_fa, cm.c_md, cm.c_lead) == (1.0, 10.0, -0.5)


def test_cost_hand_computed():
    cm = CostModel()
    assert cm.cost(5, 3, [6.0, 2.0]) == 5 + 30 - 4
    assert cm.cost(0, 0, [-2.0]) == 1.0  # a lagging detection costs
    assert cm.cost(1, 2, 8.0) == 1 + 20 - 4  # leads may be given already summed
    assert CostModel(c_fa=2, c_md=3, c_lead=0).cost(1, 1, [100.0]) == 5.0


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"c_fa": -1}, ValueError),
        ({"c_md": -0.1}, ValueError),
        ({"c_lead": 0.5}, ValueError),
        ({"c_fa": float("nan")}, ValueError),
        ({"c_md": float("inf")}, ValueError),
        ({"c_fa": "one"}, TypeError),
    ],
)
def test_invalid_coefficients_are_rejected(kwargs, exc):
    with pytest.raises(exc):
        CostModel(**kwargs)


def test_cost_rejects_bad_counts_and_leads():
    cm = CostModel()
    with pytest.raises(ValueError):
        cm.cost(-1, 0)
    with pytest.raises(ValueError):
        cm.cost(0, 0, [np.nan])


# --------------------------------------------------------------------------------------------
# Policy cost and the optimal operating point
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold, total", sorted(HAND_TOTALS.items()))
def test_expected_cost_matches_hand_computation(threshold, total):
    cm = CostModel()
    assert cm.expected_cost(RUNS, threshold) == pytest.approx(total / 4)
    assert cm.expected_cost(RUNS, threshold, per=100) == pytest.approx(total * 25)


def test_expected_cost_with_recorded_alerts_and_errors():
    cm = CostModel()
    a = RunPrediction(
        "a",
        INSTABILITY,
        [0, 1],
        [0.0, 1.0],
        np.tile([1.0, 0, 0, 0, 0], (2, 1)),
        [0, 0],
        onset_epoch=0,
        fire_epoch=4,
        alert_epoch=1.0,
    )
    assert cm.expected_cost([a], None) == -1.5
    with pytest.raises(ValueError):
        cm.expected_cost([], 0.5)
    with pytest.raises(ValueError):
        cm.expected_cost([a], 0.5, per=0)


def test_best_threshold_is_provably_optimal_on_the_constructed_example():
    cm = CostModel()
    op = cm.best_threshold(RUNS)
    # Minimum -1 is reached at 0 and at 0.625; ties go to the higher threshold (fewer alerts).
    assert op == OperatingPoint(
        threshold=0.625,
        cost=-0.25,
        n_false_alarms=1,
        n_missed=0,
        n_detected=2,
        lead_sum=4.0,
        far=0.5,
    )
    # Exhaustive check: no threshold on a fine grid (nor any hand candidate) does better.
    grid = np.r_[np.linspace(0, 1, 401), list(HAND_TOTALS)]
    costs = np.array([cm.expected_cost(RUNS, t) for t in grid])
    assert costs.min() == pytest.approx(op.cost)
    assert op.cost == pytest.approx(cm.expected_cost(RUNS, op.threshold))


def test_best_threshold_moves_with_the_coefficients():
    # Expensive false alarms: totals 0 -> 10-3=7, 0.5 -> 10-2=8, 0.625 -> 5-2=3, 0.75 -> 14.5,
    # 0.875 -> 9.5, inf -> 20: a unique optimum at 0.625.
    op = CostModel(c_fa=5).best_threshold(RUNS)
    assert op.threshold == 0.625 and op.cost == pytest.approx(3 / 4)
    # Misses are free: never alerting (cost 0) beats every alert, whose false alarms cost.
    op = CostModel(c_md=0, c_lead=0).best_threshold(RUNS)
    assert op.threshold == np.inf and op.cost == 0.0 and op.n_missed == 2
    # A big lead reward favours the earliest alerts: threshold 0 detects A2 two epochs earlier.
    op = CostModel(c_lead=-5).best_threshold(RUNS)
    assert op.threshold == 0.0 and op.lead_sum == 6.0


def test_best_threshold_over_given_thresholds():
    cm = CostModel()
    op = cm.best_threshold(RUNS, thresholds=[0.75, 0.875])
    assert op.threshold == 0.875 and op.cost == pytest.approx(9.5 / 4)
    with pytest.raises(ValueError):
        cm.best_threshold(RUNS, thresholds=[])
    with pytest.raises(ValueError):
        cm.best_threshold(RUNS, thresholds=[np.nan])
    with pytest.raises(ValueError):
        cm.best_threshold([])


def test_best_threshold_counts_anomalies_without_fire_time_but_adds_no_lead():
    u = make_run(UNKNOWN, [0.875] * 4, onset=0)
    op = CostModel().best_threshold([u, H1])
    assert op.n_detected == 1 and op.lead_sum == 0.0
    assert op.threshold == 0.875 and op.cost == 0.0


# --------------------------------------------------------------------------------------------
# Per-trial stop rule
# --------------------------------------------------------------------------------------------


def test_should_stop_hand_computed():
    cm = CostModel()
    d = diag(Healthy=0.5, Overfitting=0.5)
    dec = cm.decide(d, epochs_done=50, epochs_max=100)
    # stop: 1*(1-.5) - .5*.5*.5 = .375 ; continue: 10*.5*.5 = 2.5
    assert (dec.cost_stop, dec.cost_continue, dec.stop) == (0.375, 2.5, True)
    assert dec.p_threshold == pytest.approx(1 / (1 + 0.5 * 10.5))
    assert cm.should_stop(d, 50, 100)


def test_never_stops_at_zero_probability_or_without_remaining_budget():
    cm = CostModel()
    for done in (0, 10, 99.5, 100):
        assert not cm.should_stop(diag(Healthy=1.0), done, 100)
    assert not cm.should_stop(diag(Instability=1.0), 100, 100)
    # c_fa = 0 makes any evidence enough, but still not with no budget left.
    free = CostModel(c_fa=0)
    assert free.should_stop(diag(Healthy=0.99, Instability=0.01), 0, 10)
    assert not free.should_stop(diag(Healthy=0.99, Instability=0.01), 10, 10)
    assert not free.should_stop(diag(Healthy=1.0), 0, 10)


def test_should_stop_is_monotone_in_probability_and_remaining_budget():
    cm = CostModel()
    ps = np.linspace(0, 1, 41)
    dones = np.linspace(0, 100, 21)
    grid = np.array(
        [[cm.should_stop(diag(Healthy=1 - p, Instability=p), d, 100) for p in ps] for d in dones]
    )
    # Along p (columns): once stop, always stop. Along epochs_done (rows): once continue, always.
    assert np.all(np.diff(grid.astype(int), axis=1) >= 0)
    assert np.all(np.diff(grid.astype(int), axis=0) <= 0)
    assert grid[0].any() and not grid[-1].any()


def test_should_stop_agrees_with_stop_threshold():
    cm = CostModel(c_fa=2, c_md=8, c_lead=-1)
    for done in (0, 25, 60, 90):
        t = cm.stop_threshold(done, 100)
        r = (100 - done) / 100
        assert t == pytest.approx(2 / (2 + r * 9))
        assert cm.should_stop(diag(Healthy=1 - t - 1e-6, Instability=t + 1e-6), done, 100)
        assert not cm.should_stop(diag(Healthy=1 - t + 1e-6, Instability=t - 1e-6), done, 100)
    assert cm.stop_threshold(100, 100) == 1.0


def test_prune_on_selects_the_labels_that_count():
    cm = CostModel()
    d = diag(Healthy=0.1, Forgetting=0.9)
    assert not cm.should_stop(d, 0, 10)  # Forgetting is not in the default prune_on
    assert cm.should_stop(d, 0, 10, prune_on=(FORGETTING,))
    assert CostModel.anomaly_probability(diag(Instability=0.3, Overfitting=0.4)) == 0.7
    assert (
        CostModel.anomaly_probability(
            diag(Instability=0.3, Overfitting=0.4), prune_on=[OVERFITTING]
        )
        == 0.4
    )


def test_vacuity_discounts_probability_to_evidence_backed_belief():
    cm = CostModel()
    uniform = {c: 0.2 for c in KNOWN_LABELS}
    # Total ignorance (u = 1, uniform p): no belief, no stop, even at the start of the budget.
    assert cm.anomaly_probability(SimpleNamespace(probs=uniform, vacuity=1.0)) == 0.0
    assert not cm.should_stop(SimpleNamespace(probs=uniform, vacuity=1.0), 0, 100)
    # u = 0.5 leaves p_c - u/K = 0.5 - 0.1 of belief in Instability.
    d = diag(vacuity=0.5, Healthy=0.5, Instability=0.5)
    assert cm.anomaly_probability(d) == pytest.approx(0.4)
    # Unknown in prune_on: its mass is the vacuity.
    assert cm.anomaly_probability(
        SimpleNamespace(probs=uniform, vacuity=0.6), prune_on=[UNKNOWN]
    ) == pytest.approx(0.6)


def test_diagnosis_may_be_a_mapping_read_back_from_storage():
    stored = {
        "probs": {HEALTHY: 0.05, INSTABILITY: 0.95},
        "vacuity": 0.0,
        "label": INSTABILITY,
        "alert": INSTABILITY,
    }
    assert CostModel().should_stop(stored, 3, 30)


@pytest.mark.parametrize(
    "d, done, total, exc, match",
    [
        (diag(Healthy=1.0), 11, 10, ValueError, "exceeds"),
        (diag(Healthy=1.0), -1, 10, ValueError, ">= 0"),
        (diag(Healthy=1.0), 0, 0, ValueError, "> 0"),
        (diag(Healthy=1.0), float("nan"), 10, ValueError, "finite"),
        (diag(Instabilty=1.0), 0, 10, ValueError, "unknown label"),
        (diag(Healthy=1.5), 0, 10, ValueError, r"\[0, 1\]"),
        (diag(vacuity=2.0, Healthy=1.0), 0, 10, ValueError, "vacuity"),
        (SimpleNamespace(vacuity=0.0), 0, 10, TypeError, "probs"),
        ({"probs": {HEALTHY: 1.0}}, 0, 10, TypeError, "vacuity"),
        (SimpleNamespace(probs=[0.2], vacuity=0.0), 0, 10, TypeError, "mapping"),
    ],
)
def test_should_stop_validates_inputs(d, done, total, exc, match):
    with pytest.raises(exc, match=match):
        CostModel().should_stop(d, done, total)


@pytest.mark.parametrize("prune_on", [(), ("Healthy",), ("Instabilty",)])
def test_prune_on_is_validated(prune_on):
    with pytest.raises(ValueError):
        CostModel().should_stop(diag(Instability=1.0), 0, 10, prune_on=prune_on)


def test_standing_raises_the_bar_for_stopping_a_leading_trial():
    # Issue 25: stopping risks the trial's standing among its peers at the same step.
    from types import SimpleNamespace as D

    cm = CostModel()
    d = D(probs={"Healthy": 0.5, "Overfitting": 0.5}, vacuity=0.0)
    assert cm.decide(d, 50, 100).stop and cm.decide(d, 50, 100, standing=0.0).stop
    leader = cm.decide(d, 50, 100, standing=1.0)
    assert not leader.stop and leader.standing == 1.0
    # The threshold grows monotonically with standing, and c_best = 0 ignores it.
    ts = [cm.stop_threshold(50, 100, standing=s) for s in (0.0, 0.5, 1.0)]
    assert ts[0] < ts[1] < ts[2]
    assert CostModel(c_best=0.0).stop_threshold(50, 100, standing=1.0) == cm.stop_threshold(50, 100)
    with pytest.raises(ValueError, match="standing"):
        cm.decide(d, 50, 100, standing=1.5)
    with pytest.raises(ValueError, match="c_best"):
        CostModel(c_best=-1.0)


@pytest.mark.parametrize("maximize, value, others, expected", [
    (True, 0.9, [0.1, 0.5, 0.95], 2 / 3),            # accuracy: higher beats lower
    (False, 0.9, [0.1, 0.5, 0.95], 1 / 3),           # loss: lower beats higher
    (True, 0.5, [0.5, 0.5], 0.0),                    # a tie is not beaten
    (False, 0.5, [0.5, 0.7], 0.5),
    (True, 0.1, [float("nan"), 0.2], 0.5),           # a diverged rival is beaten by any number
    (False, 0.1, [float("nan"), 0.2], 1.0),
    (True, float("nan"), [0.0, float("nan")], 0.0),  # a diverged trial beats nothing
    (False, float("-inf"), [0.0, float("inf")], 1.0),
])
def test_standing_is_the_share_of_rivals_beaten_in_the_study_direction(maximize, value, others,
                                                                       expected):
    assert standing(value, others, maximize) == pytest.approx(expected)


def test_standing_without_rivals_is_unknown_and_reproduces_the_old_decision():
    assert standing(0.9, [], maximize=True) is None
    assert standing(0.9, iter(()), maximize=False) is None
    with pytest.raises(TypeError, match="maximize"):
        standing(0.9, [0.1], maximize="max")
    cm = CostModel()
    d = diag(Healthy=0.5, Overfitting=0.5)
    old = CostModel(c_best=0.0).decide(d, 50, 100)        # no standing term at all
    assert cm.decide(d, 50, 100, standing=standing(0.9, [], True)) == old


@pytest.mark.parametrize("maximize", [True, False])
def test_standing_so_far_weighs_bests_up_to_the_step_and_ignores_diverged_reports(maximize):
    sign = 1.0 if maximize else -1.0   # the same race, as accuracies or as losses
    nan = float("nan")
    curve = {0: sign * 0.2, 1: sign * 0.6, 2: nan}                 # diverged after its best
    rivals = [{0: sign * 0.5, 1: nan},                             # best 0.5, then diverged
              {0: sign * 0.1, 2: sign * 0.4, 5: sign * 0.9},       # 0.9 comes after step 2
              {0: nan},                                            # never a number: beaten
              {3: sign * 0.99}]                                    # not reported by step 2
    assert standing_so_far(curve, rivals, maximize) == 1.0
    assert standing_so_far({0: nan}, rivals[:1], maximize) == 0.0  # NaN only: beats nothing
    assert standing_so_far({}, rivals, maximize) is None
