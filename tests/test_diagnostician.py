"""Streaming Diagnostician, its checkpoint format, and the calibration functions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tevid_hpo.diagnostician as diag_mod
from core_models.calibration import (
    ALERT_LABELS,
    Calibration,
    ConsecutiveAlert,
    RunPredictions,
    calibrate,
    evidential_probs,
    false_alarm_rate,
    first_alert,
    fit_abstention_threshold,
    fit_class_thresholds,
    fit_temperature,
    run_alert_scores,
)
from core_models.edl import evidential_output
from core_models.profiles import get_profile
from core_models.telemetry import NUM_FEATURES
from core_models.tevid import TEViD
from data_factory.frames import Frame
from data_factory.labels import INSTABILITY, KNOWN_LABELS, LABELS, UNKNOWN
from tevid_hpo.diagnostician import Diagnosis, Diagnostician

TINY = get_profile("tiny")
S = TINY.frame_size


def frames(n: int, seed: int = 0, start: int = 0) -> list[Frame]:
    g = torch.Generator().manual_seed(seed)
    return [Frame(torch.randn(6, S, S, generator=g).to(torch.bfloat16), step=(start + i) * 10,
                  epoch=(start + i) // 4) for i in range(n)]


def diagnostician(**calib) -> Diagnostician:
    torch.manual_seed(0)
    return Diagnostician(TEViD("tiny"), Calibration(**calib), device="cpu")


def biased(logit_bias: list[float], **calib) -> Diagnostician:
    """A diagnostician whose head ignores the input and emits fixed evidence logits."""
    d = diagnostician(**calib)
    torch.nn.init.zeros_(d.model.head.weight)
    d.model.head.bias.data = torch.tensor(logit_bias)
    return d


# ----------------------------------------------------------------------------- streaming
def test_diagnosis_fields_and_labels():
    d = diagnostician()
    out = d.update(frames(1)[0])
    assert isinstance(out, Diagnosis)
    assert out.step == 0 and out.epoch == 0 and set(out.probs) == set(KNOWN_LABELS)
    assert sum(out.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert out.label in LABELS and out.confidence == pytest.approx(max(out.probs.values()))
    assert d.labels == LABELS
    json.dumps(out.to_dict())                                   # JSON-able for trial attrs


def test_streaming_diagnosis_at_t_ignores_later_frames():
    base = frames(9, seed=1)
    other = base[:5] + frames(4, seed=2, start=5)               # same up to t=4, then different
    a, b = diagnostician(), diagnostician()
    da = [a.update(f) for f in base]
    db = [b.update(f) for f in other]
    assert da[:5] == db[:5]
    assert da[5].probs != db[5].probs


def test_window_is_the_last_w_frames_left_padded_with_the_first():
    d = diagnostician(burn_in=1)                    # a verdict from the first frame on
    fs = frames(7, seed=3)
    model = d.model

    def direct(window: list[Frame]) -> float:
        clip = torch.stack([f.tensor.float() for f in window])[None]
        with torch.no_grad():
            return float(model(clip).vacuity[0])

    first = d.update(fs[0])
    assert first.vacuity == pytest.approx(direct([fs[0]] * TINY.window), abs=1e-6)
    second = d.update(fs[1])
    assert second.vacuity == pytest.approx(direct([fs[0]] * 3 + [fs[1]]), abs=1e-6)
    for f in fs[2:]:
        last = d.update(f)
    assert last.vacuity == pytest.approx(direct(fs[-TINY.window:]), abs=1e-6)
    d.reset()
    assert d.update(fs[0]) == first


def test_alert_needs_three_consecutive_confident_predictions():
    d = biased([-10.0, -10.0, 80.0, -10.0, -10.0], burn_in=1)   # always confident Instability
    f = frames(5)
    outs = [d.update(x) for x in f]
    assert [o.label for o in outs] == [INSTABILITY] * 5
    assert [o.alert for o in outs] == [None, None, INSTABILITY, INSTABILITY, INSTABILITY]
    assert d.first_alert == (20, INSTABILITY)


def with_loss(fs: list[Frame], losses: list[float | None]) -> list[Frame]:
    return [Frame(f.tensor, step=f.step, epoch=f.epoch,
                  scalars={} if x is None else {"loss": x}) for f, x in zip(fs, losses)]


def test_loss_confirmation_vetoes_instability_while_the_loss_keeps_falling():
    """A confident Instability streak is no alert while the training loss (mean of 3 captures)
    is at its best; the first capture whose mean is ``loss_confirm`` x the best confirms it."""
    inst = [-10.0, -10.0, 80.0, -10.0, -10.0]
    falling = [2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    d = biased(inst, burn_in=4, loss_confirm=1.5)
    outs = [d.update(x) for x in with_loss(frames(9), falling)]
    assert [o.label for o in outs][3:] == [INSTABILITY] * 6 and d.first_alert is None
    d.reset()
    rising = [2.0, 1.5, 1.2, 1.0, 1.0, 1.6, 2.5, 4.0, 8.0]   # mean of 3: 1.2 < 1.6, then 1.7
    outs = [d.update(x) for x in with_loss(frames(9), rising)]
    assert [o.alert for o in outs] == [None] * 6 + [INSTABILITY] * 3
    assert d.first_alert == (60, INSTABILITY)
    # Without the check (the default, 0) the falling run alerts once the rule confirms it.
    d0 = biased(inst, burn_in=4)
    [d0.update(x) for x in with_loss(frames(9), falling)]
    assert d0.first_alert == (50, INSTABILITY)


def test_loss_confirmation_leaves_other_alerts_and_unknown_losses_alone():
    falling = [2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7]
    over = biased([-10.0, 80.0, -10.0, -10.0, -10.0], burn_in=4, loss_confirm=1.5)
    [over.update(x) for x in with_loss(frames(7), falling)]
    assert over.first_alert == (50, "Overfitting")      # validation shows it, not training loss
    inst = [-10.0, -10.0, 80.0, -10.0, -10.0]
    blind = biased(inst, burn_in=4, loss_confirm=1.5)
    [blind.update(x) for x in with_loss(frames(7), [None] * 7)]
    assert blind.first_alert == (50, INSTABILITY)       # no loss given: nothing to veto with
    nan = biased(inst, burn_in=4, loss_confirm=1.5)
    [nan.update(x) for x in with_loss(frames(7), falling[:6] + [float("nan")])]
    assert nan.first_alert == (60, INSTABILITY)         # vetoed at 0.8, a non-finite loss confirms


def test_loss_confirmation_state_survives_a_pause_and_the_checkpoint():
    inst = [-10.0, -10.0, 80.0, -10.0, -10.0]
    losses = [2.0, 1.5, 1.2, 1.0, 1.0, 1.0]
    d = biased(inst, burn_in=4, loss_confirm=1.5)
    [d.update(x) for x in with_loss(frames(5), losses[:5])]
    e = biased(inst, burn_in=4, loss_confirm=1.5)
    e.load_state_dict(json.loads(json.dumps(d.state_dict())))
    f = with_loss(frames(1, start=5), [1.0])[0]
    assert e.update(f).alert is None and d.update(f).alert is None   # both: 1.0 is no rise
    assert e._loss_check.best == d._loss_check.best
    assert Calibration.from_dict(Calibration(loss_confirm=1.5).to_dict()).loss_confirm == 1.5
    assert Calibration.from_dict({}).loss_confirm == 0.0                       # older checkpoints
    with pytest.raises(ValueError, match="loss_confirm"):
        diagnostician(loss_confirm=-1.0)


def test_no_verdict_before_the_window_holds_real_frames():
    # Issue 24, point 1: with the default burn-in (the whole window W) the first W - 1
    # diagnoses are withheld — not run through the model, no class, no alert — even from a
    # model that would confidently say Instability on any input.
    d = biased([-10.0, -10.0, 80.0, -10.0, -10.0])
    assert d.evidence_frames == TINY.window
    outs = [d.update(x) for x in frames(TINY.window + 3)]
    early, late = outs[:TINY.window - 1], outs[TINY.window - 1:]
    for o in early:
        assert o.withheld and o.abstained and o.label == UNKNOWN and o.alert is None
        assert o.vacuity == 1.0 and list(o.probs.values()) == pytest.approx([1 / 5] * 5)
    assert not any(o.withheld for o in late) and late[0].label == INSTABILITY
    # The consecutive rule starts counting at the first real verdict.
    assert [o.alert for o in late] == [None, None, INSTABILITY, INSTABILITY]
    assert d.first_alert == (10 * (TINY.window + 1), INSTABILITY)
    with pytest.raises(ValueError, match="burn_in"):
        diagnostician(burn_in=-1)
    # A longer burn-in than the window is allowed (wait for more of the run).
    assert diagnostician(burn_in=TINY.window + 2).evidence_frames == TINY.window + 2


def test_high_vacuity_abstains_to_unknown_and_never_alerts():
    d = biased([-10.0] * 5)                                     # no evidence at all
    outs = [d.update(x) for x in frames(5)]
    assert all(o.label == UNKNOWN and o.abstained and o.alert is None for o in outs)
    assert outs[0].vacuity > 0.99


def test_healthy_confirmations_are_not_alerts():
    d = biased([30.0, -10.0, -10.0, -10.0, -10.0])
    assert all(d.update(x).alert is None for x in frames(5))


def test_non_finite_frames_are_clamped_and_flagged():
    d = diagnostician()
    bad = torch.full((6, S, S), float("nan"))
    bad[0, 0, 0] = float("inf")
    bad[1, 0, 0] = -float("inf")
    out = d.update(Frame(bad.to(torch.bfloat16), step=0))
    assert not out.finite and np.isfinite(out.vacuity)
    assert all(np.isfinite(v) for v in out.probs.values())
    assert d.update(torch.zeros(6, S, S)).finite                # bare tensors work too
    with pytest.raises(ValueError):
        d.update(torch.zeros(6, S + 1, S + 1))


# ----------------------------------------------------------------------------- checkpoints
def test_save_pretrained_round_trip_identical_and_never_unpickles(tmp_path, request):
    calib = Calibration(temperature=1.3, tau_u=0.5,
                        tau_c={c: 0.7 + 0.05 * i for i, c in enumerate(ALERT_LABELS)})
    d = diagnostician(**calib.to_dict())
    path = d.save_pretrained(tmp_path / "ckpt", corpus_hash="abc", split_hash="def",
                             val_metrics={"auprc": 0.5})
    cfg = json.loads((tmp_path / "ckpt.json").read_text())
    for key in ("profile", "labels", "temperature", "tau_u", "tau_c", "corpus_hash", "split_hash",
                "created", "val_metrics", "normalization", "consecutive"):
        assert key in cfg, key
    assert cfg["labels"] == list(KNOWN_LABELS) and cfg["tau_u"] == 0.5

    request.getfixturevalue("no_unpickling")   # from here on, any unpickling fails the test
    loaded = Diagnostician.from_pretrained(path, device="cpu")
    assert loaded.calibration == d.calibration and loaded.model.temperature == pytest.approx(1.3)
    assert loaded.metadata["corpus_hash"] == "abc"
    for f in frames(6, seed=4):
        assert loaded.update(f) == d.update(f)
    # A directory holding default.* loads too.
    d.save_pretrained(tmp_path / "pkg" / "default")
    assert Diagnostician.from_pretrained(tmp_path / "pkg", device="cpu").window == TINY.window


def test_from_pretrained_default_missing_names_path_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(diag_mod, "DEFAULT_CHECKPOINT", tmp_path / "checkpoints" / "default")
    with pytest.raises(FileNotFoundError, match="make pipeline") as err:
        Diagnostician.from_pretrained()
    assert "default.safetensors" in str(err.value)
    # Once something is there, the default loads.
    diagnostician().save_pretrained(tmp_path / "checkpoints" / "default")
    assert Diagnostician.from_pretrained(device="cpu").profile == TINY


def test_from_pretrained_profile_name_warns_untrained():
    with pytest.warns(UserWarning, match="UNTRAINED"):
        d = Diagnostician.from_pretrained("tiny", device="cpu")
    assert d.window == TINY.window


# ----------------------------------------------------------------------------- calibration
def test_consecutive_rule_resets_on_abstention_and_low_probability():
    rule = ConsecutiveAlert({INSTABILITY: 0.6}, tau_u=0.35)
    hi = np.array([0.1, 0.05, 0.7, 0.1, 0.05])
    lo = np.array([0.5, 0.05, 0.3, 0.1, 0.05])
    seq = [(hi, 0.1), (hi, 0.1), (hi, 0.5),                     # 3rd abstains: streak broken
           (hi, 0.1), (lo, 0.1),                                # low p: broken again
           (hi, 0.1), (hi, 0.1), (hi, 0.1), (hi, 0.1)]
    assert [rule.update(p, u) for p, u in seq] == [None] * 7 + [INSTABILITY] * 2
    probs = np.stack([p for p, _ in seq])
    vac = np.array([u for _, u in seq])
    assert first_alert(probs, vac, {INSTABILITY: 0.6}) == (7, INSTABILITY)
    assert run_alert_scores(probs, vac)[2] == pytest.approx(0.7)


def test_fit_temperature_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 6, (4000, 5))
    probs, _ = evidential_probs(logits, 3.0)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    labels[:50] = -1                                             # Unknown clips are ignored
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.15)


def test_fit_abstention_threshold_cases():
    u = np.array([0.05, 0.1, 0.2, 0.3, 0.5, 0.9])
    correct = np.array([True, True, False, True, False, False])
    assert fit_abstention_threshold(u, correct) == 0.35                     # paper default
    assert fit_abstention_threshold(u, correct, max_risk=0.0) == 0.1
    assert fit_abstention_threshold(u, correct, max_risk=0.25) == 0.3       # 1 error in 4
    assert fit_abstention_threshold(u, min_coverage=0.5) == 0.2
    with pytest.warns(UserWarning):
        tau = fit_abstention_threshold(u, np.zeros(6, bool), max_risk=0.0)
    assert (u > tau).all()                                                  # abstain on all


def _run(p_instability: float, n: int = 12, label: str = "Healthy", seed: int = 0
         ) -> RunPredictions:
    rng = np.random.default_rng(seed)
    p_inst = np.clip(p_instability + rng.normal(0, 0.02, n), 0.01, 0.97)
    probs = np.zeros((n, 5))
    probs[:, 2] = p_inst
    probs[:, 0] = 1 - p_inst - 0.03
    probs[:, [1, 3, 4]] = 0.01
    return RunPredictions(probs, np.full(n, 0.1), label)


def test_class_thresholds_meet_the_false_alarm_budget_and_are_tight():
    runs = [_run(0.2 + 0.7 * i / 39, seed=i) for i in range(40)]            # healthy, graded
    runs += [_run(0.95, label=INSTABILITY, seed=99)]                       # ignored by the fit
    tau = fit_class_thresholds(runs, tau_u=0.35, target_far=0.05)
    assert set(tau) == set(ALERT_LABELS)
    far = false_alarm_rate(runs, tau, tau_u=0.35)
    assert far <= 0.05
    healthy = [r for r in runs if r.label == "Healthy"]
    assert sum(first_alert(r.probs, r.vacuity, tau) is not None for r in healthy) == 2   # 5 % of 40
    lower = dict(tau, **{INSTABILITY: tau[INSTABILITY] - 0.02})
    assert false_alarm_rate(runs, lower) > 0.05                             # tight
    assert tau[ALERT_LABELS[0]] == 0.5                                      # floor when quiet
    with pytest.warns(UserWarning):
        assert fit_class_thresholds([_run(0.9, label=INSTABILITY)]) == {
            c: 0.9 for c in ALERT_LABELS}


def test_calibrate_end_to_end_on_constructed_predictions():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)
    logits = 4.0 * np.eye(5)[y] + rng.normal(0, 1, (300, 5))
    runs = [(rng.normal(0, 1, (10, 5)) + 3.0 * np.eye(5)[0], "Healthy") for _ in range(20)]
    cal = calibrate(logits, y, runs, target_far=0.05)
    assert cal.temperature > 0 and cal.tau_u == 0.35 and cal.consecutive == 3
    healthy = [RunPredictions.from_logits(z, lab, cal.temperature) for z, lab in runs]
    assert false_alarm_rate(healthy, cal.tau_c, cal.tau_u) <= 0.05
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


def test_calibrate_keeps_the_budget_on_every_held_out_group():
    """budget_groups (issue 24 point 4): a held-out set unlike the factory's val runs keeps its
    own false-alarm budget; pooled with 40 calm runs, its three odd runs would all alarm."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 300)
    logits = 4.0 * np.eye(5)[y] + rng.normal(0, 1, (300, 5))
    calm = [(rng.normal(0, 1, (10, 5)) + 3.0 * np.eye(5)[0], "Healthy") for _ in range(40)]
    odd = np.eye(5)[KNOWN_LABELS.index(INSTABILITY)]
    unlike = [(rng.normal(0, 1, (10, 5)) + 3.0 * np.eye(5)[0] + 8.0 * odd * (i < 3),
               "Healthy") for i in range(10)]     # three of ten look unstable (to a factory)
    pooled = calibrate(logits, y, calm + unlike, target_far=0.1)
    grouped = calibrate(logits, y, calm, target_far=0.1, budget_groups=[unlike, []])

    def far(cal, runs):
        return false_alarm_rate([RunPredictions.from_logits(z, lab, cal.temperature)
                                 for z, lab in runs], cal.tau_c, cal.tau_u)

    assert far(pooled, unlike) > 0.1               # the pooled budget is spent on the odd group
    assert far(grouped, unlike) <= 0.1 and far(grouped, calm) <= 0.1
    assert all(grouped.tau_c[c] >= pooled.tau_c[c] for c in ALERT_LABELS)
    # a group with no healthy run has no budget to keep: it changes nothing
    sick = [(z, INSTABILITY) for z, _ in unlike]
    assert calibrate(logits, y, calm, target_far=0.1, budget_groups=[sick]) == \
        calibrate(logits, y, calm, target_far=0.1)


