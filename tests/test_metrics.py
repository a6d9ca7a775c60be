"""Hand-computed checks of the streaming metrics (Appendix E.2) and the run-level bootstrap."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from core_models.metrics import (
    ANOMALOUS_KNOWN,
    RunPrediction,
    alert_profile,
    anomaly_scores,
    augrc,
    bootstrap_ci,
    class_alert,
    diagnostic_cost,
    evaluate_alerts,
    event_time_auprc,
    event_time_auprc_by_label,
    false_alarm_rate,
    first_alert,
    lead_times,
    macro_f1,
    median_lead,
    paired_bootstrap_ci,
    per_class_auprc,
    risk_coverage_curve,
    selective_predictions,
    threshold_at_far,
    truncate_before_fire,
    unknown_auroc,
)
from data_factory.labels import (
    CONCEPT_BIAS,
    FORGETTING,
    HEALTHY,
    INSTABILITY,
    KNOWN_LABELS,
    OVERFITTING,
    UNKNOWN,
)


def make_run(
    label: str,
    scores,
    *,
    cls: str | None = None,
    onset: float | None = None,
    fire: float | None = None,
    vacuity=None,
    run_id: str | None = None,
    **kw,
) -> RunPrediction:
    """One diagnosis per epoch; ``scores[t]`` is the probability of ``cls`` (rest on Healthy)."""
    s = np.asarray(scores, dtype=float)
    n = s.size
    cls = cls or (label if label in KNOWN_LABELS and label != HEALTHY else INSTABILITY)
    probs = np.zeros((n, len(KNOWN_LABELS)))
    probs[:, KNOWN_LABELS.index(cls)] = s
    probs[:, KNOWN_LABELS.index(HEALTHY)] += 1 - s
    vac = np.zeros(n) if vacuity is None else np.asarray(vacuity, dtype=float)
    return RunPrediction(
        run_id or f"{label}-{id(s)}",
        label,
        steps=np.arange(n) * 100,
        epochs=np.arange(n, dtype=float),
        probs=probs,
        vacuity=vac,
        onset_epoch=onset,
        fire_epoch=fire,
        **kw,
    )


# --------------------------------------------------------------------------------------------
# RunPrediction
# --------------------------------------------------------------------------------------------


def test_event_labels_are_derived_from_onset():
    r = make_run(OVERFITTING, [0.1] * 5, onset=2)
    assert list(r.event_labels) == [HEALTHY, HEALTHY, OVERFITTING, OVERFITTING, OVERFITTING]
    h = make_run(HEALTHY, [0.1] * 3)
    assert set(h.event_labels) == {HEALTHY}


def test_event_labels_from_onset_step_take_precedence():
    p = np.tile([1.0, 0, 0, 0, 0], (3, 1))
    r = RunPrediction("r", FORGETTING, [0, 10, 20], [0, 1, 2], p, [0, 0, 0], onset_step=10)
    assert list(r.event_labels) == [HEALTHY, FORGETTING, FORGETTING]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"label": "Instabilty"}, "not one of"),
        ({"probs": np.ones((3, 4)) / 4}, "shape"),
        ({"vacuity": [0.1, 0.2]}, "same length"),
        ({"probs": np.full((3, 5), np.nan)}, "finite"),
        ({"vacuity": [0.1, 1.5, 0.0]}, r"\[0, 1\]"),
        ({"epochs": [2.0, 1.0, 3.0]}, "non-decreasing"),
        ({"label": INSTABILITY}, "onset"),
        ({"event_labels": [HEALTHY, "Bogus", HEALTHY]}, "unknown event labels"),
    ],
)
def test_run_prediction_validates(kwargs, match):
    base = {
        "run_id": "r",
        "label": HEALTHY,
        "steps": [0, 1, 2],
        "epochs": [0.0, 1.0, 2.0],
        "probs": np.tile([1.0, 0, 0, 0, 0], (3, 1)),
        "vacuity": [0.0, 0.0, 0.0],
    }
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        RunPrediction(**base)


def test_from_diagnoses_maps_probability_dicts_to_head_order():
    class D:
        def __init__(self, step, epoch, probs, vacuity):
            self.step, self.epoch, self.probs, self.vacuity = step, epoch, probs, vacuity

    ds = [D(10, 0.5, {HEALTHY: 0.7, CONCEPT_BIAS: 0.3}, 0.2), D(20, 1.0, {FORGETTING: 1.0}, 0.1)]
    r = RunPrediction.from_diagnoses("r", FORGETTING, ds, onset_step=20, fire_epoch=1.0)
    assert r.probs[0, KNOWN_LABELS.index(CONCEPT_BIAS)] == 0.3
    assert r.probs[1, KNOWN_LABELS.index(FORGETTING)] == 1.0
    assert list(r.event_labels) == [HEALTHY, FORGETTING]
    assert r.fire_epoch == 1.0


# --------------------------------------------------------------------------------------------
# Event-time AUPRC
# --------------------------------------------------------------------------------------------


def test_perfect_detector_has_auprc_one():
    runs = [make_run(INSTABILITY, [0.0] * 4 + [1.0] * 6, onset=4) for _ in range(3)]
    runs += [make_run(HEALTHY, [0.0] * 10) for _ in range(3)]
    assert event_time_auprc(runs) == 1.0
    assert event_time_auprc(runs, score="max_anomalous") == 1.0
    assert per_class_auprc(runs)[INSTABILITY] == 1.0


def test_random_detector_auprc_is_close_to_prevalence():
    rng = np.random.default_rng(0)
    runs = [make_run(OVERFITTING, rng.uniform(size=200), onset=150) for _ in range(20)]
    runs += [make_run(HEALTHY, rng.uniform(size=200)) for _ in range(20)]
    prevalence = (20 * 50) / (40 * 200)
    assert event_time_auprc(runs) == pytest.approx(prevalence, abs=0.03)


def test_inverted_or_constant_detector_scores_the_prevalence():
    # Average precision bottoms out at the prevalence (the all-accepting threshold).
    inverted = [make_run(INSTABILITY, [1.0] * 6 + [0.0] * 2, onset=6)]
    constant = [make_run(INSTABILITY, [0.5] * 8, onset=6)]
    assert event_time_auprc(inverted) == pytest.approx(0.25)
    assert event_time_auprc(constant) == pytest.approx(0.25)


def test_auprc_undefined_without_positives():
    with pytest.raises(ValueError, match="no anomalous step"):
        event_time_auprc([make_run(HEALTHY, [0.2, 0.3])])


def test_per_class_auprc_one_vs_rest_and_missing_class_is_nan():
    a = make_run(INSTABILITY, [0, 0, 0.9, 0.9], onset=2)
    b = make_run(OVERFITTING, [0, 0, 0.8, 0.8], onset=2)
    res = per_class_auprc([a, b])
    assert res[INSTABILITY] == 1.0 and res[OVERFITTING] == 1.0
    assert math.isnan(res[FORGETTING])
    with pytest.raises(ValueError, match="probability column"):
        per_class_auprc([a], classes=[UNKNOWN])


def test_auprc_by_label_finds_the_anomaly_a_detector_is_blind_to():
    rng = np.random.default_rng(0)
    # Sees instability perfectly, scores forgetting and the novel family at random.
    runs = [make_run(INSTABILITY, np.r_[rng.uniform(0, 0.5, 50), np.ones(50)], onset=50)
            for _ in range(10)]
    runs += [make_run(FORGETTING, rng.uniform(0, 0.5, 100), onset=50) for _ in range(10)]
    runs += [make_run(UNKNOWN, rng.uniform(0, 0.5, 100), onset=50) for _ in range(5)]
    runs += [make_run(HEALTHY, rng.uniform(0, 0.5, 100)) for _ in range(20)]
    by_label = event_time_auprc_by_label(runs)
    assert set(by_label) == {INSTABILITY, FORGETTING, UNKNOWN}      # absent labels left out
    healthy_steps = 20 * 100 + 25 * 50
    assert by_label[INSTABILITY] == (1.0, pytest.approx(500 / (500 + healthy_steps)))
    for label, n in ((FORGETTING, 500), (UNKNOWN, 250)):
        auprc, share = by_label[label]
        assert share == pytest.approx(n / (n + healthy_steps))
        assert auprc == pytest.approx(share, abs=0.05)              # random: about its share
    assert event_time_auprc(runs) > by_label[FORGETTING][0]       # the pooled number hides it


def test_anomaly_score_kinds():
    p = np.array([[0.4, 0.1, 0.3, 0.2, 0.0]])
    r = RunPrediction("r", HEALTHY, [0], [0], p, [0])
    assert anomaly_scores(r)[0] == pytest.approx(0.6)
    assert anomaly_scores(r, "max_anomalous")[0] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        anomaly_scores(r, "mean")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Alerts, FAR, lead
# --------------------------------------------------------------------------------------------


def test_first_alert_needs_three_consecutive_and_abstention_breaks_streaks():
    assert first_alert([0.95, 0.95, 0.1, 0.95, 0.95, 0.95], 0.9) == 5
    assert first_alert([0.95, 0.95], 0.9) is None
    assert first_alert([0.9, 0.9, 0.9], 0.9) == 2  # ">=": exactly at threshold fires
    assert first_alert([0.95] * 4, 0.9, abstained=[False, True, False, False]) is None
    assert first_alert([0.95, np.nan, 0.95, 0.95, 0.95], 0.9) == 4
    assert first_alert([0.95] * 3, np.inf) is None
    assert first_alert([0.95], 0.9, consecutive=1) == 0
    with pytest.raises(ValueError):
        first_alert([0.5], float("nan"))
    with pytest.raises(ValueError):
        first_alert([0.5], 0.1, consecutive=0)


def test_alert_profile_matches_first_alert_for_every_threshold():
    rng = np.random.default_rng(1)
    s = rng.uniform(size=30)
    r = make_run(HEALTHY, s)
    m, epochs = alert_profile(r)
    assert np.all(np.diff(m) >= 0)
    for t in np.r_[s, 0.0, 0.5, 1.0]:
        i = first_alert(anomaly_scores(r), t)
        j = int(np.searchsorted(m, t))
        assert (i is None) == (j == m.size)
        if i is not None:
            assert epochs[j] == r.epochs[i]


def test_class_alert_follows_e1_rule():
    p = np.zeros((6, 5))
    p[:, 0] = 1.0
    p[1:4, KNOWN_LABELS.index(OVERFITTING)] = 0.95  # 3 in a row at steps 1..3
    p[1:4, 0] = 0.05
    p[3:6, KNOWN_LABELS.index(INSTABILITY)] = 0.0
    r = RunPrediction("r", OVERFITTING, range(6), range(6), p, [0.1] * 6, onset_step=1)
    assert class_alert(r) == (OVERFITTING, 3)
    assert class_alert(r, threshold={c: 0.99 for c in ANOMALOUS_KNOWN}) is None
    assert class_alert(r, vacuity_threshold=0.05) is None  # every step abstains


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_detector_firing_k_epochs_before_the_rule_has_lead_k(k):
    # Score jumps at epoch 5, so the third consecutive step confirms at epoch 7.
    scores = [0.0] * 5 + [0.99] * 15
    runs = [make_run(INSTABILITY, scores, onset=4, fire=7 + k) for _ in range(3)]
    assert lead_times(runs, 0.9).tolist() == [float(k)] * 3
    assert median_lead(runs, 0.9) == k
    # Against onset (epoch 4) the alert comes 3 epochs after: lead -3.
    assert median_lead(runs, 0.9, reference="onset") == -3.0


def test_lagging_detector_has_negative_lead_and_missed_runs_are_not_in_the_median():
    late = make_run(INSTABILITY, [0.0] * 10 + [0.99] * 3, onset=2, fire=8)  # confirms at 12
    early = make_run(INSTABILITY, [0.99] * 5, onset=0, fire=6)  # confirms at 2
    missed = make_run(INSTABILITY, [0.0] * 10, onset=2, fire=5)
    s = evaluate_alerts([late, early, missed], 0.9)
    assert s.n_detected == 2 and s.n_missed == 1 and s.n_anomalous == 3
    assert sorted(s.leads.tolist()) == [-4.0, 4.0]
    assert s.median_lead == 0.0
    assert s.detection_rate == pytest.approx(2 / 3)
    assert math.isnan(s.far)
    with pytest.raises(ValueError):
        lead_times([late], 0.9, reference="rule")  # type: ignore[arg-type]


def test_median_lead_is_nan_without_detections():
    assert math.isnan(median_lead([make_run(INSTABILITY, [0.0] * 5, onset=1, fire=3)], 0.5))


def test_far_is_the_fraction_of_healthy_runs_with_any_alert():
    runs = [
        make_run(HEALTHY, [0.1, 0.95, 0.95, 0.95, 0.1]),  # alerts
        make_run(HEALTHY, [0.1, 0.99, 0.1, 0.99, 0.1]),  # isolated spikes: no alert
        make_run(HEALTHY, [0.1] * 5),
        make_run(HEALTHY, [0.1] * 5),
        make_run(INSTABILITY, [0.99] * 5, onset=0, fire=3),  # anomalous runs never count
    ]
    assert false_alarm_rate(runs, 0.9) == 0.25
    s = evaluate_alerts(runs, 0.9)
    assert s.n_false_alarms == 1 and s.n_healthy == 4


def test_threshold_at_far_picks_the_lowest_admissible_operating_point():
    # 20 healthy runs with constant scores 1/64 .. 20/64 (exact in binary, so 1 - (1 - s) == s):
    # run i alerts iff threshold <= its score.
    healthy = [make_run(HEALTHY, [(i + 1) / 64] * 6) for i in range(20)]
    anomalous = [make_run(OVERFITTING, [0.0] * 3 + [19.5 / 64] * 6, onset=3, fire=8)]
    runs = healthy + anomalous
    t = threshold_at_far(runs, far=0.05)  # 5 % of 20 = 1 healthy run may alert
    assert 19 / 64 < t <= 20 / 64
    assert t == np.nextafter(19 / 64, 1.0)
    assert false_alarm_rate(runs, t) == 0.05
    # Lowest: any lower threshold breaks the FAR budget...
    assert false_alarm_rate(runs, 19 / 64) > 0.05
    # ...and the anomaly sitting between the 2nd and 1st healthy scores is detected.
    assert evaluate_alerts(runs, t).n_detected == 1
    # A zero budget silences every healthy run; a full budget lets all alert.
    assert false_alarm_rate(runs, threshold_at_far(runs, far=0.0)) == 0.0
    assert false_alarm_rate(runs, threshold_at_far(runs, far=1.0)) == 1.0
    with pytest.raises(ValueError, match="no Healthy"):
        threshold_at_far(anomalous)


def test_threshold_at_far_respects_the_consecutive_rule():
    spiky = make_run(HEALTHY, [0.0, 0.99, 0.0, 0.99, 0.0])  # single spikes never confirm
    steady = [make_run(HEALTHY, [0.25] * 5) for _ in range(19)]
    t = threshold_at_far([spiky] + steady, far=0.0)
    assert t == np.nextafter(0.25, 1.0)


def test_recorded_alerts_are_used_when_threshold_is_none():
    a = make_run(INSTABILITY, [0.0] * 5, onset=1, fire=4, alert_epoch=2.0, alert_step=200)
    h = make_run(HEALTHY, [0.0] * 5, alert_epoch=3.0)
    s = evaluate_alerts([a, h], None)
    assert s.leads.tolist() == [2.0] and s.onset_leads.tolist() == [-1.0]
    assert s.n_false_alarms == 1
    assert s.alert_epochs == {a.run_id: 2.0, h.run_id: 3.0}


def test_truncate_before_fire_keeps_only_diagnoses_delta_epochs_before_the_rule():
    r = make_run(INSTABILITY, [0.0, 0.0, 0.9, 0.9, 0.9, 0.9], onset=2, fire=5, alert_epoch=4.0)
    h = make_run(HEALTHY, [0.0] * 6)
    cut = truncate_before_fire([r, h], 1.0)
    assert cut[0].epochs.tolist() == [0, 1, 2, 3, 4]
    assert cut[0].alert_epoch == 4.0
    cut2 = truncate_before_fire([r, h], 2.0)
    assert cut2[0].epochs.max() == 3 and cut2[0].alert_epoch is None
    assert list(cut2[0].event_labels) == [HEALTHY, HEALTHY, INSTABILITY, INSTABILITY]
    assert cut2[1] is h
    with pytest.raises(ValueError):
        truncate_before_fire([r], -1.0)


# --------------------------------------------------------------------------------------------
# Macro-F1, risk-coverage, Unknown AUROC, cost
# --------------------------------------------------------------------------------------------


def test_macro_f1_step_level_matches_sklearn_and_excludes_healthy_and_unknown():
    a = make_run(INSTABILITY, [0.0, 0.0, 0.9, 0.9], onset=2)  # both post-onset steps right
    b = make_run(OVERFITTING, [0.0, 0.0, 0.4, 0.9], onset=2)  # one post-onset step missed
    u = make_run(UNKNOWN, [0.9] * 4, cls=INSTABILITY, onset=0)  # excluded (open set)
    got = macro_f1([a, b, u])
    y = [HEALTHY] * 2 + [INSTABILITY] * 2 + [HEALTHY] * 2 + [OVERFITTING] * 2
    pred = [HEALTHY] * 2 + [INSTABILITY] * 2 + [HEALTHY] * 3 + [OVERFITTING]
    want = f1_score(y, pred, labels=[OVERFITTING, INSTABILITY], average="macro")
    assert got == pytest.approx(want)
    assert got == pytest.approx((1.0 + 2 / 3) / 2)


def test_macro_f1_abstention_counts_as_a_miss():
    a = make_run(INSTABILITY, [0.9, 0.9], onset=0, vacuity=[0.1, 0.8])
    assert macro_f1([a]) == 1.0
    assert macro_f1([a], vacuity_threshold=0.35) == pytest.approx(2 / 3)


def test_macro_f1_run_level_uses_the_first_class_alert():
    a = make_run(INSTABILITY, [0.95] * 4, onset=0)
    b = make_run(OVERFITTING, [0.95] * 4, onset=0)
    c = make_run(FORGETTING, [0.5] * 4, onset=0)  # never alerts -> predicted Healthy
    h = make_run(HEALTHY, [0.0] * 4)
    got = macro_f1([a, b, c, h], level="run")
    assert got == pytest.approx((1 + 1 + 0) / 3)
    with pytest.raises(ValueError):
        macro_f1([a], level="epoch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="known classes"):
        macro_f1([a], labels=[UNKNOWN])


def test_risk_coverage_curve_hand_computed_with_ties():
    rc = risk_coverage_curve([True, False, True, False], [0.9, 0.9, 0.5, 0.1])
    assert rc.coverage.tolist() == [0.0, 0.5, 0.75, 1.0]
    assert rc.generalized_risk.tolist() == [0.0, 0.25, 0.25, 0.5]
    assert rc.selective_risk[1:].tolist() == pytest.approx([0.5, 1 / 3, 0.5])
    assert rc.risk_at_coverage(0.6) == pytest.approx(1 / 3)
    # trapezoids: 0.5*0.5*0.25 + 0.25*0.25 + 0.25*(0.25+0.5)/2
    assert augrc([True, False, True, False], [0.9, 0.9, 0.5, 0.1]) == pytest.approx(0.21875)


def test_augrc_perfect_ranking_is_half_error_rate_squared():
    correct = np.r_[np.ones(70, bool), np.zeros(30, bool)]
    conf = np.linspace(1, 0, 100)
    assert augrc(correct, conf) == pytest.approx(0.5 * 0.3**2)
    assert augrc(np.ones(10, bool), np.arange(10)) == 0.0
    # the worst ranking (every error first) is err - err²/2
    assert augrc(correct, -conf) == pytest.approx(0.3 - 0.5 * 0.3**2)


def test_augrc_random_ranking_is_about_half_the_error_rate():
    rng = np.random.default_rng(3)
    correct = rng.uniform(size=20000) > 0.4
    assert augrc(correct, rng.uniform(size=20000)) == pytest.approx(0.5 * 0.4, abs=0.01)


def test_risk_coverage_input_errors():
    with pytest.raises(ValueError):
        risk_coverage_curve([True], [0.1, 0.2])
    with pytest.raises(ValueError):
        risk_coverage_curve([], [])
    with pytest.raises(ValueError):
        risk_coverage_curve([True], [np.nan])


def test_selective_predictions_from_runs():
    a = make_run(INSTABILITY, [0.9, 0.9], onset=0, vacuity=[0.1, 0.3])
    u = make_run(UNKNOWN, [0.9, 0.9], cls=INSTABILITY, onset=0, vacuity=[0.9, 0.8])
    ok, conf = selective_predictions([a, u])
    assert ok.tolist() == [True, True, False, False]  # Unknown steps are never correct
    assert conf.tolist() == pytest.approx([0.9, 0.7, 0.1, 0.2])
    # Abstaining on high vacuity removes all errors here: a perfect ranking.
    assert augrc(ok, conf) == pytest.approx(0.5 * 0.5**2)
    ok2, _ = selective_predictions([a, u], labels=ANOMALOUS_KNOWN)
    assert ok2.tolist() == [True, True]
    _, conf3 = selective_predictions([a], confidence="max_prob")
    assert conf3.tolist() == pytest.approx([0.9, 0.9])


def test_unknown_auroc_on_separable_vacuities():
    known = [make_run(INSTABILITY, [0.9] * 4, onset=0, vacuity=[0.1, 0.2, 0.15, 0.3])]
    known += [make_run(HEALTHY, [0.0] * 4, vacuity=[0.05, 0.1, 0.2, 0.25])]
    novel = [make_run(UNKNOWN, [0.5] * 4, onset=0, vacuity=[0.6, 0.7, 0.8, 0.9])]
    assert unknown_auroc(known + novel) == 1.0
    assert unknown_auroc(known + novel, level="run") == 1.0
    flipped = [make_run(UNKNOWN, [0.5] * 4, onset=0, vacuity=[0.0] * 4)]
    assert unknown_auroc(known + flipped) < 0.2
    with pytest.raises(ValueError, match="both"):
        unknown_auroc(known)


def test_unknown_auroc_against_known_anomalies_ignores_healthy_steps():
    # Novel runs are more vacuous than healthy training but exactly as vacuous as a known
    # anomaly: against every known step they look separable, against known anomalies (App. H)
    # they are a coin flip.
    healthy = [make_run(HEALTHY, [0.0] * 4, vacuity=[0.1] * 4) for _ in range(3)]
    known = [make_run(OVERFITTING, [0.9] * 4, onset=0, vacuity=[0.6, 0.7, 0.6, 0.7])]
    novel = [make_run(UNKNOWN, [0.5] * 4, onset=0, vacuity=[0.7, 0.6, 0.7, 0.6])]
    runs = healthy + known + novel
    # steps: 4 positives vs 12 healthy (all below) + 4 known (2 ties at 0.6, 2 at 0.7) → 0.875
    assert unknown_auroc(runs) == pytest.approx((4 * 12 + 8) / (4 * 16))
    assert unknown_auroc(runs, negatives="known_anomalies") == pytest.approx(0.5)
    assert unknown_auroc(runs, level="run", negatives="known_anomalies") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both"):
        unknown_auroc(healthy + novel, negatives="known_anomalies")
    with pytest.raises(ValueError, match="negatives"):
        unknown_auroc(runs, negatives="healthy")


def test_alert_summary_records_the_alert_step():
    run = make_run(INSTABILITY, [0.0, 0.95, 0.95, 0.95, 0.2], onset=1, fire=4)
    s = evaluate_alerts([run], 0.9)
    assert s.alert_steps[run.run_id] == 300 and s.alert_epochs[run.run_id] == 3.0
    assert evaluate_alerts([run], 0.99).alert_steps[run.run_id] is None


def test_diagnostic_cost_appendix_i():
    assert diagnostic_cost(5, 3, [6.0, 2.0]) == 5 + 30 - 4
    assert diagnostic_cost(0, 0, [-2.0]) == 1.0  # lagging detections cost
    assert diagnostic_cost(1, 1, 4.0, c_fa=2, c_md=3, c_lead=-1) == 1.0


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def _mixed_runs(n: int, seed: int) -> list[RunPrediction]:
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n):
        if i % 2:
            s = np.r_[rng.uniform(0, 0.5, 10), rng.uniform(0.3, 1.0, 10)]
            runs.append(make_run(INSTABILITY, s, onset=10, fire=14, run_id=f"a{i}"))
        else:
            runs.append(make_run(HEALTHY, rng.uniform(0, 0.6, 20), run_id=f"h{i}"))
    return runs


def test_bca_interval_contains_the_point_estimate():
    runs = _mixed_runs(30, 0)
    ci = bootstrap_ci(event_time_auprc, runs, n_resamples=200, seed=1)
    assert ci.method == "BCa" and ci.note == ""
    assert ci.estimate == pytest.approx(event_time_auprc(runs))
    assert ci.low < ci.estimate < ci.high <= 1.0
    assert ci.half_width > 0
    # Reproducible with a seed.
    assert bootstrap_ci(event_time_auprc, runs, n_resamples=200, seed=1) == ci


def test_bootstrap_resamples_runs_not_steps():
    runs = _mixed_runs(10, 2)
    seen = []

    def metric(rs):
        seen.append(len(rs))
        assert all(isinstance(r, RunPrediction) for r in rs)
        return float(np.mean([r.is_anomalous for r in rs]))

    bootstrap_ci(metric, runs, n_resamples=20, method="percentile")
    assert set(seen) == {10}


def test_paired_bootstrap_is_the_difference_on_the_same_resamples():
    runs = _mixed_runs(30, 5)
    # b: the same scores with noise on the healthy runs — worse, by a margin the two separate
    # intervals overlap on but the paired one resolves.
    rng = np.random.default_rng(6)
    worse = [dataclasses.replace(r, probs=_with_score(r, np.clip(
        1 - r.probs[:, 0] + (0 if r.is_anomalous else rng.uniform(0, 0.25, len(r.steps))), 0, 1)))
        for r in runs]
    diff = paired_bootstrap_ci(event_time_auprc, runs, worse[::-1], n_resamples=300, seed=1)
    assert diff.estimate == pytest.approx(event_time_auprc(runs) - event_time_auprc(worse))
    assert 0 < diff.low <= diff.estimate <= diff.high
    a = bootstrap_ci(event_time_auprc, runs, n_resamples=300, seed=1)
    b = bootstrap_ci(event_time_auprc, worse, n_resamples=300, seed=1)
    assert diff.high - diff.low < (a.high - a.low) + (b.high - b.low)
    same = paired_bootstrap_ci(event_time_auprc, runs, runs, n_resamples=50)
    assert same.estimate == same.low == same.high == 0.0
    with pytest.raises(ValueError, match="same runs"):
        paired_bootstrap_ci(event_time_auprc, runs, runs[1:], n_resamples=10)


def _with_score(run: RunPrediction, score: np.ndarray) -> np.ndarray:
    """Probabilities shaped like ``run``'s with ``score`` as the anomalous mass (1 − p_Healthy)."""
    probs = np.zeros_like(run.probs)
    probs[:, 0], probs[:, 1] = 1 - score, score
    return probs


