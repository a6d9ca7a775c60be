"""Appendix-A labelers: per-rule known answers, priority, causality, variants, Lyapunov proxy."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from arch.bootstrap import StationaryBootstrap

from data_factory.labelers import (
    PRIORITY_SWAP,
    Floor,
    FunctionalOptimizer,
    LabelConfig,
    LyapunovProbe,
    RunLabel,
    choose_floors,
    concept_bias_rule,
    forgetting_rule,
    frame_event_labels,
    instability_rule,
    label_run,
    label_variants,
    lyapunov_exponent,
    lyapunov_lower_bounds,
    overfitting_rule,
    shortcut_reliance,
    spike_windows,
    truncate_run,
)
from data_factory.labels import (
    CONCEPT_BIAS,
    FORGETTING,
    HEALTHY,
    INSTABILITY,
    OVERFITTING,
    PRIORITY,
    UNKNOWN,
)

SPE = 10  # steps per epoch of the constructed runs


@dataclass
class FakeRun:
    """The RunStore's run contract, built by hand."""

    meta: dict[str, Any]
    steps: pd.DataFrame
    epochs: pd.DataFrame
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def make_run(
    n_epochs: int = 40,
    *,
    train_loss: np.ndarray | None = None,
    val_loss: np.ndarray | None = None,
    train_acc: np.ndarray | float = 0.8,
    val_acc: np.ndarray | float = 0.8,
    step_loss: np.ndarray | None = None,
    lyapunov: np.ndarray | None = None,
    spe: int = SPE,
    arrays: dict[str, Any] | None = None,
    **meta: Any,
) -> FakeRun:
    """A healthy-looking run unless curves are passed in."""
    e = np.arange(n_epochs)
    n_steps = n_epochs * spe
    if train_loss is None:
        train_loss = 2.0 * np.exp(-e / 10) + 0.2
    if val_loss is None:
        val_loss = train_loss + 0.1
    epochs = pd.DataFrame({"epoch": e, "train_loss": train_loss, "val_loss": val_loss,
                           "train_acc": train_acc, "val_acc": val_acc})
    if step_loss is None:
        rng = np.random.default_rng(1)
        step_loss = 2.0 * np.exp(-np.arange(n_steps) / (10 * spe)) + 0.2
        step_loss = step_loss + 0.01 * rng.standard_normal(n_steps)
    steps = pd.DataFrame({"step": np.arange(n_steps), "epoch": np.arange(n_steps) // spe,
                          "loss": step_loss})
    if lyapunov is not None:
        steps["lyapunov"] = lyapunov
    m = {"dataset": "cifar100", "arch": "resnet18", "optimizer": "sgd", "steps_per_epoch": spe,
         "novel": False, "task_switch_epoch": None,
         "intervention": {"kind": "none", "severity": 0.0, "start_step": None}}
    m.update(meta)
    return FakeRun(m, steps, epochs, dict(arrays or {}))


