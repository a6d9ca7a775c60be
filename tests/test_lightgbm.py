"""LightGBM: feature-importance frames, the TEViD callback (standalone and Optuna), the pilot."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from types import SimpleNamespace

import lightgbm as lgb
import numpy as np
import optuna
import pytest
import torch
from conftest import contested_belief

from core_models.calibration import Calibration
from data_factory.labels import HEALTHY, INSTABILITY, KNOWN_LABELS, OVERFITTING
from experiments import gbdt_pilot
from tevid_hpo.cost import CostModel
from tevid_hpo.diagnostician import Diagnosis, Diagnostician
from tevid_hpo.lightgbm import CHANNELS, GAIN_FLOOR, FeatureImportanceFrames, TEViDLightGBMCallback
from tevid_hpo.monitor import USER_ATTR
from tevid_hpo.pruners import TEViDPruner, prune_reason

N_FEATURES = 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, N_FEATURES))
    y = (x[:, 0] + x[:, 1] - x[:, 2] + rng.normal(scale=1.5, size=900) > 0).astype(int)
    return x[:300], y[:300], x[300:], y[300:]


def params(**kw):
    """Overfits quickly: many leaves, tiny leaves, high learning rate, few noisy examples."""
    return {"objective": "binary", "metric": "binary_logloss", "learning_rate": 0.3,
            "num_leaves": 31, "min_data_in_leaf": 2, "num_threads": 1, "verbose": -1,
            "seed": 0, "deterministic": True, "force_row_wise": True, **kw}


def datasets(data):
    xt, yt, xv, yv = data
    train = lgb.Dataset(xt, yt, params={"verbose": -1})
    return train, lgb.Dataset(xv, yv, reference=train)


class StubDiagnostician:
    """Deterministic stand-in: confirms ``label`` at every diagnosis from iteration ``at`` on."""

    def __init__(self, at: int | None, label: str = OVERFITTING, frame_size: int = 16) -> None:
        self.at, self.label = at, label
        self.profile = SimpleNamespace(frame_size=frame_size)
        self.resets = 0
        self.seen: list[tuple[int, tuple[int, ...]]] = []

    def reset(self) -> None:
        self.resets += 1

    def update(self, frame, step=None):
        self.seen.append((step, tuple(frame.tensor.shape)))
        hit = self.at is not None and step >= self.at
        probs = {c: 0.0 for c in KNOWN_LABELS}
        probs[self.label if hit else HEALTHY] = 1.0
        return Diagnosis(step=step, epoch=None, probs=probs, vacuity=0.05,
                         label=self.label if hit else HEALTHY,
                         alert=self.label if hit else None, confidence=1.0)


# ----------------------------------------------------------------------------- frames
def test_frames_every_round_with_the_right_shape(data):
    dtrain, dvalid = datasets(data)
    stub = StubDiagnostician(at=None, frame_size=32)
    cb = TEViDLightGBMCallback(stub)
    lgb.train(params(), dtrain, 12, valid_sets=[dvalid], callbacks=[cb])
    assert [s for s, _ in stub.seen] == list(range(12))
    assert {shape for _, shape in stub.seen} == {(6, 32, 32)}
    frames = cb.frames.frames
    assert len(frames) == 12 and cb.frames.tensor().shape == (12, 6, 32, 32)
    assert all(f.tensor.dtype == torch.bfloat16 and f.finite for f in frames)
    assert frames[0].layers == CHANNELS and frames[3].step == 3
    assert all(float(f.tensor.float().abs().max()) <= 8.0 for f in frames)
    assert frames[0].stats["split"] > 0 and cb.alert is None and cb.stopped_at is None


def log_share(v):
    return np.log(v * len(v) / v.sum() + GAIN_FLOOR)


def test_round_importance_matches_the_tree_and_channels_are_as_documented(data):
    dtrain, _ = datasets(data)
    booster = lgb.train(params(), dtrain, 6)
    frames = FeatureImportanceFrames(frame_size=5).replay(booster)   # 20 features -> 5x5 grid
    unit = frames[0].stats["gain_unit"]

    def walk(node, gain, split):
        if "split_feature" in node:
            gain[node["split_feature"]] += node["split_gain"]
            split[node["split_feature"]] += 1
            walk(node["left_child"], gain, split)
            walk(node["right_child"], gain, split)

    gains, splits = [], []
    for k in range(6):
        tree = booster.dump_model(start_iteration=k, num_iteration=1)["tree_info"][0]
        gain, split = np.zeros(N_FEATURES), np.zeros(N_FEATURES)
        walk(tree["tree_structure"], gain, split)
        gains.append(gain)
        splits.append(split)
    for k in (0, 4):
        f = frames[k].tensor.float().reshape(6, -1)[:, :N_FEATURES].numpy()
        cum, before = sum(gains[:k + 1]), sum(gains[:k]) if k else None
        assert np.allclose(f[0], np.log(gains[k] / unit + GAIN_FLOOR), atol=0.05)   # bf16
        assert np.allclose(f[1], log_share(cum), atol=0.05)
        novelty = log_share(gains[k]) - (log_share(before) if k else 0.0)
        assert np.allclose(f[2], np.clip(novelty, -8, 8), atol=0.06)
        assert np.allclose(f[3], np.log1p(splits[k]), atol=0.03)
        assert np.allclose(f[4], np.log1p(sum(splits[:k + 1])), atol=0.03)
        assert frames[k].stats["split"] == splits[k].sum()
    # Round 0 is measured against its own mean gain; padding reads as an unused feature.
    assert unit == pytest.approx(frames[0].stats["gain"] / N_FEATURES)
    pad = frames[0].tensor.float().reshape(6, -1)[:, N_FEATURES:]
    floor = torch.full_like(pad[0], math.log(GAIN_FLOOR))
    assert torch.allclose(pad[0], floor, atol=0.05) and torch.allclose(pad[1], floor, atol=0.05)
    assert (pad[2:] == 0).all()
    # Split deltas: the first round changes from "nothing"; later ones from the previous round.
    f0, f1 = (frames[i].tensor.float() for i in (0, 1))
    assert torch.allclose(f0[5], f0[3]) and torch.allclose(f1[5], f1[3] - f0[3], atol=0.05)


def test_frames_are_causal_and_replay_equals_online(data):
    dtrain, _ = datasets(data)
    long = lgb.train(params(), dtrain, 15)
    dtrain, _ = datasets(data)
    short = lgb.train(params(), dtrain, 6)
    a = FeatureImportanceFrames(16).replay(long)[:6]
    b = FeatureImportanceFrames(16).replay(short)
    assert all(torch.equal(x.tensor, y.tensor) for x, y in zip(a, b))
    # Frames made while boosting equal the replay of the finished booster.
    online = FeatureImportanceFrames(16)
    dtrain, _ = datasets(data)
    booster = lgb.Booster(params(), dtrain)
    for _ in range(6):
        booster.update()
        online.update(booster)
    replayed = FeatureImportanceFrames(16).replay(booster)
    assert all(torch.equal(x.tensor, y.tensor) for x, y in zip(online.frames, replayed))
    with pytest.raises(ValueError):
        online.update(booster, 3)   # not after the previous frame


def test_layouts_cadence_and_continued_training(data):
    dtrain, _ = datasets(data)
    booster = lgb.train(params(), dtrain, 6)
    padded = FeatureImportanceFrames(8, layout="pad").replay(booster)[0].tensor.float()
    assert (padded[3].reshape(-1)[N_FEATURES:] == 0).all()     # features fill 20 of 64 pixels
    grid = FeatureImportanceFrames(8).replay(booster)[0].tensor.float()
    assert grid[3, :2, :2].unique().numel() == 1               # 5x5 grid -> 8x8: blocks
    blocks = FeatureImportanceFrames(16).replay(booster, every=3)
    assert [f.step for f in blocks] == [2, 5]
    per_round = FeatureImportanceFrames(16).replay(booster)
    assert blocks[1].stats["split"] == sum(f.stats["split"] for f in per_round[3:6])
    # Continued training: the callback films only the new rounds.
    stub = StubDiagnostician(at=None)
    cb = TEViDLightGBMCallback(stub)
    dtrain, _ = datasets(data)
    lgb.train(params(), dtrain, 2, init_model=booster, callbacks=[cb])
    assert [f.step for f in cb.frames.frames] == [6, 7]
    first = cb.frames.frames[0].stats
    # "This round" is the new tree alone; the cumulative channels describe the whole model.
    assert first["gain_cum"] > first["gain"] > 0
    assert first["gain_cum"] == pytest.approx(per_round[-1].stats["gain_cum"] + first["gain"])
    with pytest.raises(ValueError):
        FeatureImportanceFrames(layout="spiral")


# ----------------------------------------------------------------------------- callback
def test_callback_stops_boosting_with_lightgbm_semantics(data):
    dtrain, dvalid = datasets(data)
    evals: dict = {}
    cb = TEViDLightGBMCallback(StubDiagnostician(at=30))
    booster = lgb.train(params(), dtrain, 200, valid_sets=[dvalid], valid_names=["val"],
                        callbacks=[cb, lgb.record_evaluation(evals)])
    # Three consecutive confirmations are the diagnostician's business: the stub confirms at 30.
    assert cb.stopped_at == 30 and cb.alert == OVERFITTING and cb.reason["rule"] == "alert"
    losses = evals["val"]["binary_logloss"]
    assert len(losses) == 31     # record_evaluation (order 20) saw the stopping round
    assert booster.best_iteration == int(np.argmin(losses)) + 1
    # As after lightgbm.early_stopping, the returned model is truncated to its best iteration.
    assert booster.current_iteration() == booster.best_iteration
    assert booster.best_score["val"]["binary_logloss"] == pytest.approx(min(losses))
    # No alert: boosting runs to the end.
    dtrain, dvalid = datasets(data)
    quiet = TEViDLightGBMCallback(StubDiagnostician(at=None))
    b2 = lgb.train(params(), dtrain, 40, valid_sets=[dvalid], callbacks=[quiet])
    assert b2.current_iteration() == 40 and quiet.stopped_at is None
    # prune_on decides which alerts stop.
    dtrain, dvalid = datasets(data)
    other = TEViDLightGBMCallback(StubDiagnostician(at=3, label=INSTABILITY))
    lgb.train(params(), dtrain, 10, valid_sets=[dvalid], callbacks=[other])
    assert other.alert == INSTABILITY and other.stopped_at is None


def test_callback_without_validation_data_and_with_cv(data):
    dtrain, _ = datasets(data)
    cb = TEViDLightGBMCallback(StubDiagnostician(at=4))
    booster = lgb.train(params(), dtrain, 50, callbacks=[cb])
    assert cb.stopped_at == 4 and booster.best_iteration == booster.current_iteration() == 5
    dtrain, _ = datasets(data)
    with pytest.raises(TypeError, match="lightgbm.cv"):
        lgb.cv(params(), dtrain, 3, nfold=2, callbacks=[TEViDLightGBMCallback(
            StubDiagnostician(at=None))])
    dtrain, dvalid = datasets(data)
    with pytest.raises(ValueError, match="not among"):
        lgb.train(params(), dtrain, 3, valid_sets=[dvalid], callbacks=[
            TEViDLightGBMCallback(StubDiagnostician(at=None), metric="auc")])


def test_a_failing_diagnostician_never_ends_the_training(data, caplog):
    # SMAC's setup_logging(logging_level=40), run by test_smac.py in the same process, leaves
    # the root logger at ERROR; the warning under test must not depend on test order.
    caplog.set_level(logging.WARNING, logger="tevid_hpo")
    class Broken(StubDiagnostician):
        def update(self, frame, step=None):
            if step == 3:
                raise RuntimeError("boom")
            return super().update(frame, step)

    def objective(trial):
        dtrain, dvalid = datasets(data)
        cb = TEViDLightGBMCallback(Broken(at=None), trial)
        lgb.train(params(), dtrain, 10, valid_sets=[dvalid], callbacks=[cb])
        assert "boom" in cb.error and len(cb.history) == 3
        return 0.5

    study = optuna.create_study()
    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE and len(t.intermediate_values) == 10
    assert "boom" in t.user_attrs["tevid_error"] and "diagnosis disabled" in caplog.text


def test_callback_with_a_real_diagnostician(toy_diagnostician, data):
    # The toy's weights on real GBDT frames, with a permissive calibration (never abstain,
    # any Overfitting probability confirms): exercises the model, the window, the 3-consecutive
    # rule and the stop end to end.
    diag = Diagnostician(toy_diagnostician.model, Calibration(
        tau_u=1.0, tau_c={OVERFITTING: 0.0, INSTABILITY: 1.0}), device="cpu")
    dtrain, dvalid = datasets(data)
    cb = TEViDLightGBMCallback(diag)
    lgb.train(params(), dtrain, 50, valid_sets=[dvalid], callbacks=[cb])
    # The first W - 1 = 3 diagnoses are withheld (no verdict before the window holds real
    # frames, even at tau_u = 1), then 3 consecutive confirmations: iteration 3 + 2.
    assert cb.stopped_at == 5
    assert cb.frames.frames[0].tensor.shape == (6, 16, 16)     # the toy's frame size
    assert [h["step"] for h in cb.history] == [0, 1, 2, 3, 4, 5]
    assert cb.reason["label"] == OVERFITTING and diag.first_alert == (5, OVERFITTING)
    # Its own calibration (Healthy vs Instability) never confirms Overfitting.
    dtrain, dvalid = datasets(data)
    calm = TEViDLightGBMCallback(toy_diagnostician)
    lgb.train(params(), dtrain, 20, valid_sets=[dvalid], callbacks=[calm])
    assert calm.stopped_at is None and len(calm.history) == 20


def test_callback_as_an_optuna_pruning_callback(data):
    def objective(trial):
        at = trial.suggest_categorical("alert_at", [None, 8])
        dtrain, dvalid = datasets(data)
        cb = TEViDLightGBMCallback(StubDiagnostician(at=at), trial, "binary_logloss", "valid_0")
        booster = lgb.train(params(), dtrain, 25, valid_sets=[dvalid], callbacks=[cb])
        return booster.best_score["valid_0"]["binary_logloss"]

    study = optuna.create_study(direction="minimize", pruner=TEViDPruner(wrapped=None))
    study.enqueue_trial({"alert_at": None})
    study.enqueue_trial({"alert_at": 8})
    study.optimize(objective, n_trials=2)
    done, pruned = study.trials
    assert done.state == optuna.trial.TrialState.COMPLETE
    assert len(done.intermediate_values) == 25
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert max(pruned.intermediate_values) == 8
    reason = prune_reason(pruned)
    assert reason["pruner"] == "TEViD" and reason["label"] == OVERFITTING
    assert reason["report_step"] == 8
    state = pruned.user_attrs[USER_ATTR]
    assert state["alert"] == OVERFITTING and state["version"] == 1
    # The stored attribute is what TEViDPruner reads: it prunes the trial too.
    assert TEViDPruner(wrapped=None).prune(study, pruned)


def test_callback_defers_to_the_studys_pruner_and_checks_direction(data):
    def objective(trial):
        dtrain, dvalid = datasets(data)
        cb = TEViDLightGBMCallback(StubDiagnostician(at=None), trial)
        lgb.train(params(), dtrain, 25, valid_sets=[dvalid], callbacks=[cb])
        return 0.0

    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED and list(t.intermediate_values) == [0]
    maximize = optuna.create_study(direction="maximize")
    with pytest.raises(ValueError, match="direction"):
        maximize.optimize(objective, n_trials=1, catch=())


def test_cost_rule_spares_the_leader_at_a_belief_that_stops_a_trailing_trial(data):
    # Issue 25: with an Optuna trial the standing is the run's validation loss at the round
    # among the study's other trials' at that round; standalone there is none (unknown).
    belief = contested_belief(1, 10, OVERFITTING)      # every round, from the first (done = 1)

    class Believer(StubDiagnostician):
        def update(self, frame, step=None):
            super().update(frame, step)
            return dataclasses.replace(belief, step=step)

    def boost(rival_loss=None):
        trial = None
        if rival_loss is not None:
            study = optuna.create_study(direction="minimize")
            for _ in range(2):
                study.add_trial(optuna.trial.create_trial(
                    value=rival_loss, intermediate_values=dict.fromkeys(range(10), rival_loss)))
            trial = study.ask()
        cb = TEViDLightGBMCallback(Believer(at=None), trial, "binary_logloss", "valid_0",
                                   cost=CostModel())
        dtrain, dvalid = datasets(data)
        with contextlib.suppress(optuna.TrialPruned):
            lgb.train(params(), dtrain, 10, valid_sets=[dvalid], callbacks=[cb])
        return cb.reason

    alone = boost()
    assert alone["rule"] == "cost" and alone["standing"] is None and alone["report_step"] == 0
    trailing = boost(rival_loss=0.0)                    # beaten by both rivals
    assert trailing["rule"] == "cost" and trailing["standing"] == 0.0
    assert boost(rival_loss=10.0) is None               # beats both: spared every round


# ----------------------------------------------------------------------------- pilot
def test_divergence_rule():
    assert gbdt_pilot.divergence([1.0, 0.9, 0.8, 0.85, 0.86, 0.87]) == (2, 5)
    assert gbdt_pilot.divergence([1.0, 0.9, 0.8, 0.85, 0.79, 0.85, 0.86]) is None   # reset
    assert gbdt_pilot.divergence([1.0, 0.9, 0.8, 0.81, 0.81, 0.81]) is None          # < 2 %
    assert gbdt_pilot.divergence([1.0, 1.1], delta=0.05, patience=1) == (0, 1)


def test_alert_threshold_maximises_calibration_accuracy_with_a_margin():
    # Saturated evidence: a healthy and an overfitting run share the top score. The FAR rule
    # would put the threshold just above it (no healthy alarm, one stop); accuracy prefers the
    # widest best interval, (0.5, 0.80], and its midpoint.
    scores = [0.03, 0.04, 0.8521, 0.80, 0.8521, 0.8523]
    tau, acc = gbdt_pilot.choose_alert_threshold(scores, [0, 0, 0, 1, 1, 1])
    assert tau == pytest.approx(0.65) and acc == pytest.approx(5 / 6)
    assert gbdt_pilot.choose_alert_threshold(scores, [0, 0, 0, 1, 1, 1], floor=0.7)[0] == \
        pytest.approx(0.75)
    # All runs healthy: the threshold stays above every score (never stop), within [floor, 1].
    tau, acc = gbdt_pilot.choose_alert_threshold([0.2, 0.95], [0, 0])
    assert 0.95 < tau <= 1.0 and acc == 1.0
    # Runs without any qualifying window (-inf) never stop.
    tau, acc = gbdt_pilot.choose_alert_threshold([-math.inf, 0.9], [0, 1])
    assert 0.5 <= tau <= 0.9 and acc == 1.0


def test_stop_scores_follow_the_alert_rule_and_skip_the_last_round():
    from core_models.calibration import evidential_probs, first_alert

    rng = np.random.default_rng(3)
    logits = [rng.normal(0, 4, size=(30, len(KNOWN_LABELS))) for _ in range(6)]
    recs = [SimpleNamespace(steps=np.arange(30)) for _ in logits]
    scores = gbdt_pilot.stop_scores(logits, recs, 1.3, 0.6, 2, rounds=30)
    for z, score in zip(logits, scores):
        p, u = evidential_probs(z, 1.3)
        for tau in (0.5, 0.6, 0.7):
            hit = first_alert(p, u, {OVERFITTING: tau}, 0.6, k=2)
            assert (hit is not None and hit[0] < 29) == (score >= tau)


def test_pilot_quick_end_to_end(toy_checkpoint, tmp_path, capsys, monkeypatch):
    seen: dict[str, set[str]] = {}
    real = gbdt_pilot.finetune_diagnostician

    def spy(checkpoint, train, calib, cfg, quiet=False):
        seen["train"] = {r.run.run_id for r in train}
        seen["calib"] = {r.run.run_id for r in calib}
        return real(checkpoint, train, calib, cfg, quiet=quiet)

    monkeypatch.setattr(gbdt_pilot, "finetune_diagnostician", spy)
    result = gbdt_pilot.main(["--quick", "--checkpoint", str(toy_checkpoint), "--out",
                              str(tmp_path / "gbdt"), "--quiet"])
    out = capsys.readouterr().out
    # No tuning on the test set: fine-tuning, epoch selection and every calibrated setting see
    # only fine-tuning and calibration runs; the held-out runs are evaluated, nothing else.
    held_out = {r["run_id"] for r in result["rows"]}
    assert seen["train"] and seen["calib"] and held_out
    assert not (held_out & (seen["train"] | seen["calib"])) and not seen["train"] & seen["calib"]
    info = result["finetune"]
    assert set(info["calib_runs"]) == seen["calib"]
    assert 0 <= info["selected_epoch"] < 2 and len(info["val_acc"]) == 2
    point = info["operating_point"]
    assert info["tau_c"][OVERFITTING] == point["accuracy_tau"] >= 0.5
    assert point["accuracy_calib_acc"] >= point["far_calib_acc"]
    assert "| TEViD (fine-tuned on GBDT frames) |" in out and "early_stopping(5)" in out
    rows = result["rows"]
    assert len(rows) == result["runs"]["test"] >= 4
    assert {r["label"] for r in rows} == {HEALTHY, OVERFITTING}
    assert all(r["tevid_rounds"] <= 40 and r["es_rounds"] <= 40 for r in rows)
    s = result["summary"]
    assert 0.0 <= s["tevid"]["accuracy"] <= 1.0 and 0.0 <= s["es"]["accuracy"] <= 1.0
    assert result["finetune"]["clip_labels"].keys() == {0, 1}
    diag = Diagnostician.from_pretrained(tmp_path / "gbdt", device="cpu")
    assert diag.metadata["kind_of_runs"] == "lightgbm" and diag.profile.frame_size == 16
    # The saved GBDT diagnostician plugs into the callback.
    cfg = gbdt_pilot.PilotConfig.quick()
    run = gbdt_pilot.sample_runs(cfg)[0]
    dtrain, dvalid = gbdt_pilot._datasets(cfg, run)
    cb = TEViDLightGBMCallback(tmp_path / "gbdt")
    lgb.train(run.params(), dtrain, 10, valid_sets=[dvalid], callbacks=[cb])
    assert len(cb.history) == cb.frames.tensor().shape[0] == (cb.stopped_at or 9) + 1

    # Rerunning with the same --out, base checkpoint and settings reuses the fine-tuned model.
    seen.clear()
    again = gbdt_pilot.main(["--quick", "--checkpoint", str(toy_checkpoint), "--out",
                             str(tmp_path / "gbdt"), "--quiet"])
    assert not seen and again["summary"] == result["summary"]
    assert again["finetune"]["operating_point"] == json.loads(json.dumps(point))


def test_pilot_far_operating_point_and_last_epoch(toy_checkpoint):
    result = gbdt_pilot.main(["--quick", "--checkpoint", str(toy_checkpoint), "--quiet",
                              "--operating-point", "far", "--last-epoch"])
    info = result["finetune"]
    assert info["tau_c"][OVERFITTING] == info["operating_point"]["far_tau"]
    assert "accuracy_tau" not in info["operating_point"]
    assert info["selected_epoch"] == 1 and info["val_acc"] == [None, None]


def test_pilot_needs_a_checkpoint(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gbdt_pilot, "DEFAULT_CHECKPOINT", tmp_path / "missing" / "default")
    with pytest.raises(SystemExit):
        gbdt_pilot.main(["--quick"])
    assert "no shipped TEViD checkpoint" in capsys.readouterr().err