def test_bootstrap_constant_metric_falls_back_to_percentile():
    ci = bootstrap_ci(lambda rs: 1.0, _mixed_runs(6, 3), n_resamples=50)
    assert ci.method == "percentile" and "BCa undefined" in ci.note
    assert ci.low == ci.high == ci.estimate == 1.0


def test_bootstrap_survives_resamples_where_the_metric_is_undefined():
    # Two Unknown runs among ten: many resamples have none, where AUROC raises.
    runs = _mixed_runs(8, 4)
    runs += [
        make_run(UNKNOWN, [0.5] * 20, onset=5, vacuity=np.full(20, 0.9), run_id=f"u{i}")
        for i in range(2)
    ]
    ci = bootstrap_ci(unknown_auroc, runs, n_resamples=100, seed=0)
    assert ci.n_failed > 0
    assert ci.method == "percentile" and "undefined on" in ci.note
    assert ci.low <= ci.estimate <= ci.high


def test_bootstrap_undefined_estimate_and_bad_arguments():
    runs = [make_run(HEALTHY, [0.1] * 3) for _ in range(3)]
    ci = bootstrap_ci(event_time_auprc, runs, n_resamples=10)
    assert ci.method == "none" and math.isnan(ci.low)
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_ci(event_time_auprc, runs[:1])
    with pytest.raises(ValueError):
        bootstrap_ci(event_time_auprc, runs, confidence=1.5)
    with pytest.raises(ValueError):
        bootstrap_ci(event_time_auprc, runs, method="studentized")  # type: ignore[arg-type]


