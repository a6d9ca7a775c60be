"""Ray Tune: TEViDHyperband on a real Tuner, scheduler save/restore, monitor pause/resume.

Issue 8's acceptance for Ray: a real ``tune.Tuner`` on 2 CPUs with a handful of tiny trials (the
digits CNN, 3 epochs) where the diverging one is stopped by TEViD with its reason in the results
dataframe while the healthy ones go through Hyperband (paused at a rung, halved, resumed from
their checkpoints with their diagnosis stream intact); the scheduler's state round-trips through
``save``/``restore``; a monitor-side failure never fails a trial. Also: the Hyperband stall that
early stops trigger in Ray 2.60 (trials left PAUSED forever), end to end and on stub trials.

Ray runs locally with its files under /tmp/ray_tevid_tests (a short path: Unix socket paths are
limited) and Tune's under ``tmp_path``; ``RAY_AUTH_MODE=disabled`` keeps ``~/.ray/auth_token``
from being written. The module starts one Ray instance and shuts it down at the end (but never
one it did not start).
"""

from __future__ import annotations

import os

os.environ["RAY_AUTH_MODE"] = "disabled"   # before Ray is imported or started

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import STEPS_PER_EPOCH, local_ray_session, silent, train_step, val_accuracy
from ray import cloudpickle, tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler, TrialScheduler

import tevid_hpo.ray as tevid_ray
from data_factory.architectures import small_cnn
from data_factory.labels import INSTABILITY
from tevid_hpo.cost import CostModel
from tevid_hpo.decision import describe
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.monitor import NONFINITE_LOSS, TrialMonitor
from tevid_hpo.ray import TEViDHyperband, TEViDScheduler

# A Tune run that goes wrong can hang in Ray rather than fail: bound every test (setup included).
pytestmark = pytest.mark.timeout(300)

EPOCHS = 3
RAY_TEMP_DIR = "/tmp/ray_tevid_tests"


# ----------------------------------------------------------------------------- helpers
def train_epoch(model, opt, data, mon, epoch):
    """One deterministic epoch: batch k of the run is the same whatever the resume point."""
    for k in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH):
        train_step(model, opt, data, mon, k)