def _straightforward_probs(model: TEViD, clip: torch.Tensor,
                           telemetry: torch.Tensor | None = None) -> torch.Tensor:
    """TEViD as written before issue 22's speed-up: the Conv3d tubelet embedding and every
    block in full through timm's modules, [CLS] read after the last block."""
    x = model.input_norm(clip) * model.channel_mask
    x = model.patch_embed.proj(x.permute(0, 2, 1, 3, 4))            # b d t h w
    x = model.pos_embed(x.flatten(3).permute(0, 2, 3, 1))           # b t (h w) d
    tele = model._telemetry_tokens(telemetry, x.shape[0], x.device)
    if tele is not None:
        x = torch.cat([x, tele], dim=2)
    cls = model.cls_token.expand(x.shape[0], -1, -1)
    for blk in model.blocks:
        b, t, n, d = x.shape
        xt = blk.temporal_attn(blk.temporal_norm(x.transpose(1, 2).reshape(b * n, t, d)))
        x = x + blk.temporal_fc(xt.reshape(b, n, t, d).transpose(1, 2))
        xs = blk.attn(blk.norm1(torch.cat([cls.expand(b, t, d).reshape(b * t, 1, d),
                                           x.reshape(b * t, n, d)], dim=1)))
        cls = cls + xs[:, :1].reshape(b, t, 1, d).mean(1)
        x = x + xs[:, 1:].reshape(b, t, n, d)
        tokens = torch.cat([cls, x.flatten(1, 2)], dim=1)
        tokens = tokens + blk.mlp(blk.norm2(tokens))
        cls, x = tokens[:, :1], tokens[:, 1:].view_as(x)
    logits = model.head(model.norm(cls[:, 0]))
    return evidential_output(logits, model.temperature).probs.double().numpy()


