"""TrialMonitor: in-process capture + diagnosis, what it writes to the trial, failure handling."""

from __future__ import annotations

import copy
import json
import logging
import math

import optuna
import pytest
import torch
from torch import nn

import tevid_hpo.diagnostician as diag_mod
from core_models.calibration import ALERT_LABELS, Calibration
from data_factory.architectures import small_cnn
from data_factory.labels import INSTABILITY, KNOWN_LABELS
from tevid_hpo.diagnostician import Diagnosis, Diagnostician
from tevid_hpo.monitor import ERROR_ATTR, NONFINITE_LOSS, USER_ATTR, WRITE_ATTEMPTS, TrialMonitor

BATCH = 32


def run_steps(model, opt, data, steps, mon=None, start=0, loss_fn=None):
    """Train ``steps`` deterministic steps; returns what ``mon.step`` returned per step."""
    out = []
    x, y = data.x_train, data.y_train
    for k in range(start, start + steps):
        i = (k * BATCH) % (len(x) - BATCH)
        loss = nn.functional.cross_entropy(model(x[i:i + BATCH]), y[i:i + BATCH])
        opt.zero_grad()
        loss.backward()
        value = loss.item() if loss_fn is None else loss_fn(k, loss.item())
        out.append(mon.step(loss=value) if mon is not None else None)
        opt.step()
    return out


def cnn(seed=0):
    torch.manual_seed(seed)
    return small_cnn(in_channels=1, num_classes=10)


def trial():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study().ask()


def silent(toy: Diagnostician) -> Diagnostician:
    """The toy model with alert thresholds no probability reaches: TEViD never alerts."""
    return Diagnostician(toy.model, Calibration(tau_c={c: 1.0 for c in ALERT_LABELS}),
                         device="cpu")


# ----------------------------------------------------------------------------- diagnosis
@pytest.mark.parametrize("asynchronous", [False, True])
def test_diagnoses_on_capture_steps_and_stays_quiet_on_a_healthy_run(toy_diagnostician,
                                                                     digits_data, asynchronous):
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with TrialMonitor(model, diagnostician=toy_diagnostician, asynchronous=asynchronous) as mon:
        out = run_steps(model, opt, digits_data, 60, mon)
    assert mon.every == toy_diagnostician.profile.every == 10
    returned = [(k, d.step) for k, d in enumerate(out) if d is not None]
    # asynchronous: step k returns the diagnosis of the previous capture, awaited there
    lag = 10 if asynchronous else 0
    assert returned == [(s + lag, s) for s in range(0, 60 - lag, 10)]
    assert all(isinstance(d, Diagnosis) for d in out if d is not None)
    assert mon.alert is None and mon.error is None
    assert [h["step"] for h in mon.history] == [0, 10, 20, 30, 40, 50]
    entry = mon.history[-1]
    assert set(entry) == {"step", "epoch", "label", "probs", "vacuity", "alert", "finite"}
    assert set(entry["probs"]) == set(KNOWN_LABELS)
    assert all(v == round(v, 4) for v in entry["probs"].values())
    assert mon.last.step == 50


def test_divergent_run_raises_a_confirmed_instability(toy_diagnostician, digits_data):
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    with TrialMonitor(model, diagnostician=toy_diagnostician) as mon:
        run_steps(model, opt, digits_data, 45, mon)
    assert mon.alert == INSTABILITY
    first = mon.alerts[INSTABILITY]
    assert first["reason"] == "diagnosis" and first["step"] <= 40
    assert first["confidence"] >= toy_diagnostician.calibration.tau_c[INSTABILITY]


def test_metrics_is_a_flat_dict_of_plain_values_with_a_stable_key_set(toy_diagnostician,
                                                                      digits_data):
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    with TrialMonitor(model, diagnostician=toy_diagnostician) as mon:
        before = mon.metrics()
        run_steps(model, opt, digits_data, 45, mon)
        after = mon.metrics()
    assert set(before) == set(after)
    assert all(type(v) in (int, float, str) for v in after.values())
    assert before["tevid_alert"] == "" and before["tevid_step"] == -1
    assert before["tevid_vacuity"] == 1.0
    assert after["tevid_alert"] == INSTABILITY and after["tevid_alerted"] == 1
    assert after["tevid_step"] == 40 and after["tevid_error"] == ""
    assert after[f"tevid_p_{INSTABILITY}"] == pytest.approx(mon.last.probs[INSTABILITY])
    json.dumps(after)


# ----------------------------------------------------------------------------- non-finite loss
@pytest.mark.parametrize("patience", [1, 3])
def test_non_finite_losses_confirm_instability_even_when_tevid_is_silent(
        toy_diagnostician, digits_data, patience):
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = trial()
    bad = {5, 6, 12, 13, 14, 15}   # two NaNs, recovery, then four in a row

    def loss_fn(k, value):
        return float("nan") if k in bad else value

    with TrialMonitor(model, t, diagnostician=silent(toy_diagnostician),
                      nan_patience=patience) as mon:
        run_steps(model, opt, digits_data, 20, mon, loss_fn=loss_fn)
    assert mon.alert == INSTABILITY
    alert = mon.alerts[INSTABILITY]
    assert alert["reason"] == NONFINITE_LOSS and alert["confidence"] == 1.0
    assert alert["step"] == (5 if patience == 1 else 14)   # 5, 6 then a reset: streak of 2 only
    stored = t.study.trials[0].user_attrs[USER_ATTR]
    assert stored["alert"] == INSTABILITY
    assert stored["alerts"][INSTABILITY]["reason"] == NONFINITE_LOSS
    assert all(h["alert"] is None for h in mon.history)   # TEViD itself never alerted