def resume_cnn(diag: Diagnostician, lr: float
               ) -> tuple[torch.nn.Module, torch.optim.Optimizer, TrialMonitor, int]:
    """The documented start of a resumable trainable: the model, its optimizer and a monitor,
    restored from the trial's latest checkpoint (``restore()`` before the monitor runs); returns
    them with the first epoch still to train."""
    torch.manual_seed(0)
    model = small_cnn(in_channels=1, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    mon = TrialMonitor(model, diagnostician=diag)
    state = tevid_ray.restore(mon)
    if state is None:
        return model, opt, mon, 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return model, opt, mon, state["epoch"] + 1


def trainable(config, checkpoint=None, data=None, sync_dir=None):
    """The documented trainable: restore() before the monitor starts, report() every epoch.

    ``config["trial"]["order"]`` orders two trials: ``"signal"`` touches a file in ``sync_dir``
    just before its last report, ``"wait"`` waits for that file before training.
    """
    torch.set_num_threads(1)
    config = config["trial"]
    marker = Path(sync_dir or ".") / "last-report"
    if config.get("order") == "wait":
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    diag = Diagnostician.from_pretrained(checkpoint, device="cpu")
    if config["break_monitor"]:
        def broken(*args, **kwargs):
            raise RuntimeError("diagnostician exploded")
        diag.update = broken
    model, opt, mon, start = resume_cnn(diag, config["lr"])
    with mon:
        for epoch in range(start, EPOCHS):
            train_epoch(model, opt, data, mon, epoch)
            mon.epoch_end(epoch)
            if config.get("order") == "signal" and epoch == EPOCHS - 1:
                marker.touch()
            tevid_ray.report(mon, {"acc": val_accuracy(model, data), "epoch": epoch,
                                   "resumed_at": start, "n_history": len(mon.history),
                                   "history_steps": json.dumps([h["step"] for h in mon.history])},
                             state={"model": model.state_dict(),
                                    "optimizer": opt.state_dict(), "epoch": epoch})


@pytest.fixture(scope="module")
def local_ray():
    """Ray on 2 CPUs, its files in a short temporary path; shut down only if we started it."""
    # Ray workers cannot import this test module or conftest (pytest put tests/ on the
    # driver's path only): ship the trainable and the helpers it borrows by value.
    modules = (sys.modules[__name__], sys.modules["conftest"])
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    with local_ray_session(RAY_TEMP_DIR):
        yield
    for module in modules:
        cloudpickle.unregister_pickle_by_value(module)


# ----------------------------------------------------------------------------- end to end
# max_t=3, eta=3: Hyperband fills a bracket that runs 2 trials straight to 3 epochs, then one
# that takes 3 trials, pauses them at epoch 1 and keeps the best. The grid fills them in order.
DIVERGING = 1.0                            # Adam at lr 1.0 explodes within epoch 0
# The first two run side by side, and the diverging one starts only once the healthy one is
# about to report its last epoch: Hyperband pauses that one at max_t to wait for its
# bracket-mate, which TEViD then stops — the case where Ray's Hyperband alone would leave the
# paused trial waiting forever (see test_a_bracket_waiting_for_an_early_stopped_trial...).
PLAN = [
    {"lr": DIVERGING, "break_monitor": False, "order": "wait"},     # bracket 1: TEViD stops it
    {"lr": 3e-3, "break_monitor": False, "order": "signal"},        # bracket 1: to max_t
    {"lr": 3e-3, "break_monitor": False, "order": ""},  # bracket 2: best, paused, resumed
    {"lr": 1e-4, "break_monitor": False, "order": ""},  # bracket 2: halved at the rung
    {"lr": DIVERGING, "break_monitor": True, "order": ""},  # bracket 2: diverges unseen, halved
]


@pytest.fixture(scope="module")
def tuned(local_ray, tmp_path_factory, toy_checkpoint, digits_data):
    tmp = tmp_path_factory.mktemp("ray")
    scheduler = TEViDHyperband(metric="acc", mode="max", max_t=EPOCHS, reduction_factor=3)
    tuner = tune.Tuner(
        tune.with_parameters(trainable, checkpoint=str(toy_checkpoint), data=digits_data,
                             sync_dir=str(tmp)),
        param_space={"trial": tune.grid_search(PLAN)},
        # Reused actors: a new trial (or a resumed one) does not pay for a new process.
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(name="tevid", storage_path=str(tmp / "tune"), verbose=0,
                                  callbacks=[scheduler.callback()]),
    )
    results = tuner.fit()
    df = results.get_dataframe().set_index("trial_id")
    plan = [PLAN.index({"lr": lr, "break_monitor": b, "order": o}) for lr, b, o in zip(
        df["config/trial/lr"], df["config/trial/break_monitor"], df["config/trial/order"])]
    return scheduler, results, df.assign(plan=plan).sort_values("plan"), tmp


def test_diverging_trial_is_stopped_by_tevid_with_its_reason(tuned):
    scheduler, results, df, _ = tuned
    assert not results.errors
    bad = df.index[0]
    row = df.loc[bad]
    # Stopped after its first report, although its bracket would have run it to max_t.
    assert row["training_iteration"] == 1 and row["tevid_alert"] == INSTABILITY
    assert row["tevid_stopped_by"] == "TEViD"
    assert row["tevid_stop_reason"].startswith(f"{INSTABILITY} at step ")
    why = scheduler.stop_reason(bad)
    assert why["pruner"] == "TEViD" and why["rule"] == "alert" and why["label"] == INSTABILITY
    assert why["reason"] == "diagnosis" and why["step"] < STEPS_PER_EPOCH   # within epoch 0
    assert why["report_step"] == 1 and why["confidence"] > 0.5
    assert json.loads(row["tevid_alerts"])[INSTABILITY]["step"] == why["step"]
    assert [d["trial_id"] for d in scheduler.decisions if d["pruner"] == "TEViD"] == [bad]


def test_healthy_trials_follow_hyperband(tuned):
    scheduler, results, df, _ = tuned
    healthy = df.iloc[1:4]
    assert (healthy["tevid_alert"] == "").all()
    hb = [d for d in scheduler.decisions if d["pruner"] == "HyperBandScheduler"]
    assert {d["action"] for d in hb} == {TrialScheduler.PAUSE, TrialScheduler.STOP}
    # The 3-trial bracket keeps its best and halts the other two at the rung (epoch 1).
    assert list(df["training_iteration"]) == [1, EPOCHS, EPOCHS, 1, 1]
    assert healthy["acc"].iloc[:2].min() > 0.5                          # chance is 0.1
    halted = list(df.index[3:])
    assert [scheduler.stop_reason(t)["pruner"] for t in halted] == ["HyperBandScheduler"] * 2
    assert [scheduler.stop_reason(t)["report_step"] for t in halted] == [1, 1]
    # Every stopped trial's Result.metrics say who stopped it; the survivors' say nothing.
    by_id = {r.metrics["trial_id"]: r.metrics for r in results}
    assert [by_id[t].get("tevid_stopped_by") for t in df.index] == [
        "TEViD", None, None, "HyperBandScheduler", "HyperBandScheduler"]


def test_a_trial_waiting_at_max_t_for_a_stopped_bracket_mate_completes(tuned):
    # Trial 1 reached max_t first and was PAUSED to wait for trial 0, which TEViD then
    # stopped; TEViDHyperband stops (completes) the waiting trial, so fit() returned at all.
    scheduler, results, df, _ = tuned
    waiting = df.index[1]
    assert [(d["action"], d["report_step"]) for d in scheduler.decisions
            if d["trial_id"] == waiting] == [(TrialScheduler.PAUSE, EPOCHS)]
    assert scheduler.stop_reason(waiting) is None           # completed, not stopped early
    assert df.loc[waiting, "training_iteration"] == EPOCHS and not results.errors


def test_a_paused_trial_resumes_with_its_diagnosis_window(tuned):
    _, _, df, _ = tuned
    row = df.iloc[2]                        # its bracket's best, paused at the rung
    assert row["resumed_at"] == 1 and row["training_iteration"] == EPOCHS
    # One stream across the pause: capture steps 0, 10, ..., 100 over 3 × 34 steps, the
    # first epoch's diagnoses included, the step counter continuing where it paused.
    steps = json.loads(row["history_steps"])
    assert steps == list(range(0, EPOCHS * STEPS_PER_EPOCH, 10))
    assert row["n_history"] == len(steps) and row["tevid_step"] == steps[-1]


def test_a_monitor_failure_never_fails_the_trial(tuned):
    # The last trial diverges like the first, but its diagnostician raises: TEViD is blind to
    # it, the trial runs on, and Hyperband halts it at the rung on its accuracy.
    scheduler, results, df, _ = tuned
    row = df.iloc[4]
    assert "diagnostician exploded" in row["tevid_error"] and row["tevid_alert"] == ""
    assert row["acc"] < 0.2 and row["training_iteration"] == 1
    assert scheduler.stop_reason(df.index[4])["pruner"] == "HyperBandScheduler"
    assert not results.errors


def test_scheduler_state_round_trips_through_save_and_restore(tuned):
    scheduler, _, _, tmp = tuned
    path = tmp / "scheduler.pkl"
    scheduler.save(str(path))
    fresh = TEViDHyperband(metric="other", mode="min", max_t=81)
    fresh.restore(str(path))
    assert fresh.decisions == scheduler.decisions and fresh.decisions
    assert fresh.debug_string() == scheduler.debug_string()
    assert "TEViD: stopped 1 trial(s) (Instability)" in fresh.debug_string()
    assert (fresh._metric, fresh._mode, fresh._max_t_attr) == ("acc", "max", EPOCHS)
    assert fresh._get_r0(0) == EPOCHS and fresh._get_n0(1) == 3      # helpers rebuilt
    for d in fresh.decisions:
        assert fresh.stop_reason(d["trial_id"]) == scheduler.stop_reason(d["trial_id"])


# ----------------------------------------------------------------------------- no cluster
class FakeController:
    """What the schedulers call on the controller in these tests (nothing)."""

    def stop_trial(self, trial):
        raise AssertionError("not expected")


def stub_trial(trial_id):
    return Trial("__fake", trial_id=trial_id, stub=True)


def result(t, acc, alerts=None, **extra):
    base = {"training_iteration": t, "acc": acc, "tevid_alert": "", "tevid_step": 10 * t,
            "tevid_epoch": t - 1, "tevid_vacuity": 0.1, "tevid_error": "",
            "tevid_p_Healthy": 0.9, "tevid_p_Instability": 0.1}
    if alerts is not None:
        base["tevid_alerts"] = json.dumps(alerts)
        base["tevid_alert"] = next(iter(alerts), "")
    return base | extra


ALERT = {INSTABILITY: {"label": INSTABILITY, "step": 30, "epoch": 0, "confidence": 0.97,
                       "vacuity": 0.1, "reason": "diagnosis"}}


def test_alert_rule_min_confidence_and_unmonitored_trials():
    s = TEViDHyperband(metric="acc", mode="max", max_t=9, min_confidence=0.99)
    tc = FakeController()
    trials = [stub_trial(f"t{i}") for i in range(4)]
    for t in trials:
        s.on_trial_add(tc, t)
    # 0.97 < min_confidence: Hyperband decides (CONTINUE below its first rung).
    assert s.on_trial_result(tc, trials[0], result(1, 0.5, ALERT)) == TrialScheduler.CONTINUE
    # Non-finite-loss alerts have confidence 1.
    nan_alert = {INSTABILITY: ALERT[INSTABILITY] | {"confidence": 1.0, "vacuity": None,
                                                    "reason": NONFINITE_LOSS}}
    assert s.on_trial_result(tc, trials[1], result(1, 0.1, nan_alert)) == TrialScheduler.STOP
    assert s.stop_reason(trials[1])["reason"] == NONFINITE_LOSS
    # No tevid_* keys at all: an unmonitored trainable, Hyperband alone.
    assert s.on_trial_result(tc, trials[2], {"training_iteration": 1, "acc": 0.1}) == "CONTINUE"
    # Malformed tevid_alerts: logged once, Hyperband decides, the experiment goes on.
    assert s.on_trial_result(tc, trials[3], result(1, 0.3, tevid_alerts="{not json")) == "CONTINUE"
    assert [d["trial_id"] for d in s.decisions] == ["t1"]


def test_plain_monitor_metrics_are_enough_to_stop():
    # A trainable that reports mon.metrics() only: the label is known, its step is not.
    s = TEViDHyperband(metric="acc", mode="max", max_t=9, prune_on=(INSTABILITY,))
    t = stub_trial("t0")
    s.on_trial_add(FakeController(), t)
    plain = result(2, 0.1, tevid_alert=INSTABILITY, tevid_p_Instability=0.95)
    assert s.on_trial_result(FakeController(), t, plain) == TrialScheduler.STOP
    why = s.stop_reason("t0")
    assert (why["label"], why["step"], why["confidence"], why["report_step"]) == (
        INSTABILITY, None, 0.95, 2)
    assert describe(why) == f"{INSTABILITY} (confidence 0.95)"


def test_cost_rule_stops_on_a_strong_belief_early_but_not_at_the_end():
    s = TEViDScheduler(ASHAScheduler(metric="acc", mode="max", max_t=10), cost=CostModel())
    tc = FakeController()
    a, b = stub_trial("a"), stub_trial("b")
    s.on_trial_add(tc, a)
    s.on_trial_add(tc, b)
    strong = {"tevid_p_Healthy": 0.2, "tevid_p_Instability": 0.8}
    assert s.on_trial_result(tc, a, result(2, 0.3, {}, **strong)) == TrialScheduler.STOP
    why = s.stop_reason(a)
    assert why["rule"] == "cost" and why["budget"] == 10 and why["budget_used"] == 2
    assert why["cost_stop"] < why["cost_continue"]
    # Nothing left to save at max_t (ASHA's STOP there is completion, not a decision) ...
    assert s.on_trial_result(tc, b, result(10, 0.3, {}, **strong)) == TrialScheduler.STOP
    assert s.stop_reason(b) is None
    # ... and a failed monitor's latest diagnosis is stale.
    c = stub_trial("c")
    s.on_trial_add(tc, c)
    stale = result(2, 0.3, {}, tevid_error="RuntimeError: boom", **strong)
    assert s.on_trial_result(tc, c, stale) == TrialScheduler.CONTINUE
    with pytest.raises(ValueError, match="max_t"):
        TEViDScheduler(cost=CostModel())


class StoppingController:
    """Tune's part in these tests: ``stop_trial`` as ``TuneController.stop_trial`` does it."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.stopped = []

    def stop_trial(self, trial):
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
        else:
            self.scheduler.on_trial_complete(self, trial, trial.last_result)
        trial.set_status(Trial.TERMINATED)
        self.stopped.append(trial.trial_id)


def report_to(scheduler, tc, trial, res):
    """One result through the scheduler, then what Tune does with it."""
    action = scheduler.on_trial_result(tc, trial, res)
    trial.update_last_result(dict(res))
    if action == TrialScheduler.PAUSE:
        trial.set_status(Trial.PAUSED)
    elif action == TrialScheduler.STOP:
        tc.stop_trial(trial)
    return action


@pytest.mark.parametrize("mode, lead, trail", [("max", 0.9, 0.1), ("min", 0.1, 0.9)])
@pytest.mark.parametrize("scheduler", ["hyperband", "asha"])
def test_cost_rule_spares_the_leader_at_a_belief_that_stops_a_trailing_trial(scheduler, mode,
                                                                             lead, trail):
    # Issue 25, as in TEViDPruner: at t=1 of 10, P(anomaly) = 0.375 is above the threshold at
    # standing 0 (0.10) and with no rival, below it at standing 1 (0.54).
    if scheduler == "hyperband":
        s = TEViDHyperband(metric="acc", mode=mode, max_t=10, cost=CostModel())
    else:
        s = TEViDScheduler(ASHAScheduler(metric="acc", mode=mode, max_t=10), cost=CostModel())
    tc = StoppingController(s)
    first, rival, leader, trailer = (stub_trial(i) for i in ("first", "rival", "lead", "trail"))
    for t in (first, rival, leader, trailer):
        s.on_trial_add(tc, t)
        t.set_status(Trial.RUNNING)
    belief = {"tevid_p_Healthy": 0.6, "tevid_p_Instability": 0.4}
    # Alone at its step: standing unknown, the decision as before standings (stop).
    assert report_to(s, tc, first, result(1, lead, {}, **belief)) == TrialScheduler.STOP
    assert s.stop_reason(first)["standing"] is None
    report_to(s, tc, rival, result(1, 0.5, {}))                # no belief: never stopped
    assert report_to(s, tc, trailer, result(1, trail, {}, **belief)) == TrialScheduler.STOP
    assert s.stop_reason(trailer)["standing"] == 0.0           # beats neither rival
    assert report_to(s, tc, leader, result(1, lead, {}, **belief)) != TrialScheduler.STOP
    assert s.stop_reason(leader) is None                       # beats 2 of 3 (ties "first")


@pytest.mark.parametrize("scheduler", ["hyperband", "asha"])
def test_leader_guard_spares_an_alerted_leader_but_not_a_nan_loss(scheduler):
    def make(**kw):
        if scheduler == "hyperband":
            return TEViDHyperband(metric="acc", mode="max", max_t=10, **kw)
        return TEViDScheduler(ASHAScheduler(metric="acc", mode="max", max_t=10), **kw)

    nan_alert = {INSTABILITY: ALERT[INSTABILITY] | {"confidence": 1.0, "reason": NONFINITE_LOSS}}
    for s, leader_stops in ((make(), False), (make(spare_leaders=None), True)):
        tc = StoppingController(s)
        rival, trailer, leader, dead = (stub_trial(i) for i in ("r", "trail", "lead", "dead"))
        for t in (rival, trailer, leader, dead):
            s.on_trial_add(tc, t)
            t.set_status(Trial.RUNNING)
        report_to(s, tc, rival, result(1, 0.5, {}))
        assert report_to(s, tc, trailer, result(1, 0.1, ALERT)) == TrialScheduler.STOP
        stopped = report_to(s, tc, leader, result(1, 0.9, ALERT)) == TrialScheduler.STOP
        assert stopped is leader_stops
        assert report_to(s, tc, dead, result(1, 0.95, nan_alert)) == TrialScheduler.STOP
        assert s.stop_reason(dead)["reason"] == NONFINITE_LOSS
    with pytest.raises(ValueError, match="spare_leaders"):
        make(spare_leaders=2.0)


@pytest.mark.parametrize("scheduler_cls", [TEViDHyperband, HyperBandScheduler])
def test_a_bracket_waiting_for_an_early_stopped_trial_does_not_stall(scheduler_cls):
    s = scheduler_cls(metric="acc", mode="max", max_t=3)
    tc = StoppingController(s)
    a, b = stub_trial("a"), stub_trial("b")
    for t in (a, b):                       # one bracket: both run to max_t, no rung
        s.on_trial_add(tc, t)
        t.set_status(Trial.RUNNING)
    # b completes its budget first and waits, PAUSED, for its bracket-mate a ...
    assert [report_to(s, tc, b, result(t, 0.6)) for t in (1, 2, 3)] == ["CONTINUE"] * 2 + [
        "PAUSE"]
    # ... which leaves early (stopped by TEViD; with plain Hyperband: it errors).
    if scheduler_cls is TEViDHyperband:
        assert report_to(s, tc, a, result(1, 0.1, ALERT)) == TrialScheduler.STOP
        # b is stopped as complete (no decision recorded) instead of waiting forever.
        assert sorted(tc.stopped) == ["a", "b"] and s.stop_reason("b") is None
    else:
        s.on_trial_error(tc, a)
        assert tc.stopped == [] and b.status == Trial.PAUSED   # Ray 2.60: b waits for good
        assert s.choose_trial_to_run(tc) is None


@pytest.mark.parametrize("scheduler", ["hyperband", "asha"])
def test_leader_guard_counts_rivals_that_stopped_before_and_the_leaders_best(scheduler):
    # The gru_text false stops: under halving the leader is alone at a late step, and its
    # latest value may dip below its best; the trials it left behind still count.
    if scheduler == "hyperband":
        s = TEViDHyperband(metric="acc", mode="max", max_t=10)
    else:
        s = TEViDScheduler(ASHAScheduler(metric="acc", mode="max", max_t=10))
    tc = StoppingController(s)
    trials = [stub_trial(f"t{i}") for i in range(4)]
    for t in trials:
        s.on_trial_add(tc, t)
        t.set_status(Trial.RUNNING)
    *rivals, leader = trials
    for t, acc in zip(rivals, (0.2, 0.3, 0.75)):
        report_to(s, tc, t, result(1, acc, {}))      # then never report again
    report_to(s, tc, leader, result(1, 0.6, {}))
    report_to(s, tc, leader, result(2, 0.8, {}))
    # Alone at t=3, its value 0.5 below its best 0.8: still beats all 3 rivals' best.
    assert report_to(s, tc, leader, result(3, 0.5, ALERT)) != TrialScheduler.STOP
    report_to(s, tc, rivals[2], result(3, 0.9, {}))   # one rival overtakes: beats 2 of 3
    assert report_to(s, tc, leader, result(4, 0.5, ALERT)) == TrialScheduler.STOP


def test_a_trial_stopped_under_asha_keeps_the_rung_places_its_last_value_earns():
    # Without them the next rung's cutoff is set by the good trials alone and ASHA cuts one of
    # them (on gru_text: 3 seed-best trials lost under Ray ASHA + TEViD, 1 under ASHA alone).
    s = TEViDScheduler(ASHAScheduler(metric="acc", mode="max", max_t=9, grace_period=1,
                                     reduction_factor=3))
    tc = StoppingController(s)
    dead, good, better = (stub_trial(i) for i in ("dead", "good", "better"))
    for t in (dead, good, better):
        s.on_trial_add(tc, t)
        t.set_status(Trial.RUNNING)
    for t, acc in ((dead, 0.1), (good, 0.5), (better, 0.6)):
        assert report_to(s, tc, t, result(1, acc, {})) == TrialScheduler.CONTINUE   # rung 1
    assert report_to(s, tc, dead, result(2, 0.1, ALERT)) == TrialScheduler.STOP    # TEViD
    rungs = {m: dict(r) for m, r in s.base._trial_info["good"]._rungs}
    assert rungs[3] == {"dead": 0.1} and rungs[9] == {"dead": 0.1}   # held 0.1 still promotes
    assert report_to(s, tc, better, result(3, 0.6, {})) == TrialScheduler.CONTINUE
    # Rung 3 holds 0.1 and 0.6: the cutoff (2/3 quantile, 0.43) keeps `good` at 0.5; with 0.6
    # alone it would be 0.6 and `good` stopped.
    assert report_to(s, tc, good, result(3, 0.5, {})) == TrialScheduler.CONTINUE


@pytest.mark.parametrize("scheduler_cls", [TEViDHyperband, HyperBandScheduler])
def test_a_rung_waiting_for_an_early_stopped_trial_is_halved(scheduler_cls):
    # t16 leads the search when TEViD stops it: the leader guard is off to test the halving.
    guard = {"spare_leaders": None} if scheduler_cls is TEViDHyperband else {}
    s = scheduler_cls(metric="acc", mode="max", max_t=9, **guard)
    tc = StoppingController(s)
    trials = [stub_trial(f"t{i}") for i in range(17)]
    for t in trials:                       # brackets of 3, 5 and 9 trials
        s.on_trial_add(tc, t)
    rung1 = trials[8:]                     # the 9-trial bracket: rungs at 1, 3, 9
    for t in rung1:
        t.set_status(Trial.RUNNING)
    for i, t in enumerate(rung1):          # first halving: 9 -> 3 (t14, t15, t16)
        report_to(s, tc, t, result(1, 0.1 * i))
    t14, t15, t16 = rung1[6:]
    for t in (t14, t15, t16):
        t.set_status(Trial.RUNNING)
    report_to(s, tc, t14, result(3, 0.5))
    report_to(s, tc, t15, result(3, 0.6))  # both wait PAUSED at the second rung for t16 ...
    if scheduler_cls is TEViDHyperband:    # ... which TEViD stops before it gets there
        assert report_to(s, tc, t16, result(2, 0.1, ALERT)) == TrialScheduler.STOP
        assert (t14.status, t15.status) == (Trial.TERMINATED, Trial.PAUSED)   # halved: 2 -> 1
        assert t15 in s._trial_info[t15][0].trials_to_unpause           # to be resumed
    else:                                  # ... which errors: Ray 2.60 never halves them
        s.on_trial_error(tc, t16)
        assert (t14.status, t15.status) == (Trial.PAUSED, Trial.PAUSED)
        assert not s._trial_info[t15][0].trials_to_unpause


@pytest.mark.parametrize("scheduler_cls", [TEViDHyperband, HyperBandScheduler])
def test_a_trial_finished_before_tuner_restore_takes_no_bracket_place(scheduler_cls):
    # Tuner.restore re-adds every trial, finished ones TERMINATED, to a scheduler as it was at
    # the start: the run of test_ray_cluster's restore test, as the restored scheduler sees it.
    s = scheduler_cls(metric="acc", mode="max", max_t=3)
    tc = StoppingController(s)
    healthy, stopped = stub_trial("healthy"), stub_trial("stopped")
    stopped.set_status(Trial.TERMINATED)   # stopped by TEViD before the interruption
    for t in (healthy, stopped):           # one bracket of two: both run to max_t
        s.on_trial_add(tc, t)
    healthy.set_status(Trial.RUNNING)
    actions = [report_to(s, tc, healthy, result(t, 0.6)) for t in (2, 3)]   # resumed at 1
    if scheduler_cls is TEViDHyperband:    # finished its budget: done
        assert actions == ["CONTINUE", "STOP"] and s.stop_reason("healthy") is None
    else:                                  # Ray 2.60: waits for "stopped" for good
        assert actions == ["CONTINUE", "PAUSE"] and s.choose_trial_to_run(tc) is None


def test_tevid_scheduler_rejects_what_it_cannot_wrap():
    from ray.tune.schedulers import PopulationBasedTraining

    with pytest.raises(TypeError):
        TEViDScheduler(TEViDHyperband(metric="a", mode="max"))
    with pytest.raises(TypeError, match="TEViDHyperband"):
        TEViDScheduler(HyperBandScheduler(metric="a", mode="max"))
    with pytest.raises(TypeError):
        TEViDScheduler(PopulationBasedTraining(metric="a", mode="max",
                                               hyperparam_mutations={"lr": [0.1, 0.2]}))
    with pytest.raises(ValueError):
        TEViDHyperband(prune_on=("Healthy",))
    assert isinstance(TEViDHyperband(), HyperBandScheduler)


def test_tevid_scheduler_save_restore_keeps_base_and_decisions(tmp_path):
    s = TEViDScheduler(ASHAScheduler(metric="acc", mode="max", max_t=9))
    tc = FakeController()
    t = stub_trial("x")
    s.on_trial_add(tc, t)
    assert s.on_trial_result(tc, t, result(1, 0.1, ALERT)) == TrialScheduler.STOP
    s.save(str(tmp_path / "s.pkl"))
    fresh = TEViDScheduler()
    fresh.restore(str(tmp_path / "s.pkl"))
    assert type(fresh.base).__name__ == "AsyncHyperBandScheduler" and fresh.metric == "acc"
    assert fresh.decisions == s.decisions and fresh.stop_reason("x")["label"] == INSTABILITY


# ----------------------------------------------------------------------------- pause / resume
def test_checkpoint_round_trip_resumes_the_exact_diagnosis_stream(tmp_path, toy_checkpoint,
                                                                   digits_data, monkeypatch):
    """Pause after epoch 0 through report()/restore(), resume in a fresh model + monitor: the
    diagnoses equal those of an uninterrupted run (window, counters and history kept)."""
    def run(epochs, mon, model, opt, start=0):
        with mon:
            for epoch in range(start, start + epochs):
                train_epoch(model, opt, digits_data, mon, epoch)
                mon.epoch_end(epoch)
        return mon

    def fresh(lr=3e-3):
        torch.manual_seed(0)
        model = small_cnn(in_channels=1, num_classes=10)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")
        return model, opt, TrialMonitor(model, diagnostician=diag)

    model, opt, mon = fresh()
    straight = run(2, mon, model, opt).history

    # report() inside a (simulated) Tune session: capture what it hands to tune.report.
    reported = {}

    def fake_report(metrics, *, checkpoint=None):
        reported["metrics"] = metrics
        shutil.copytree(checkpoint.path, tmp_path / "ckpt")   # report's directory is temporary

    monkeypatch.setattr(tevid_ray.tune, "report", fake_report)
    model, opt, mon = fresh()
    run(1, mon, model, opt)
    tevid_ray.report(mon, {"acc": 0.5}, state={"model": model.state_dict(),
                                               "optimizer": opt.state_dict(), "epoch": 0})
    assert reported["metrics"]["acc"] == 0.5 and reported["metrics"]["tevid_alerts"] == "{}"
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"state.pt", "tevid_monitor.json"}

    model, opt, mon = fresh()          # the resumed trial: new process, new objects
    monkeypatch.setattr(tevid_ray.tune, "get_checkpoint",
                        lambda: tune.Checkpoint.from_directory(tmp_path / "ckpt"))
    state = tevid_ray.restore(mon)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    resumed = run(1, mon, model, opt, start=state["epoch"] + 1).history
    assert resumed == straight
    # A corrupt monitor file never breaks the resume: the trial goes on with a new stream.
    (tmp_path / "ckpt" / "tevid_monitor.json").write_text("{broken")
    model, opt, mon = fresh()
    assert tevid_ray.restore(mon)["epoch"] == 0 and mon.history == []
    assert tevid_ray.restore(None, tune.Checkpoint.from_directory(tmp_path / "ckpt"))["epoch"] == 0
    monkeypatch.setattr(tevid_ray.tune, "get_checkpoint", lambda: None)
    assert tevid_ray.restore(mon) is None


def test_metrics_fixed_keys(toy_diagnostician):
    model = small_cnn(in_channels=1, num_classes=10)
    m = tevid_ray.metrics(TrialMonitor(model, diagnostician=silent(toy_diagnostician)))
    assert set(m) == set(TrialMonitor(model, diagnostician=toy_diagnostician).metrics()) | {
        "tevid_alerts"}
    assert all(isinstance(v, (int, float, str)) for v in m.values())