@pytest.mark.parametrize("profile,telemetry", [("cpu", 0), ("tiny", NUM_FEATURES)])
def test_fast_update_path_gives_the_straightforward_probabilities(profile, telemetry):
    """Issue 22: the last block computes only [CLS], the tubelet embedding is one matmul and the
    eval blocks call the kernels directly; the diagnoses must not move (1e-6)."""
    torch.manual_seed(0)
    p = get_profile(profile)
    model = TEViD(profile, telemetry=telemetry).eval()
    for blk in model.blocks:                        # a trained model's temporal branch is live
        torch.nn.init.normal_(blk.temporal_fc.weight, std=0.05)
    d = Diagnostician(model, Calibration(burn_in=1), device="cpu")
    g = torch.Generator().manual_seed(4)
    stream = [Frame(torch.randn(6, p.frame_size, p.frame_size, generator=g).to(torch.bfloat16),
                    step=i, scalars={"loss": 2.0 / (i + 1), "lr": 0.1, "grad_norm": 1.0 + i})
              for i in range(p.window + 3)]
    with torch.inference_mode():
        for i, f in enumerate(stream):
            out = d.update(f)
            tele = torch.stack(tuple(d._telemetry))[None] if telemetry else None
            want = _straightforward_probs(model, torch.stack(tuple(d._frames))[None], tele)[0]
            np.testing.assert_allclose([out.probs[c] for c in KNOWN_LABELS], want, atol=1e-6,
                                       rtol=0, err_msg=f"update {i}")
        # the cached tubelets follow in-place weight changes and a resumed state
        model.patch_embed.proj.weight.mul_(1.5)
        resumed = Diagnostician(model, Calibration(burn_in=1), device="cpu")
        resumed.load_state_dict(d.state_dict())
        for f in stream[:3]:
            for diag in (d, resumed):
                out = diag.update(f)
                tele = torch.stack(tuple(diag._telemetry))[None] if telemetry else None
                want = _straightforward_probs(model, torch.stack(tuple(diag._frames))[None],
                                              tele)[0]
                np.testing.assert_allclose([out.probs[c] for c in KNOWN_LABELS], want,
                                           atol=1e-6, rtol=0)