def test_bootstrap_metric_undefined_on_every_resample_gives_no_interval():
    # Defined only on the full set of distinct runs: a resample with replacement of 10 runs
    # repeats one (all distinct has probability 10!/10^10), so every resample is undefined.
    runs = [make_run(HEALTHY, [0.1] * 3, run_id=f"h{i}") for i in range(10)]

    def all_distinct(rs):
        if len({r.run_id for r in rs}) < len(runs):
            raise ValueError("a run is missing")
        return 1.0

    ci = bootstrap_ci(all_distinct, runs, n_resamples=20, seed=0)
    assert ci.estimate == 1.0 and math.isnan(ci.low) and math.isnan(ci.high)
    assert ci.method == "none" and ci.note == "metric undefined on every resample"
    assert ci.n_resamples == 20 and ci.n_failed == 20


def test_bootstrap_of_lead_at_fixed_far_threshold():
    runs = _mixed_runs(20, 5)
    t = threshold_at_far(runs, far=0.1)
    ci = bootstrap_ci(lambda rs: median_lead(rs, t), runs, n_resamples=100, seed=2)
    assert ci.low <= ci.estimate <= ci.high


def test_threshold_at_far_can_budget_false_alarms_over_all_runs():
    # Table 18 reading: 5 % of *all* runs. 20 healthy + 20 anomalous runs -> 2 false alarms.
    healthy = [make_run(HEALTHY, [(i + 1) / 64] * 6) for i in range(20)]
    anomalous = [make_run(INSTABILITY, [0.5] * 6, onset=0, fire=4) for _ in range(20)]
    runs = healthy + anomalous
    t = threshold_at_far(runs, far=0.05, denominator="all")
    s = evaluate_alerts(runs, t)
    assert s.n_false_alarms == 2 and s.false_alarms_per_run == 0.05 and s.far == 0.1
    with pytest.raises(ValueError):
        threshold_at_far(runs, denominator="steps")  # type: ignore[arg-type]