def v_curves(n: int = 40, turn: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Train loss falls linearly; validation loss falls until ``turn`` then rises (a V)."""
    e = np.arange(n)
    train = 1.0 - 0.02 * e
    val = np.where(e < turn, 1.2 - 0.02 * e, 1.2 - 0.02 * turn + 0.03 * (e - turn))
    return train, val


def overfit_run(**kw: Any) -> FakeRun:
    train, val = v_curves()
    return make_run(train_loss=train, val_loss=val, **kw)


def spike_loss(spike_steps: list[int], n_steps: int = 400, seed: int = 0) -> np.ndarray:
    # bounded noise: |z| <= 1.35 between injected spikes, so only the injected ones count
    loss = 2.0 + 0.01 * np.random.default_rng(seed).uniform(-1, 1, n_steps)
    loss[spike_steps] = 5.0
    return loss


# ---------------------------------------------------------------- overfitting


def test_v_shaped_val_fires_at_known_epoch_and_not_before() -> None:
    run = overfit_run()
    r = overfitting_rule(run)
    # Val turns up at epoch 15. The 10-epoch windows starting at e0=12 and e0=13 are the first
    # BY-significant pair; both are known once e0=13's window closes at epoch 22.
    assert r.fired
    assert (r.onset_epoch, r.fire_epoch) == (12, 22)
    assert (r.onset, r.fire_time) == (12 * SPE, 23 * SPE - 1)
    # not before: at every earlier epoch end the causal rule stays silent
    for e in range(r.fire_epoch):
        assert not overfitting_rule(truncate_run(run, (e + 1) * SPE - 1)).fired, e


def test_monotone_val_does_not_overfit() -> None:
    r = overfitting_rule(make_run())
    assert r.applicable and not r.fired
    assert r.evidence["n_candidates"] == 40 - 3 - 10 + 1


def test_overfitting_needs_practical_significance() -> None:
    train, val = v_curves()
    # A gap history that swings by +-1 hides a 0.3 rise: trends are significant, gap is not.
    val = val.copy()
    val[:12] += np.where(np.arange(12) % 2 == 0, 1.0, -1.0)
    r = overfitting_rule(make_run(train_loss=train, val_loss=val))
    assert not r.fired
    assert any(c["p"] < 0.01 for c in r.evidence["candidates"])


def test_overfitting_uses_by_adjustment() -> None:
    from scipy.stats import false_discovery_control

    r = overfitting_rule(overfit_run())
    cands = r.evidence["candidates"]
    p = np.array([c["p"] for c in cands])
    np.testing.assert_allclose([c["p_by_hindsight"] for c in cands],
                               false_discovery_control(p, method="by"))
    assert all(c["p"] == max(c["p_val"], c["p_train"]) for c in cands)


def test_short_run_is_not_applicable() -> None:
    train, val = v_curves(10)
    r = overfitting_rule(make_run(10, train_loss=train, val_loss=val))
    assert not r.applicable and not r.fired


# ---------------------------------------------------------------- instability


def test_spike_windows_scale_with_epoch_length() -> None:
    assert spike_windows(LabelConfig(), 20) == (26, 51)
    assert spike_windows(LabelConfig(), 391) == (500, 1000)  # the paper's own epoch length
    assert spike_windows(LabelConfig(), 2) == (20, 40)  # floors
    assert spike_windows(LabelConfig(spike_window_steps=500, spike_baseline_steps=1000), 20) == (
        500, 1000)


def test_three_spikes_in_window_fire_at_the_third() -> None:
    run = make_run(40, step_loss=spike_loss([100, 105, 110]), spe=10)
    r = instability_rule(run)
    assert r.fired and r.evidence["fired_by"] == "spikes"
    assert (r.onset, r.fire_time) == (100, 110)
    assert (r.onset_epoch, r.fire_epoch) == (10, 11)


@pytest.mark.parametrize("spikes", [[100], [100, 105], [100, 160, 220], [100, 105, 300]])
def test_isolated_spikes_below_count_do_not_fire(spikes: list[int]) -> None:
    r = instability_rule(make_run(40, step_loss=spike_loss(spikes)))
    assert not r.fired
    assert r.evidence["spikes"]["spike_steps"] == spikes  # seen, but too few / too far apart


def test_spread_spikes_fire_with_the_papers_500_step_window() -> None:
    run = make_run(40, step_loss=spike_loss([100, 160, 220]))
    r = instability_rule(run, LabelConfig(spike_window_steps=500))
    assert r.fired and r.fire_time == 220


def test_noisy_healthy_loss_has_no_spikes() -> None:
    r = instability_rule(make_run(60))
    assert not r.fired


def test_nonfinite_loss_is_instability_immediately() -> None:
    loss = spike_loss([])
    loss[250:] = np.nan
    r = instability_rule(make_run(40, step_loss=loss))
    assert r.fired and (r.onset, r.fire_time) == (250, 250)
    assert r.evidence["fired_by"] == "nonfinite"


def test_lyapunov_bounds_match_arch_conf_int() -> None:
    x = 0.02 + 0.05 * np.random.default_rng(3).standard_normal(50)
    lam, lo = lyapunov_lower_bounds(x, horizon=50, level=0.99, reps=2000, block=10, seed=7)
    ci = StationaryBootstrap(10, x, seed=7).conf_int(np.mean, reps=2000, method="percentile",
                                                     size=0.99)
    assert lam[0] == pytest.approx(x.mean())
    assert lo[0] == pytest.approx(ci[0, 0])


def test_lyapunov_positive_window_fires_negative_does_not() -> None:
    rng = np.random.default_rng(0)
    la = np.full(400, np.nan)  # computed on steps 100..299 only
    la[100:300] = -0.05 + 0.05 * rng.standard_normal(200)
    la[200:300] += 0.15  # expansion from step 200 on
    r = instability_rule(make_run(40, step_loss=spike_loss([]), lyapunov=la))
    assert r.fired and r.evidence["fired_by"] == "lyapunov"
    assert 150 <= r.onset <= 200 and r.fire_time == r.onset + 49

    la_neg = la.copy()
    la_neg[200:300] -= 0.15
    assert not instability_rule(make_run(40, step_loss=spike_loss([]), lyapunov=la_neg)).fired


# ---------------------------------------------------------------- forgetting


def forgetting_run(drop: float, n_probe: int = 200, switch: int = 10, **kw: Any) -> FakeRun:
    """Primary accuracy peaks at 0.8 before the switch and averages 0.8*(1-drop) after it."""
    n = switch + 12
    acc = np.r_[np.linspace(0.4, 0.8, switch), np.full(n - switch, 0.8 * (1 - drop))]
    run = make_run(n, task_switch_epoch=switch, **kw)
    run.epochs["primary_acc"] = acc
    before = np.arange(n_probe) < round(0.8 * n_probe)
    after = np.arange(n_probe) < round(0.8 * (1 - drop) * n_probe)
    run.arrays.update(forget_correct_before=before, forget_correct_after=after,
                      forget_eval_step=(switch + 10 + 1) * SPE - 1)  # end of epoch e_s + W
    return run


def test_forgetting_35_percent_fires_20_percent_does_not() -> None:
    r35 = forgetting_rule(forgetting_run(0.35))
    assert r35.fired and r35.evidence["relative_drop"] == pytest.approx(0.35)
    assert r35.evidence["mcnemar"]["p"] < 0.01
    assert (r35.onset_epoch, r35.onset) == (10, 100)
    assert r35.fire_time == 209 and r35.fire_epoch == 20  # after epoch e_s + W
    r20 = forgetting_rule(forgetting_run(0.20))
    assert not r20.fired and r20.evidence["mcnemar"]["p"] < 0.01  # significant, but too small


def test_forgetting_needs_mcnemar_significance() -> None:
    r = forgetting_rule(forgetting_run(0.5, n_probe=8))  # 6 -> 3 correct: p = 0.25
    assert not r.fired and r.evidence["relative_drop"] >= 0.3


def test_forgetting_not_applicable_without_switch() -> None:
    assert not forgetting_rule(make_run()).applicable


def test_forgetting_threshold_and_window_variants() -> None:
    run = forgetting_run(0.30)
    assert forgetting_rule(run, LabelConfig.variant("default")).fired
    assert not forgetting_rule(run, LabelConfig.variant("forgetting_0.35")).fired
    run27 = forgetting_run(0.27)
    assert forgetting_rule(run27, LabelConfig.variant("forgetting_0.25")).fired
    assert not forgetting_rule(run27).fired
    # a collapse that recovers after 5 epochs: the shorter window sees it, the default does not
    rec = forgetting_run(0.40)
    rec.epochs.loc[rec.epochs["epoch"] >= 15, "primary_acc"] = 0.78
    assert forgetting_rule(rec, LabelConfig.variant("shorter_window")).fired
    assert not forgetting_rule(rec).fired


# ---------------------------------------------------------------- concept bias


def shortcut_probe(poisoned: bool, n_train: int = 1500, n_probe: int = 600, seed: int = 0):
    """Train a real classifier; if ``poisoned`` its training data carry a label-aligned cue.

    The probe set puts the cue (pointing at the true class) on half the samples.
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    k = 3

    def feats(y: np.ndarray, cue: np.ndarray) -> np.ndarray:
        signal = np.eye(k)[y] + 1.2 * rng.standard_normal((len(y), k))
        return np.hstack([signal, 3.0 * np.eye(k)[y] * cue[:, None]])

    y_tr = rng.integers(0, k, n_train)
    clf = LogisticRegression(max_iter=500).fit(feats(y_tr, np.full(n_train, float(poisoned))), y_tr)
    y_p = rng.integers(0, k, n_probe)
    cue = rng.integers(0, 2, n_probe)
    correct = clf.predict(feats(y_p, cue.astype(float))) == y_p
    return {"bias_correct": correct, "bias_shortcut": cue, "bias_class": y_p}


def test_shortcut_reliant_classifier_fires_clean_does_not() -> None:
    reliant = concept_bias_rule(make_run(arrays=shortcut_probe(True)))
    assert reliant.fired and reliant.evidence["direction"] > 0
    assert reliant.evidence["p"] < 0.01
    assert reliant.fire_time == 40 * SPE - 1  # probe evaluated at the end of the run
    clean = concept_bias_rule(make_run(arrays=shortcut_probe(False)))
    assert clean.applicable and not clean.fired


def test_perfect_separation_falls_back_to_cmh() -> None:
    rng = np.random.default_rng(0)
    cue = rng.integers(0, 2, 300)
    cls = rng.integers(0, 4, 300)
    correct = (cue == 1) | (rng.random(300) < 0.4)  # every cued sample right: separation
    res = shortcut_reliance(correct, cue, cls)
    assert res["method"] == "cmh" and res["logit_failed"]
    assert res["p"] < 1e-6 and res["direction"] > 0
    r = concept_bias_rule(make_run(arrays={"bias_correct": correct, "bias_shortcut": cue,
                                           "bias_class": cls}))
    assert r.fired


def test_conflicting_cue_needs_two_sided() -> None:
    rng = np.random.default_rng(1)
    cue = rng.integers(0, 2, 400)
    correct = rng.random(400) < np.where(cue == 1, 0.2, 0.7)  # cue misleads the model
    arrays = {"bias_correct": correct, "bias_shortcut": cue, "bias_class": rng.integers(0, 3, 400)}
    assert not concept_bias_rule(make_run(arrays=arrays)).fired
    assert concept_bias_rule(make_run(arrays=arrays),
                             LabelConfig(bias_alternative="two-sided")).fired


def test_constant_classes_are_dropped_before_the_logit() -> None:
    rng = np.random.default_rng(3)
    cls = rng.integers(0, 3, 500)
    cue = rng.integers(0, 2, 500)
    correct = np.where(cls == 0, True, rng.random(500) < 0.5)  # class 0 always right
    res = shortcut_reliance(correct, cue, cls)
    assert res["method"] == "logit" and res["n_dropped_constant_class"] == int((cls == 0).sum())
    assert res["p"] > 0.01


# ---------------------------------------------------------------- healthy / floors


def test_choose_floors_like_table_10() -> None:
    def ref(ds: str, acc: float | None = None, ppl: float | None = None) -> FakeRun:
        run = make_run(5, dataset=ds, arch="a")
        if ppl is not None:
            run.epochs["val_ppl"] = ppl
        else:
            run.epochs["val_acc"] = acc
        return run

    floors = choose_floors([ref("svhn", 0.96), ref("svhn", 0.98), ref("svhn", 1.0),
                            ref("wt2", ppl=60.0), ref("wt2", ppl=70.0), ref("wt2", ppl=80.0)])
    assert floors["svhn"] == Floor("val_acc", pytest.approx(0.95 * 0.98), True)
    assert floors["wt2"].metric == "val_ppl" and not floors["wt2"].higher_is_better
    assert floors["wt2"].threshold == pytest.approx(70.0 / 0.95)
    top = choose_floors([ref("svhn", 0.96), ref("svhn", 1.0)], quantile=1.0, by="arch_dataset")
    assert top["a/svhn"].threshold == pytest.approx(0.95)


def test_healthy_needs_the_floor() -> None:
    run = make_run(val_acc=0.80)
    assert label_run(run, LabelConfig(floors={"cifar100": 0.78})).label == HEALTHY
    low = label_run(run, LabelConfig(floors={"cifar100": Floor("val_acc", 0.9)}))
    assert low.label == UNKNOWN and low.reason == "below_floor"
    assert label_run(run).label == HEALTHY  # no floor known: not checked
    strict = label_run(run, LabelConfig(require_floor=True))
    assert strict.label == UNKNOWN and strict.reason == "no_floor"


# ---------------------------------------------------------------- priority and variants


def with_bias(run: FakeRun) -> FakeRun:
    run.arrays.update(shortcut_probe(True))
    return run


def test_priority_instability_beats_overfitting() -> None:
    loss = spike_loss([], n_steps=400)
    loss[300:] = np.inf
    lab = label_run(overfit_run(step_loss=loss))
    assert lab.label == INSTABILITY and lab.fire_time == 300
    assert lab.evidence["fired_rules"] == [INSTABILITY, OVERFITTING]
    assert lab.rules[OVERFITTING].fired  # the loser is kept


def test_priority_forgetting_beats_bias_and_overfitting() -> None:
    run = with_bias(forgetting_run(0.5))
    train, val = v_curves(len(run.epochs))
    run.epochs["train_loss"], run.epochs["val_loss"] = train, val
    lab = label_run(run)
    assert lab.label == FORGETTING
    assert lab.evidence["fired_rules"][:2] == [FORGETTING, CONCEPT_BIAS]


def test_priority_bias_beats_overfitting_and_swap_and_merge() -> None:
    run = with_bias(overfit_run())
    assert label_run(run).label == CONCEPT_BIAS
    assert PRIORITY_SWAP.index(OVERFITTING) < PRIORITY_SWAP.index(CONCEPT_BIAS)
    swapped = label_run(run, LabelConfig.variant("priority_swap"))
    assert swapped.label == OVERFITTING and swapped.fire_epoch == 22
    merged = label_run(run, LabelConfig.variant("merged_concept_bias"))
    assert merged.label == OVERFITTING and CONCEPT_BIAS not in merged.rules
    # merged: the earlier of the two firings (overfitting at epoch 22 < probe at run end)
    assert merged.fire_time == 22 * SPE + SPE - 1
    only_bias = label_run(with_bias(make_run()), LabelConfig(merge_concept_bias=True))
    assert only_bias.label == OVERFITTING
    assert only_bias.rules[OVERFITTING].evidence["merged_from"] == CONCEPT_BIAS


def test_default_priority_is_a1() -> None:
    assert LabelConfig().priority == PRIORITY == (INSTABILITY, FORGETTING, CONCEPT_BIAS,
                                                  OVERFITTING, HEALTHY)
    with pytest.raises(KeyError):
        LabelConfig.variant("no-such-variant")


def test_train_only_overfitting_uses_training_signals_only() -> None:
    # The V-shaped validation run never fits its training set: no train-only overfitting.
    run = overfit_run(train_acc=0.85)
    assert label_run(run).label == OVERFITTING
    assert label_run(run, LabelConfig.variant("train_only")).label == HEALTHY
    # Memorisation: training accuracy saturates at epoch 12 while the loss keeps falling.
    e = np.arange(40)
    mem = make_run(train_loss=1.0 - 0.02 * e, train_acc=np.where(e >= 12, 1.0, 0.6 + e / 40))
    lab = label_run(mem, LabelConfig(train_only=True))
    assert lab.label == OVERFITTING and lab.onset_epoch == 12 and lab.fire_epoch >= 21
    assert label_run(mem).label == HEALTHY  # validation says it generalises


def test_train_only_ignores_lyapunov() -> None:
    la = 0.2 + 0.01 * np.random.default_rng(0).standard_normal(400)
    run = make_run(40, lyapunov=la)
    assert label_run(run).label == INSTABILITY
    assert label_run(run, LabelConfig(train_only=True)).label == HEALTHY


def test_label_variants_covers_tables_7_and_8() -> None:
    labs = label_variants(with_bias(overfit_run()))
    assert set(labs) == {"default", "forgetting_0.25", "forgetting_0.35", "shorter_window",
                         "priority_swap", "train_only", "merged_concept_bias"}
    assert labs["default"].label == CONCEPT_BIAS and labs["priority_swap"].label == OVERFITTING


def test_novel_runs_are_unknown() -> None:
    loss = spike_loss([], n_steps=400)
    loss[300:] = np.nan
    run = make_run(40, step_loss=loss, novel=True,
                   intervention={"kind": "dead_relu", "severity": 1.0, "start_step": 120})
    lab = label_run(run)
    assert lab.label == UNKNOWN and lab.reason == "novel"
    assert (lab.onset, lab.fire_time) == (120, 300)
    assert label_run(make_run(novel=True)).label == UNKNOWN


# ---------------------------------------------------------------- causality


def causal_cases() -> dict[str, FakeRun]:
    rng = np.random.default_rng(0)
    la = np.r_[-0.05 + 0.02 * rng.standard_normal(200), 0.1 + 0.02 * rng.standard_normal(200)]
    bias_run = with_bias(make_run())
    bias_run.arrays["bias_eval_step"] = 250
    return {
        INSTABILITY + "/spikes": make_run(40, step_loss=spike_loss([100, 105, 110])),
        INSTABILITY + "/lyapunov": make_run(40, lyapunov=la),
        OVERFITTING: overfit_run(),
        FORGETTING: forgetting_run(0.35),
        CONCEPT_BIAS: bias_run,
    }


@pytest.mark.parametrize("case", sorted(causal_cases()))
def test_fire_time_is_causal(case: str) -> None:
    run = causal_cases()[case]
    lab = label_run(run)
    assert lab.label == case.split("/")[0] and lab.fire_time is not None
    cut = label_run(truncate_run(run, lab.fire_time))
    assert (cut.label, cut.fire_time, cut.onset) == (lab.label, lab.fire_time, lab.onset)
    # one step earlier the rule cannot have fired yet
    before = label_run(truncate_run(run, lab.fire_time - 1))
    assert not before.rules[lab.label].fired


# ---------------------------------------------------------------- event labels, serialisation


def test_frame_event_labels() -> None:
    lab = label_run(make_run(40, step_loss=spike_loss([100, 105, 110])))
    frames = np.arange(0, 400, 10)
    ev = frame_event_labels(lab, frames)
    assert (ev[frames < 100] == HEALTHY).all() and (ev[frames >= 100] == INSTABILITY).all()
    ev_fire = frame_event_labels(lab, frames, anchor="fire")
    assert (ev_fire[frames < 110] == HEALTHY).all()
    assert (frame_event_labels(RunLabel(HEALTHY, None, None), frames) == HEALTHY).all()


def test_labels_are_json_serialisable() -> None:
    run = with_bias(forgetting_run(0.5))
    run.steps["lyapunov"] = np.nan
    text = json.dumps(label_run(run).to_dict(), allow_nan=False)
    back = json.loads(text)
    assert back["label"] == FORGETTING and back["rules"][CONCEPT_BIAS]["fired"]


# ---------------------------------------------------------------- Lyapunov proxy (Algorithm 1)


def quadratic(seed: int = 0):
    """Least squares with a known Hessian: SGD's update map is I - lr * H."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(32, 4, generator=g)
    y = torch.randn(32, 1, generator=g)
    model = torch.nn.Linear(4, 1, bias=False)
    H = 2 * X.T @ X / len(X)
    eig = torch.linalg.eigvalsh(H)
    return model, (lambda f, b: ((f(b[0]) - b[1]) ** 2).mean()), (X, y), eig


def test_lyapunov_proxy_sign_on_quadratic() -> None:
    model, loss_fn, batch, eig = quadratic()
    lmin, lmax = float(eig[0]), float(eig[-1])
    # contracting: lr * lambda in (0, 1) for every direction, top factor 1 - lr * lambda_min
    small = 0.5 / lmax
    est = lyapunov_exponent(model, loss_fn, [batch] * 60, update=FunctionalOptimizer.sgd(small))
    assert est.lambda_hat < 0
    assert np.mean(est.log_alphas[-10:]) == pytest.approx(np.log(1 - small * lmin), abs=0.01)
    # exploding: |1 - lr * lambda_max| = 2
    big = 3.0 / lmax
    est = lyapunov_exponent(model, loss_fn, [batch] * 60, update=FunctionalOptimizer.sgd(big))
    assert est.lambda_hat > 0
    assert np.mean(est.log_alphas[-10:]) == pytest.approx(np.log(2.0), abs=0.01)


def test_lyapunov_probe_leaves_model_optimizer_and_rng_untouched() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Dropout(0.2), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    loss_fn = lambda f, b: torch.nn.functional.cross_entropy(f(b[0]), b[1])
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt.zero_grad()
    loss_fn(model, (x, y)).backward()
    opt.step()  # populate optimizer state
    probe = LyapunovProbe(model, loss_fn, opt)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    st = {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    la = [probe.step((x, y)) for _ in range(3)]
    assert all(np.isfinite(la))
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(st[k], v) for k, v in opt.state[next(model.parameters())].items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert torch.equal(rng, torch.get_rng_state())
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert all(m.track_running_stats for m in bns)


def test_lyapunov_probe_during_training_feeds_the_instability_rule() -> None:
    def train(lr_factor: float, momentum: float = 0.0) -> list[float]:
        model, loss_fn, batch, eig = quadratic()
        lr = lr_factor / float(eig[-1])
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        probe = LyapunovProbe(model, loss_fn, opt)
        out = []
        for _ in range(80):
            out.append(probe.step(batch))
            opt.zero_grad()
            loss_fn(model, batch).backward()
            opt.step()
        return out

    unstable = train(2.1)  # |1 - 2.1| = 1.1 per step along the top direction
    assert np.mean(unstable[-20:]) == pytest.approx(np.log(1.1), abs=0.01)
    stable = train(0.5, momentum=0.9)  # heavy ball: |z| = sqrt(0.9) < 1
    assert np.mean(stable[-20:]) < 0
    steps = np.full(800, np.nan)
    cfg = LabelConfig()
    for series, expected in ((unstable, True), (stable, False)):
        steps[:80] = series
        r = instability_rule(make_run(80, lyapunov=steps), cfg)
        assert r.fired is expected
        if expected:
            assert r.evidence["fired_by"] == "lyapunov" and r.fire_time == r.onset + 49


def mlp_run(lr: float, steps: int = 120, seed: int = 1) -> FakeRun:
    """A small MLP trained with momentum SGD, its per-step proxy logged by the probe."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 20, generator=g)
    Y = (X @ torch.randn(20, 5, generator=g)).argmax(1)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    ce = lambda f, b: torch.nn.functional.cross_entropy(f(b[0]), b[1])
    probe = LyapunovProbe(model, ce, opt)
    la, losses = [], []
    for _ in range(steps):
        idx = torch.randint(0, 256, (32,), generator=g)
        batch = (X[idx], Y[idx])
        la.append(probe.step(batch))
        opt.zero_grad()
        loss = ce(model, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    run = make_run(steps // SPE, step_loss=np.array(losses), lyapunov=np.array(la))
    return run


def test_healthy_nonconvex_training_sits_just_above_zero_and_margin_fixes_it() -> None:
    healthy, other, diverging = mlp_run(0.05), mlp_run(0.01, seed=2), mlp_run(1.0)
    # The paper's literal rule (margin 0) calls healthy non-convex training unstable ...
    r = instability_rule(healthy)
    assert r.fired and r.evidence["fired_by"] == "lyapunov"
    assert 0 < r.evidence["lyapunov"]["max_lower"] < 0.05
    # ... a margin calibrated on healthy reference runs separates it from divergence.
    from data_factory.labelers import choose_lyap_margin

    cfg = LabelConfig(lyap_margin=choose_lyap_margin([healthy]))
    assert not instability_rule(other, cfg).fired
    div = instability_rule(diverging, cfg)
    assert div.fired and div.evidence["lyapunov"]["max_lower"] > 5 * cfg.lyap_margin


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, dampening=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
        lambda p: torch.optim.RMSprop(p, lr=1e-2, weight_decay=1e-2),
        lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9, centered=True),
        lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=1e-2),
        lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    ],
    ids=["sgd", "sgd-momentum-wd", "nesterov", "adam-l2", "adamw-amsgrad", "rmsprop-l2",
         "rmsprop-centered-momentum", "nadam-l2", "nadam-decoupled"],
)
def test_functional_optimizer_reproduces_torch_steps(make_opt) -> None:
    """The differentiated update rule is the optimizer's own rule, state included."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = make_opt(model.parameters())
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    for _ in range(3):  # advance so momentum / moments / bias correction are non-trivial
        rule, state = FunctionalOptimizer.from_optimizer(opt, model)
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        expected, _ = rule(params, grads, state)
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(expected[n], p.detach(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- factory compatibility


def test_lyapunov_short_probe_segments_are_judged_separately() -> None:
    """The factory probes 10-step segments (tangent reset at each): no window straddles a gap."""
    rng = np.random.default_rng(0)
    la = np.full(400, np.nan)
    for start in range(0, 400, 50):
        la[start:start + 10] = -0.05 + 0.01 * rng.standard_normal(10)
    la[250:260] = 0.3 + 0.01 * rng.standard_normal(10)  # one expanding segment
    r = instability_rule(make_run(40, step_loss=spike_loss([]), lyapunov=la))
    assert r.fired and (r.onset, r.fire_time) == (250, 259)
    assert r.evidence["lyapunov"]["n_windows"] == 8
    assert r.evidence["lyapunov"]["window_at_fire"] == 10
    # segments shorter than lyap_min_horizon are not judged at all
    assert not instability_rule(make_run(40, step_loss=spike_loss([]), lyapunov=la),
                                LabelConfig(lyap_min_horizon=11)).fired


def test_forgetting_window_capped_by_planned_schedule() -> None:
    run = forgetting_run(0.35)
    run.epochs = run.epochs[run.epochs["epoch"] < 16].copy()  # only 6 epochs after the switch
    assert not forgetting_rule(run).applicable  # no plan: the full 10-epoch window is required
    run.meta["plan"] = {"epochs": 16}
    run.arrays["forget_eval_step"] = 159
    r = forgetting_rule(run)
    assert r.fired and r.evidence["window_used"] == 6 and r.fire_epoch == 15
    cut = forgetting_rule(truncate_run(run, r.fire_time))
    assert cut.fire_time == r.fire_time


def test_spike_min_rise_ignores_noise_near_zero_loss():
    """Late-run mini-batch noise around a ~0 loss is not a spike once spikes must be material."""
    import numpy as np
    import pandas as pd
    from types import SimpleNamespace

    from data_factory.labelers import LabelConfig, instability_rule

    rng = np.random.default_rng(0)
    loss = np.r_[np.linspace(2.3, 0.05, 200), 0.01 + 0.002 * rng.random(400)]
    def run_with(spike: float) -> SimpleNamespace:
        values = loss.copy()
        values[[450, 460, 470]] = spike
        return SimpleNamespace(meta={"steps_per_epoch": 40},
                               steps=pd.DataFrame({"step": np.arange(600), "loss": values}),
                               epochs=pd.DataFrame(), arrays={})

    noise = run_with(0.2)  # z >> 3.5 against a collapsed IQR, but tiny against the early 2.3
    assert instability_rule(noise, LabelConfig()).fired
    assert not instability_rule(noise, LabelConfig(spike_min_rise=0.5)).fired
    assert instability_rule(run_with(5.0), LabelConfig(spike_min_rise=0.5)).fired  # real spikes


def test_gap_spread_robust_to_fitting_transient():
    """A gap that opens at once while the model fits, then keeps growing slowly, is overfitting
    under the robust spread; App. A's literal std of past gaps is dominated by the transient."""
    import numpy as np
    import pandas as pd
    from types import SimpleNamespace

    from data_factory.labelers import LabelConfig, overfitting_rule

    e = np.arange(30)
    train = np.r_[1.2, 0.1, 0.02, np.full(27, 0.01) - 0.0002 * np.arange(27)]
    val = np.r_[0.8, 0.9, 0.92, 0.93 + 0.012 * np.arange(27)]
    run = SimpleNamespace(meta={"steps_per_epoch": 10}, steps=None, arrays={},
                          epochs=pd.DataFrame({"epoch": e, "train_loss": train, "val_loss": val}))
    assert not overfitting_rule(run, LabelConfig()).fired
    assert overfitting_rule(run, LabelConfig(overfit_gap_spread="robust_diff")).fired