def test_calibrate_fits_the_class_thresholds_under_a_fixed_abstention_gate():
    """tau_u chosen elsewhere (issue 24 point 4): stored as given, and the class thresholds keep
    the budget under it. A wider gate lets weakly evidenced healthy diagnoses count, so it can
    only raise the thresholds."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 300)
    logits = 4.0 * np.eye(5)[y] + rng.normal(0, 1, (300, 5))
    odd = np.eye(5)[KNOWN_LABELS.index(INSTABILITY)]
    # healthy runs with a weakly evidenced Instability lean: abstained at 0.35, counted at 0.9
    runs = [(rng.normal(0, 0.01, (10, 5)) - 0.5 + 0.7 * odd, "Healthy") for _ in range(20)]
    narrow = calibrate(logits, y, runs, target_far=0.05)
    wide = calibrate(logits, y, runs, target_far=0.05, tau_u=0.9)
    assert narrow.tau_u == 0.35 and wide.tau_u == 0.9
    assert wide.tau_c[INSTABILITY] > narrow.tau_c[INSTABILITY]
    preds = [RunPredictions.from_logits(z, lab, wide.temperature) for z, lab in runs]
    assert false_alarm_rate(preds, wide.tau_c, wide.tau_u) <= 0.05
    with pytest.raises(ValueError, match="not both"):
        calibrate(logits, y, runs, tau_u=0.5, max_risk=0.1)
    with pytest.raises(ValueError, match="tau_u must be"):
        calibrate(logits, y, runs, tau_u=0.0)