def test_infinite_tensor_loss_counts_as_non_finite(toy_diagnostician, digits_data):
    model = cnn()
    with TrialMonitor(model, diagnostician=silent(toy_diagnostician), nan_patience=1) as mon:
        model(digits_data.x_train[:4]).sum().backward()
        mon.step(loss=torch.tensor(float("inf")))
    assert mon.alert == INSTABILITY and mon.alerts[INSTABILITY]["loss"] == "inf"


# ----------------------------------------------------------------------------- the trial attr
def test_trial_attribute_is_bounded_and_json(toy_diagnostician, digits_data):
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = trial()
    with TrialMonitor(model, t, every=1, diagnostician=toy_diagnostician) as mon:
        for epoch in range(3):
            run_steps(model, opt, digits_data, 40, mon, start=40 * epoch)
            mon.epoch_end(epoch)
    stored = t.study.trials[0].user_attrs[USER_ATTR]
    assert len(mon.history) == 120 and stored["n_diagnoses"] == 120
    assert len(stored["history"]) == mon.history_size == 16
    assert stored["history"] == mon.history[-16:]
    assert stored["latest"] == mon.history[-1]
    assert stored["epochs_done"] == 3 and stored["every"] == 1
    assert len(json.dumps(stored)) < 6_000


def test_writes_are_throttled_to_alerts_epochs_and_sync_every(toy_diagnostician, digits_data):
    class Recorder:
        number = 7

        def __init__(self):
            self.writes = []

        def set_user_attr(self, key, value):
            self.writes.append((key, json.loads(json.dumps(value))))

    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rec = Recorder()
    with TrialMonitor(model, rec, every=1, diagnostician=toy_diagnostician, sync_every=5) as mon:
        run_steps(model, opt, digits_data, 12, mon)   # writes after diagnoses 5 and 10
        mon.epoch_end(0)                              # one more
    assert [w[1]["n_diagnoses"] for w in rec.writes] == [5, 10, 12, 12]   # + the exit write
    assert {w[0] for w in rec.writes} == {USER_ATTR}


# ----------------------------------------------------------------------------- pause / resume
@pytest.mark.parametrize("asynchronous", [False, True])
def test_state_dict_round_trip_resumes_the_stream_exactly(toy_checkpoint, digits_data,
                                                          asynchronous):
    def load():
        return Diagnostician.from_pretrained(toy_checkpoint, device="cpu")

    model_a = cnn()
    opt_a = torch.optim.Adam(model_a.parameters(), lr=0.05)
    mon_a = TrialMonitor(model_a, diagnostician=load(), asynchronous=asynchronous)
    with mon_a:
        run_steps(model_a, opt_a, digits_data, 35, mon_a)
        state = json.loads(json.dumps(mon_a.state_dict()))          # JSON-serialisable
        model_b = cnn(seed=1)             # not a deepcopy: that would copy mon_a's hooks
        model_b.load_state_dict(model_a.state_dict())
        opt_b = torch.optim.Adam(model_b.parameters(), lr=0.05)
        opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))   # no shared moments
        mon_b = TrialMonitor(model_b, diagnostician=load(), asynchronous=asynchronous)
        mon_b.load_state_dict(state)
        with mon_b:
            out_b = run_steps(model_b, opt_b, digits_data, 30, mon_b, start=35)
        out_a = run_steps(model_a, opt_a, digits_data, 30, mon_a, start=35)
    got_a = [(d.step, d.label, d.alert) for d in out_a if d is not None]
    got_b = [(d.step, d.label, d.alert) for d in out_b if d is not None]
    assert got_a == got_b and [s for s, *_ in got_a] == ([40, 50] if asynchronous else [40, 50, 60])
    for da, db in zip([d for d in out_a if d], [d for d in out_b if d]):
        assert da.probs == pytest.approx(db.probs, abs=1e-5)
    assert mon_b.history == mon_a.history and mon_b.alerts == mon_a.alerts


def test_load_state_dict_refuses_an_active_monitor(toy_diagnostician):
    mon = TrialMonitor(cnn(), diagnostician=toy_diagnostician)
    state = mon.state_dict()
    with mon, pytest.raises(RuntimeError, match="before entering"):
        mon.load_state_dict(state)