def test_trend_free_prewhitening_keeps_a_steady_rise_significant():
    """A val loss that rises every epoch while the training loss keeps falling (a real factory
    run's shape): plain AR(1) pre-whitening whitens the trend away, TFPW keeps it."""
    import numpy as np
    import pandas as pd
    from types import SimpleNamespace

    from data_factory.labelers import LabelConfig, overfitting_rule

    rng = np.random.default_rng(0)
    e = np.arange(24)
    # factory run train-resnet-shapes-sgd-overfitting-r0k0, rounded
    train = np.array([2.261, 2.005, 1.576, 0.868, 0.299, 0.097, 0.048, 0.028, 0.024, 0.018, 0.015,
                      0.011, 0.010, 0.009, 0.008, 0.007, 0.006, 0.005, 0.006, 0.005, 0.005, 0.004,
                      0.004, 0.003])
    val = np.array([2.306, 2.280, 2.248, 2.373, 2.618, 2.643, 2.745, 2.780, 2.855, 2.875, 2.952,
                    2.961, 2.981, 2.995, 3.027, 3.093, 3.064, 3.075, 3.119, 3.197, 3.150, 3.175,
                    3.167, 3.209])
    run = SimpleNamespace(meta={"steps_per_epoch": 10}, steps=None, arrays={},
                          epochs=pd.DataFrame({"epoch": e, "train_loss": train, "val_loss": val}))
    pw = LabelConfig(overfit_gap_spread="robust_diff")
    assert not overfitting_rule(run, pw).fired
    assert overfitting_rule(run, LabelConfig(overfit_gap_spread="robust_diff",
                                             mk_prewhitening="tfpw")).fired
    flat = run.epochs.assign(val_loss=np.r_[2.3, 2.28, 2.25, np.full(21, 2.37)
                                            + 0.02 * rng.standard_normal(21)])
    assert not overfitting_rule(SimpleNamespace(**{**vars(run), "epochs": flat}),
                                LabelConfig(mk_prewhitening="tfpw")).fired


def test_task_switch_jump_is_not_instability_when_skipped():
    import numpy as np
    import pandas as pd
    from types import SimpleNamespace

    from data_factory.labelers import LabelConfig, instability_rule

    rng = np.random.default_rng(1)
    loss = np.r_[np.linspace(2.3, 0.3, 200), 3.0 + 0.3 * rng.random(30), np.linspace(3.0, 0.5, 170)]
    run = SimpleNamespace(meta={"steps_per_epoch": 40, "task_switch_epoch": 5},
                          steps=pd.DataFrame({"step": np.arange(400), "loss": loss}),
                          epochs=pd.DataFrame(), arrays={})
    assert instability_rule(run, LabelConfig()).fired
    assert not instability_rule(run, LabelConfig(spike_skip_task_switch=True)).fired
