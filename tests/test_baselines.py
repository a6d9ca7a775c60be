"""Baselines of Table 3 / Appendix L on synthetic runs with known structure.

Checks: the RunScores → RunPrediction contract; the change detectors (BOCPD, CUSUM, NaN rule,
AUTOTRAINER rules) fire after a known loss explosion and not before it; Curve-TCN and Stats-GBDT
beat chance on held-out synthetic runs of a learnable task; Embedding-CPD reacts to a shift in the
frames; every baseline is causal (scores up to step t do not change when data after t is altered
or removed) and reads no privileged input (``lyapunov``, validation curves).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from core_models.baselines import (
    BASELINES,
    BOCPD,
    CUSUM,
    AutoTrainerRules,
    Baseline,
    CurveTCN,
    EmbeddingCPD,
    NaNRule,
    NotFittedError,
    RunScores,
    StatsCurvesGBDT,
    StatsGBDT,
    anomaly_probs,
    label_indices,
    make_baseline,
    predict_runs,
)
from core_models.baselines.features import (
    CURVE_FEATURES,
    capture_grid,
    curve_features,
    frame_stat_features,
    interval_reduce,
    standardized_residuals,
    window_features,
)
from core_models.baselines.toy import ToyRun
from core_models.metrics import (
    anomaly_scores,
    event_time_auprc,
    first_alert,
    macro_f1,
    threshold_at_far,
)
from core_models.tevid import TEViD
from data_factory.frames import STAT_NAMES
from data_factory.labelers.rules import RunLabel
from data_factory.labels import FORGETTING, HEALTHY, INSTABILITY, KNOWN_LABELS, OVERFITTING, UNKNOWN
from data_factory.store import FrameSequence

EVERY = 10
N_STEPS = 600
ONSET = 300
STEPS_PER_EPOCH = 50
FRAME = 16  # TEViD("tiny") frame size
STAT_ORDER = sorted(f"{k}{i}_{s}" for k in ("act", "grad") for i in range(3) for s in STAT_NAMES)


# ------------------------------------------------------------------------------------------
# Synthetic runs
# ------------------------------------------------------------------------------------------


# The baselines' own Run-shaped toy record, so tests and docstring examples share one shape.
SynthRun = ToyRun


def make_run(kind: str, seed: int, onset: int = ONSET, n_steps: int = N_STEPS,
             nan_after: int | None = 200) -> tuple[SynthRun, RunLabel]:
    """A run of class ``kind`` with its signature from ``onset``.

    * healthy: noisy decaying loss, stationary layer statistics.
    * instability: loss and gradient norm grow exponentially, the shallowest layer's gradients
      faster than the deepest (AUTOTRAINER's ratio crosses 70), loss NaN ``nan_after`` steps later.
    * overfitting: loss falls faster, gradient norm decays, activation magnitudes grow.
    * forgetting: the loss jumps and recovers, the gradient norm spikes, activation means shift.
    """
    rng = np.random.default_rng(seed)
    step = np.arange(n_steps)
    after = np.clip(step - onset, 0, None).astype(float)
    on = step >= onset
    level = rng.uniform(0.7, 1.3)
    loss = level * (2.0 * np.exp(-step / 400.0) + 0.3) * np.exp(0.08 * rng.standard_normal(n_steps))
    gnorm = rng.uniform(0.5, 2.0) * np.exp(0.1 * rng.standard_normal(n_steps))
    lr = np.full(n_steps, rng.choice([0.01, 0.05, 0.1]))
    g_first = np.zeros(n_steps)   # log growth of the shallowest layer's gradients
    g_last = np.zeros(n_steps)
    act_log = np.zeros(n_steps)   # log growth of activation magnitudes
    act_shift = np.zeros(n_steps)
    if kind == INSTABILITY.lower():
        loss = loss * np.exp(0.02 * after)
        gnorm = gnorm * np.exp(0.02 * after)
        g_first, g_last = 0.03 * after, 0.01 * after
        if nan_after is not None:
            loss[step >= onset + nan_after] = np.nan
    elif kind == OVERFITTING.lower():
        loss = loss * np.exp(-0.004 * after)
        gnorm = gnorm * np.exp(-0.003 * after)
        act_log = 0.004 * after
    elif kind == FORGETTING.lower():
        loss = loss + on * 1.5 * np.exp(-after / 80.0)
        gnorm = gnorm * (1.0 + on * 2.0 * np.exp(-after / 40.0))
        act_shift = on * 0.5
    elif kind != HEALTHY.lower():
        raise ValueError(kind)
    epoch = step // STEPS_PER_EPOCH
    steps = pd.DataFrame({"step": step, "epoch": epoch, "loss": loss, "lr": lr,
                          "grad_norm": gnorm, "lyapunov": rng.standard_normal(n_steps)})
    n_ep = int(epoch.max()) + 1
    epochs = pd.DataFrame({"epoch": np.arange(n_ep), "train_loss": rng.uniform(0, 2, n_ep),
                           "train_acc": rng.uniform(0, 1, n_ep),
                           "val_loss": rng.uniform(0, 2, n_ep), "val_acc": rng.uniform(0, 1, n_ep)})

    cap = step[::EVERY]
    nf = cap.shape[0]
    dead = ~np.isfinite(loss[cap])
    stats = np.zeros((nf, len(STAT_ORDER)), dtype=np.float32)
    scale = {"act": rng.uniform(0.5, 2.0), "grad": 1e-3 * rng.uniform(0.5, 2.0)}
    for j, name in enumerate(STAT_ORDER):
        head, stat = name.split("_", 1)
        kind_, layer = head[:-1], int(head[-1])
        noise = 0.03 * rng.standard_normal(nf)
        if stat == "nonpos_frac":
            stats[:, j] = 0.5 + 0.02 * rng.standard_normal(nf)
            continue
        if stat == "mean":
            stats[:, j] = (act_shift[cap] if kind_ == "act" else 0.0) + 0.01 * noise
            continue
        grow = act_log[cap] if kind_ == "act" else (g_first[cap] if layer == 0 else
                                                    g_last[cap] if layer == 2 else
                                                    (g_first[cap] + g_last[cap]) / 2)
        mult = {"rms": 1.0, "std": 1.0, "absmax": 4.0}[stat]
        stats[:, j] = scale[kind_] * mult * np.exp(grow + noise)
    stats[dead] = np.inf
    # Frames: channel c is a noisy map around the log-rms of its layer (acts 0-2, grads 3-5).
    levels = np.stack([np.log10(stats[:, STAT_ORDER.index(f"{k}{i}_rms")].clip(1e-30, 1e30))
                       for k in ("act", "grad") for i in range(3)], axis=1)
    tensor = levels[:, :, None, None] + 0.2 * rng.standard_normal((nf, 6, FRAME, FRAME))
    tensor = np.clip(np.nan_to_num(tensor, nan=8.0, posinf=8.0), -8, 8).astype(np.float32)
    frames = FrameSequence(tensor=torch.from_numpy(tensor).to(torch.bfloat16),
                           steps=cap.astype(np.int64), epochs=epoch[cap].astype(np.int64),
                           finite=~dead, stats=stats, stat_names=list(STAT_ORDER),
                           layers=["l0", "l1", "l2"])
    run = SynthRun(f"{kind}-{seed}", {"steps_per_epoch": STEPS_PER_EPOCH, "dataset": "synth",
                                       "total_steps": n_steps}, steps, epochs, frames)
    if kind == HEALTHY.lower():
        label = RunLabel(HEALTHY, None, None)
    else:
        name = {"instability": INSTABILITY, "overfitting": OVERFITTING,
                "forgetting": FORGETTING}[kind]
        label = RunLabel(name, onset, onset, onset // STEPS_PER_EPOCH, onset // STEPS_PER_EPOCH)
    return run, label


def truncate(run: SynthRun, t: int) -> SynthRun:
    """The run as it stood at step ``t``: step rows and frames after ``t`` removed."""
    keep = run.frames.steps <= t
    f = run.frames
    frames = FrameSequence(f.tensor[torch.from_numpy(keep)], f.steps[keep], f.epochs[keep],
                           f.finite[keep], f.stats[keep], list(f.stat_names), list(f.layers))
    return replace(run, steps=run.steps[run.steps.step <= t].reset_index(drop=True),
                   frames=frames)


def scramble_future(run: SynthRun, t: int, seed: int = 99) -> SynthRun:
    """Every per-step value and frame after step ``t`` replaced by garbage."""
    rng = np.random.default_rng(seed)
    steps = run.steps.copy()
    late = steps.step > t
    steps.loc[late, "loss"] = rng.choice([np.nan, 1e9, 0.0], size=late.sum())
    steps.loc[late, "grad_norm"] = rng.uniform(0, 1e6, late.sum())
    steps.loc[late, "lr"] = rng.uniform(0, 10, late.sum())
    f = run.frames
    late_f = f.steps > t
    tensor = f.tensor.clone()
    tensor[torch.from_numpy(late_f)] = torch.randn(int(late_f.sum()), *tensor.shape[1:]).to(
        tensor.dtype) * 5
    stats = f.stats.copy()
    stats[late_f] = rng.uniform(-1e3, 1e3, (int(late_f.sum()), stats.shape[1]))
    finite = f.finite.copy()
    finite[late_f] = False
    frames = FrameSequence(tensor, f.steps, f.epochs, finite, stats, list(f.stat_names),
                           list(f.layers))
    return replace(run, steps=steps, frames=frames)


def strip_privileged(run: SynthRun) -> SynthRun:
    """No ``lyapunov`` column, and validation curves gone from the epoch table."""
    steps = run.steps.drop(columns=["lyapunov"])
    epochs = run.epochs.drop(columns=["val_loss", "val_acc"])
    return replace(run, steps=steps, epochs=epochs)


def poison_privileged(run: SynthRun) -> SynthRun:
    """``lyapunov`` and validation curves replaced by values that scream 'anomaly'."""
    steps = run.steps.copy()
    steps["lyapunov"] = 1e6
    epochs = run.epochs.copy()
    epochs["val_loss"] = np.nan
    epochs["val_acc"] = 0.0
    return replace(run, steps=steps, epochs=epochs)


KINDS = ("healthy", "instability", "overfitting", "forgetting")


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[list[SynthRun], list[RunLabel]]]:
    """Disjoint train / val / test splits of the learnable synthetic task."""
    out = {}
    for split, (n_per_kind, base) in {"train": (6, 0), "val": (2, 1000), "test": (3, 2000)}.items():
        pairs = [make_run(k, base + 10 * i + j) for i in range(n_per_kind)
                 for j, k in enumerate(KINDS)]
        out[split] = ([p[0] for p in pairs], [p[1] for p in pairs])
    return out


@pytest.fixture(scope="module")
def fitted(corpus) -> dict[str, Baseline]:
    """Every baseline fitted on the synthetic corpus (training runs; validation for tuning)."""
    tr, trl = corpus["train"]
    va, val = corpus["val"]
    out: dict[str, Baseline] = {
        "bocpd": BOCPD(grid={}),
        "cusum": CUSUM(grid={}),
        "nan_rule": NaNRule(),
        "rules": AutoTrainerRules(),
        "stats_gbdt": StatsGBDT(num_boost_round=150, min_child_samples=10).fit(tr, trl, va, val),
        "stats_gbdt_curves": StatsCurvesGBDT(num_boost_round=150, min_child_samples=10).fit(
            tr, trl, va, val),
        "curve_tcn": CurveTCN(channels=16, epochs=60, batch_size=4).fit(tr, trl, va, val),
    }
    torch.manual_seed(0)
    out["embedding_cpd"] = EmbeddingCPD(TEViD("tiny"), window=5, proj_dim=16).fit(
        tr[:4], None, va[:2])
    return out


# ------------------------------------------------------------------------------------------
# Contract
# ------------------------------------------------------------------------------------------


def test_registry_and_protocol(fitted) -> None:
    assert set(BASELINES) == set(fitted)
    for name, b in fitted.items():
        assert isinstance(b, Baseline)
        assert b.name == name
    assert make_baseline("cusum", drift=1.0).drift == 1.0
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("nope")


def test_unfitted_supervised_baselines_refuse_to_score() -> None:
    run, _ = make_run("healthy", 0)
    for b in (StatsGBDT(), CurveTCN(), EmbeddingCPD(TEViD("tiny"))):
        with pytest.raises(NotFittedError):
            b.score_run(run)


def test_anomaly_mass_mapping_is_exact() -> None:
    a = np.array([0.0, 0.3, 1.0])
    p = anomaly_probs(a)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(1 - p[:, KNOWN_LABELS.index(HEALTHY)], a)
    np.testing.assert_allclose(p[:, 1:], np.repeat(a[:, None] / 4, 4, axis=1))
    s = RunScores("x", "r", [0, 10, 20], [0, 0, 1], a)
    pred = s.to_prediction(RunLabel(INSTABILITY, 10, 20, 0, 1), meta={"arch": "a"})
    np.testing.assert_allclose(anomaly_scores(pred), a)
    assert pred.event_labels.tolist() == [HEALTHY, INSTABILITY, INSTABILITY]
    assert (pred.onset_step, pred.fire_step, pred.fire_epoch) == (10, 20, 1.0)
    assert pred.vacuity.tolist() == [0, 0, 0] and pred.meta == {"arch": "a"}
    explicit = s.to_prediction(event_labels=[HEALTHY, HEALTHY, UNKNOWN])
    assert explicit.label == UNKNOWN and explicit.onset_step == 20


def test_run_scores_validation() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        RunScores("x", "r", [0], [0], [1.5])
    with pytest.raises(ValueError, match="probs"):
        RunScores("x", "r", [0], [0], [0.5], probs=np.ones((1, 3)))
    with pytest.raises(ValueError, match="non-decreasing"):
        RunScores("x", "r", [10, 0], [0, 0], [0.1, 0.2])
    assert label_indices(np.array([HEALTHY, UNKNOWN, FORGETTING])).tolist() == [0, -100, 3]


def test_predictions_feed_the_metrics(fitted, corpus) -> None:
    runs, labels = corpus["test"]
    for name, b in fitted.items():
        preds = predict_runs(b, runs, labels)
        assert [p.run_id for p in preds] == [r.run_id for r in runs]
        for p, r in zip(preds, runs):
            assert p.steps.tolist() == r.frames.steps.tolist()   # TEViD's time grid
            assert p.epochs.tolist() == r.frames.epochs.astype(float).tolist()
        assert 0.0 <= event_time_auprc(preds) <= 1.0, name


def test_empty_run_scores_empty(fitted) -> None:
    run, _ = make_run("healthy", 5)
    empty = truncate(run, -1)
    for name, b in fitted.items():
        assert b.score_run(empty).n_steps == 0, name


# ------------------------------------------------------------------------------------------
# Change detectors on a loss explosion
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bocpd", "cusum", "nan_rule", "rules"])
def test_detector_fires_after_explosion_not_before(name: str, fitted) -> None:
    """Threshold at 0 % FAR on healthy validation runs; the alert on an exploding run (3
    consecutive captures, E.1) comes after the onset and within 250 steps of it."""
    detector = fitted[name]
    healthy = [make_run("healthy", 500 + i) for i in range(8)]
    tau = threshold_at_far(predict_runs(detector, [h for h, _ in healthy],
                                        [lab for _, lab in healthy]), far=0.0)
    for seed in (700, 701, 702):
        run, label = make_run("instability", seed)
        pred = detector.score_run(run).to_prediction(label)
        i = first_alert(anomaly_scores(pred), tau)
        assert i is not None, f"{name} never fired (tau={tau:.3f})"
        assert ONSET <= pred.steps[i] <= ONSET + 250, (name, int(pred.steps[i]))


def test_rules_and_nan_rule_fire_at_published_thresholds() -> None:
    run, _ = make_run("instability", 3, nan_after=260)
    s = AutoTrainerRules().score_run(run)
    fired = s.steps[s.extras["fired"] > 0]
    # The grad0/grad2 rms ratio grows as exp(0.02 (t - onset)): it crosses 70 (AUTOTRAINER's
    # explode threshold) ~212 steps after onset; the loss turns NaN 260 steps after onset.
    assert ONSET + 200 <= fired[0] <= ONSET + 230
    e = s.extras["e_explode"]
    assert np.all(e[(s.steps >= ONSET + 230) & (s.steps < ONSET + 260)] > 1.0)
    assert np.all(e[s.steps <= ONSET + 200] < 1.0)
    assert np.all(s.score[s.steps >= ONSET + 260] == 1.0)        # NaN latched
    assert np.all(s.probs[s.steps >= ONSET + 260, KNOWN_LABELS.index(INSTABILITY)] == 1.0)
    nan = NaNRule()
    assert nan.first_pruned_step(run) == ONSET + 260
    s = nan.score_run(run)
    assert s.steps[np.argmax(s.score)] == ONSET + 260 and s.score[s.steps < ONSET + 260].max() == 0
    healthy, _ = make_run("healthy", 4)
    assert AutoTrainerRules().score_run(healthy).extras["fired"].sum() == 0
    assert NaNRule().score_run(healthy).score.max() == 0.0
    # ThresholdPruner semantics: bounds prune too.
    assert NaNRule(upper=1.0).first_pruned_step(healthy) == 0


def test_residuals_are_unbiased_on_a_decaying_loss() -> None:
    t = np.arange(3000.0)
    rng = np.random.default_rng(0)
    y = np.log1p(2 * np.exp(-t / 400) + 0.3) + 0.05 * rng.standard_normal(t.size)
    z = standardized_residuals(y)
    assert abs(z[100:].mean()) < 0.1 and 0.7 < z[100:].std() < 1.3


def test_validation_tuning_uses_validation_runs_only(corpus) -> None:
    va, val = corpus["val"]
    b = BOCPD(grid={"hazard_lambda": (50.0, 500.0)}).fit([], [], va, val)
    assert len(b.validation_) == 2 and b.hazard_lambda in (50.0, 500.0)
    c = CUSUM(grid={"drift": (0.25, 1.0)})
    assert c.fit([], []).drift == 0.5 and c.validation_ == []     # no validation: unchanged
    c.fit([], [], va, val)
    best = max(c.validation_, key=lambda pv: pv[1])[0]["drift"]
    assert c.drift == best


# ------------------------------------------------------------------------------------------
# Supervised baselines learn the synthetic task
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stats_gbdt", "curve_tcn"])
def test_supervised_baselines_beat_chance(name: str, fitted, corpus) -> None:
    runs, labels = corpus["test"]
    preds = predict_runs(fitted[name], runs, labels)
    y = np.concatenate([p.event_labels != HEALTHY for p in preds])
    auprc = event_time_auprc(preds)
    assert auprc > y.mean() + 0.3, (name, auprc, y.mean())
    # Chance macro-F1 over the three anomalous classes is ~0.2 at these class rates.
    assert macro_f1(preds) > 0.45, (name, macro_f1(preds))


def test_stats_gbdt_channels_and_importance(corpus) -> None:
    tr, trl = corpus["train"]
    act = StatsGBDT(channels="act", num_boost_round=20, min_child_samples=10).fit(tr, trl)
    assert all(not n.startswith("grad") for n in act.stat_names_)
    imp = act.importance(top=5)
    assert len(imp) == 5 and abs(sum(act.importance(top=None).values()) - 1) < 1e-9


# ------------------------------------------------------------------------------------------
# Embedding-CPD
# ------------------------------------------------------------------------------------------


def test_embedding_cpd_reacts_to_a_shift_in_the_frames(fitted) -> None:
    cpd = fitted["embedding_cpd"]
    assert cpd.bandwidth_ is not None and cpd.bandwidth_ > 0
    assert cpd.pca_components_ is not None and cpd.pca_components_.shape[0] == 16
    run, _ = make_run("instability", 800, nan_after=None)
    s = cpd.score_run(run)
    before = s.score[(s.steps >= 100) & (s.steps < ONSET)].mean()
    after = s.score[(s.steps > ONSET + 100)].mean()
    assert after > 2 * before + 0.01, (before, after)
    np.testing.assert_allclose(s.extras["mmd2"] / 2, s.score)


# ------------------------------------------------------------------------------------------
# Causality and privileged inputs, for every baseline
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_causal(name: str, fitted) -> None:
    b = fitted[name]
    run, _ = make_run("instability", 900)
    full = b.score_run(run)
    for t in (ONSET - 50, ONSET + 60):
        k = int(np.sum(full.steps <= t))
        cut = b.score_run(truncate(run, t))
        assert cut.n_steps == k
        np.testing.assert_allclose(cut.score, full.score[:k], atol=1e-5, err_msg=name)
        alt = b.score_run(scramble_future(run, t))
        np.testing.assert_allclose(alt.score[:k], full.score[:k], atol=1e-5, err_msg=name)
        if full.probs is not None:
            np.testing.assert_allclose(alt.probs[:k], full.probs[:k], atol=1e-5)
        changed = not np.allclose(alt.score[k:], full.score[k:]) or (
            full.probs is not None and not np.allclose(alt.probs[k:], full.probs[k:]))
        assert changed, f"{name}: scrambling the future had no effect at all (vacuous test)"


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_no_privileged_inputs(name: str, fitted) -> None:
    b = fitted[name]
    run, _ = make_run("forgetting", 901)
    ref = b.score_run(run)
    for variant in (strip_privileged(run), poison_privileged(run)):
        got = b.score_run(variant)
        np.testing.assert_array_equal(got.score, ref.score, err_msg=name)
        if ref.probs is not None:
            np.testing.assert_array_equal(got.probs, ref.probs)


def test_stats_gbdt_reads_layer_statistics_only_and_the_hybrid_reads_curves(fitted) -> None:
    run, _ = make_run("instability", 903)
    steps = run.steps.copy()
    for col in ("loss", "lr", "grad_norm"):
        if col in steps:
            steps[col] = steps[col] * 7.0 + 3.0          # a wholly different scalar telemetry
    other = replace(run, steps=steps)
    np.testing.assert_array_equal(fitted["stats_gbdt"].features(other),
                                  fitted["stats_gbdt"].features(run))
    assert not any("loss" in n for n in fitted["stats_gbdt"].feature_names_)
    hybrid = fitted["stats_gbdt_curves"]
    assert not np.array_equal(hybrid.features(other), hybrid.features(run), equal_nan=True)


def test_runs_without_epoch_table_or_optional_columns(fitted) -> None:
    run, _ = make_run("overfitting", 902)
    bare = replace(run, epochs=pd.DataFrame(), steps=run.steps[["step", "epoch", "loss"]])
    for name in ("bocpd", "cusum", "nan_rule", "rules"):
        assert fitted[name].score_run(bare).n_steps == len(run.frames)


# ------------------------------------------------------------------------------------------
# Shared features
# ------------------------------------------------------------------------------------------


def test_interval_reduce_matches_a_loop() -> None:
    rng = np.random.default_rng(1)
    v = rng.standard_normal(50)
    ends = np.array([0, 3, 3, 10, 31, 31, 50])
    starts = np.r_[0, ends[:-1]]
    for how, fn in {"mean": np.mean, "max": np.max, "min": np.min, "std": np.std,
                    "last": lambda x: x[-1], "sum": np.sum}.items():
        got = interval_reduce(v, ends, how)
        for i, (a, b) in enumerate(zip(starts, ends)):
            if b > a:
                assert got[i] == pytest.approx(fn(v[a:b]), abs=1e-9), how
            else:
                assert np.isnan(got[i])


def test_window_features_are_causal_and_named() -> None:
    x = np.random.default_rng(2).standard_normal((30, 3))
    w, names = window_features(x, ["a", "b", "c"], 5)
    w2, _ = window_features(x[:12], ["a", "b", "c"], 5)
    np.testing.assert_array_equal(w[:12], w2)
    assert len(names) == w.shape[1] == 15
    i = names.index("b@slope")
    assert w[20, i] == pytest.approx(np.polyfit(np.arange(5), x[16:21, 1], 1)[0])


def test_capture_grid_and_curve_features() -> None:
    run, _ = make_run("instability", 7)
    grid = capture_grid(run)
    assert grid.steps.tolist() == run.frames.steps.tolist()
    no_epochs = replace(run, frames=replace(run.frames, epochs=np.full(len(run.frames), -1)))
    np.testing.assert_array_equal(capture_grid(no_epochs).epochs, grid.epochs)
    x = curve_features(run, grid)
    assert x.shape == (len(grid), len(CURVE_FEATURES)) and np.all(np.isfinite(x))
    seen = x[:, CURVE_FEATURES.index("nonfinite_seen")]
    assert seen[grid.steps < ONSET + 200].max() == 0 and seen[-1] == 1
    xs, names = frame_stat_features(run)
    assert xs.shape == (len(grid), len(names))
    ratio = xs[:, names.index("grad_rms_log_ratio")]
    # log10(grad0/grad2) grows by 0.02 / ln(10) per step after onset.
    assert ratio[grid.steps == ONSET + 150][0] == pytest.approx(150 * 0.02 / np.log(10), abs=0.2)


def test_fitting_does_not_mutate_runs(corpus) -> None:
    tr, trl = corpus["train"]
    before = copy.deepcopy(tr[0].steps)
    StatsGBDT(num_boost_round=5, min_child_samples=10).fit(tr[:4], trl[:4])
    pd.testing.assert_frame_equal(before, tr[0].steps)