# ----------------------------------------------------------------------------- failures
def test_a_failure_inside_monitoring_is_logged_once_and_never_breaks_training(
        toy_checkpoint, digits_data, caplog, monkeypatch):
    diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")
    calls = []

    def broken(frame, *a, **k):
        calls.append(frame.step)
        raise RuntimeError("boom")

    monkeypatch.setattr(diag, "update", broken)
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = trial()
    with caplog.at_level(logging.WARNING, logger="tevid_hpo.monitor"), \
            TrialMonitor(model, t, diagnostician=diag) as mon:
        out = run_steps(model, opt, digits_data, 40, mon)
        mon.epoch_end(0)
    assert out == [None] * 40 and calls == [0]          # disabled after the first failure
    records = [r for r in caplog.records if r.name == "tevid_hpo.monitor"]
    assert len(records) == 1 and "boom" in records[0].getMessage()
    assert "RuntimeError: boom" in mon.error
    attrs = t.study.trials[0].user_attrs
    assert "RuntimeError: boom" in attrs[ERROR_ATTR]
    assert all(not m._forward_hooks for m in model.modules())   # hooks removed at once
    assert mon.metrics()["tevid_error"] == mon.error


class FlakyStorage:
    """A trial whose attribute writes fail while ``down`` is set (a database outage)."""

    number = 3

    def __init__(self):
        self.down, self.stored, self.failed = False, {}, 0

    def set_user_attr(self, key, value):
        if self.down:
            self.failed += 1
            raise ConnectionError("server closed the connection unexpectedly")
        self.stored[key] = json.loads(json.dumps(value))


def test_a_brief_storage_outage_is_written_over_at_the_next_sync(toy_diagnostician, digits_data):
    """One failed write (the restart of issue 27's PostgreSQL test) must not switch monitoring
    off for the rest of the trial: the next epoch's write carries the whole payload."""
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = FlakyStorage()
    with TrialMonitor(model, t, every=1, diagnostician=toy_diagnostician,
                      asynchronous=False) as mon:
        for epoch in range(3):
            t.down = epoch == 1
            run_steps(model, opt, digits_data, 5, mon, start=5 * epoch)
            mon.epoch_end(epoch)
    assert t.failed == 1 and mon.error is None and ERROR_ATTR not in t.stored
    assert t.stored[USER_ATTR]["epochs_done"] == 3 and t.stored[USER_ATTR]["n_diagnoses"] == 15


def test_a_storage_that_keeps_failing_ends_the_monitoring(toy_diagnostician, digits_data,
                                                          caplog):
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = FlakyStorage()
    t.down = True
    with caplog.at_level(logging.WARNING, logger="tevid_hpo.monitor"), \
            TrialMonitor(model, t, every=1, diagnostician=toy_diagnostician,
                         asynchronous=False) as mon:
        for epoch in range(WRITE_ATTEMPTS + 2):
            run_steps(model, opt, digits_data, 2, mon, start=2 * epoch)
            mon.epoch_end(epoch)
    assert f"{WRITE_ATTEMPTS} times" in mon.error
    # the epoch writes up to the limit, then the error attribute's own (failed) write
    assert t.failed == WRITE_ATTEMPTS + 1
    assert all(not m._forward_hooks for m in model.modules())


def test_a_model_that_cannot_be_captured_disables_monitoring_not_the_trial(toy_diagnostician,
                                                                           caplog):
    model = nn.Sequential(nn.LayerNorm(4))                      # no capturable layer at all
    t = trial()
    with caplog.at_level(logging.WARNING, logger="tevid_hpo.monitor"), \
            TrialMonitor(model, t, diagnostician=toy_diagnostician) as mon:
        model(torch.randn(3, 4)).sum().backward()
        assert mon.step(loss=1.0) is None
    assert "capturable layers" in mon.error
    assert ERROR_ATTR in t.study.trials[0].user_attrs


def test_missing_default_checkpoint_is_a_setup_error(tmp_path, monkeypatch):
    monkeypatch.setattr(diag_mod, "DEFAULT_CHECKPOINT", tmp_path / "nothing" / "default")
    with pytest.raises(FileNotFoundError, match="TrialMonitor needs a trained diagnostician"):
        TrialMonitor(cnn())


def test_step_outside_the_context_is_a_usage_error(toy_diagnostician):
    mon = TrialMonitor(cnn(), diagnostician=toy_diagnostician)
    with pytest.raises(RuntimeError, match="outside"):
        mon.step(loss=1.0)


@pytest.mark.parametrize("kwargs", [{"history_size": 0}, {"nan_patience": 0},
                                    {"sync_every": 0}, {"every": 0}])
def test_rejects_bad_settings(toy_diagnostician, kwargs):
    with pytest.raises(ValueError):
        TrialMonitor(cnn(), diagnostician=toy_diagnostician, **kwargs)


def test_frame_geometry_follows_the_diagnostician_profile(toy_diagnostician, digits_data):
    model = cnn()
    with TrialMonitor(model, diagnostician=toy_diagnostician, every=3) as mon:
        model(digits_data.x_train[:8]).sum().backward()
        mon.step()
        d = mon.last                  # awaits the diagnosis in flight
    assert mon.every == 3 and d is not None and math.isfinite(d.vacuity)
    assert mon._capture.encoder.frame_size == toy_diagnostician.profile.frame_size
