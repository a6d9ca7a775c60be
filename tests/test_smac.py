"""SMAC: TEViDTarget + TEViDCallback, from a single call to a real MultiFidelityFacade run.

Issue 8's acceptance for SMAC: in a real (tiny) multi-fidelity run with the Hyperband intensifier
(budget = epochs of the digits CNN), a diverging configuration is ended early by the hook, its
diagnosis reaches ``additional_info`` and the callback, and SMAC still returns an incumbent; a
monitoring failure never fails a trial.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ConfigSpace import Configuration, ConfigurationSpace, Float
from conftest import STEPS_PER_EPOCH, contested_belief, recording, silent, train_step, val_accuracy
from ray import cloudpickle
from smac import MultiFidelityFacade, Scenario

from data_factory.architectures import small_cnn
from data_factory.labels import INSTABILITY, OVERFITTING
from tevid_hpo import smac as smac_module
from tevid_hpo.cost import CostModel
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.monitor import NONFINITE_LOSS
from tevid_hpo.smac import TEViDCallback, TEViDTarget, TrialStopped

DIVERGING = 1.0            # Adam at lr 1.0 explodes within epoch 0
HEALTHY = 3e-3


def make_train(data, fixed_seed=None):
    """The documented target function: budget = epochs, should_stop() checked every step.

    ``fixed_seed`` replaces the seed SMAC passes (a draw from its generator), so that a test's
    trajectories do not depend on it.
    """

    def train(config, seed: int = 0, budget: float = 1, *, tevid):
        torch.set_num_threads(1)
        torch.manual_seed(seed if fixed_seed is None else fixed_seed)
        model = small_cnn(in_channels=1, num_classes=10)
        opt = (torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
               if config.get("sgd") else torch.optim.Adam(model.parameters(), lr=config["lr"]))
        error = 1.0
        with tevid.monitor(model, optimizer=opt) as mon:
            for epoch in range(round(budget)):
                for k in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH):
                    train_step(model, opt, data, mon, k)
                    if tevid.should_stop():
                        raise TrialStopped()
                mon.epoch_end(epoch)
                error = 1.0 - val_accuracy(model, data)
                tevid.report(error, epoch)
        return error

    return train


# ----------------------------------------------------------------------------- one call
def test_diverging_config_ends_early_with_its_diagnosis(toy_diagnostician, digits_data):
    target = TEViDTarget(make_train(digits_data), worst_cost=1.0, diagnostician=toy_diagnostician)
    cost, info = target({"lr": DIVERGING}, seed=0, budget=3)
    tevid = info["tevid"]
    assert tevid["stopped"] and tevid["alert"] == INSTABILITY
    stop = tevid["stop"]
    assert (stop["pruner"], stop["rule"], stop["label"], stop["reason"]) == (
        "TEViD", "alert", INSTABILITY, "diagnosis")
    assert stop["step"] < STEPS_PER_EPOCH and tevid["epochs_done"] == 0   # in epoch 0 of 3
    # Nothing reported before the stop: the cost is worst_cost, the record says why.
    assert cost == 1.0 and tevid["cost"] == 1.0 and tevid["value_at_stop"] is None
    assert 0.5 < tevid["p_anomaly"] <= 1.0
    assert tevid["latest"]["step"] == stop["step"]


def test_healthy_config_returns_its_own_cost(toy_diagnostician, digits_data):
    target = TEViDTarget(make_train(digits_data), worst_cost=1.0, diagnostician=toy_diagnostician)
    cost, info = target({"lr": HEALTHY}, seed=0, budget=2)
    tevid = info["tevid"]
    assert not tevid["stopped"] and tevid["alert"] is None and "stop" not in tevid
    assert tevid["epochs_done"] == 2 and tevid["n_diagnoses"] == 7     # steps 0, 10, ..., 60
    assert cost < 0.8 and "cost" not in tevid                            # chance: 0.9


def test_non_finite_loss_stops_with_certainty(toy_diagnostician, digits_data):
    target = TEViDTarget(make_train(digits_data), worst_cost=2.5,
                         diagnostician=silent(toy_diagnostician))
    cost, info = target({"lr": 1e6, "sgd": True}, seed=0, budget=2)
    stop = info["tevid"]["stop"]
    assert stop["reason"] == NONFINITE_LOSS and info["tevid"]["p_anomaly"] == 1.0
    assert cost == 2.5


def test_cost_rule_stops_where_the_alert_rule_stays_silent(toy_diagnostician, digits_data):
    target = TEViDTarget(make_train(digits_data), worst_cost=1.0, cost=CostModel(),
                         diagnostician=silent(toy_diagnostician))
    cost, info = target({"lr": DIVERGING}, seed=0, budget=3)
    stop = info["tevid"]["stop"]
    assert stop["rule"] == "cost" and stop["budget"] == 3.0
    assert stop["cost_stop"] < stop["cost_continue"]
    assert info["tevid"]["p_anomaly"] == stop["confidence"]
    assert info["tevid"]["alert"] is None and cost <= 1.0
    # ... and lets a healthy configuration train.
    _, info = target({"lr": HEALTHY}, seed=0, budget=1)
    assert not info["tevid"]["stopped"] and info["tevid"]["epochs_done"] == 1


def believing_target(monkeypatch, **kw):
    """A TEViDTarget whose trials report ``config["errors"]`` (one per epoch), all with the
    same contested belief, and ask ``should_stop`` once at the end."""
    belief = contested_belief(1, 3)
    monkeypatch.setattr(smac_module, "TrialMonitor", lambda model, diagnostician, **_:
                        SimpleNamespace(alert=None, alerts={}, last=belief, error=None,
                                        history=[belief.to_dict()]))

    def train(config, budget: float = 3, *, tevid):
        tevid.monitor(None)
        for epoch, error in enumerate(config["errors"]):
            tevid.report(error, epoch=epoch)
        if tevid.should_stop():
            raise TrialStopped()
        return config["errors"][-1]

    target = TEViDTarget(train, worst_cost=1.0, diagnostician="never/loaded", **kw)
    monkeypatch.setattr(target, "diagnostician", lambda: None)
    return target


def test_cost_rule_spares_the_leader_at_a_belief_that_stops_a_trailing_trial(monkeypatch):
    # Issue 25: the standing is the trial's cost among the other trials' at the same budget,
    # as the wrapper saw them reported. Every trial gets the same belief after epoch 0.
    target = believing_target(monkeypatch, cost=CostModel())

    def stop(error, budget=3):
        return target({"errors": [error]}, budget=budget)[1]["tevid"].get("stop")

    assert stop(0.5)["standing"] is None          # the first trial: no rival, stopped as before
    assert stop(0.5)["standing"] == 0.0           # a tie is not beaten
    assert stop(0.9)["standing"] == 0.0           # trailing
    assert stop(0.1) is None                      # beats all 3: spared
    assert stop(0.1, budget=9)["standing"] is None   # other budgets are not rivals


def test_standing_counts_rivals_that_stopped_before_and_the_trials_best(monkeypatch):
    # A rival that reported only epoch 0 counts at epoch 2 with what it reached, and a trial's
    # own best (lowest) cost so far is what it risks, not its latest report. c_best=0: the
    # belief stops whatever the standing, which the reason then records.
    target = believing_target(monkeypatch, cost=CostModel(c_best=0.0), spare_leaders=None)

    def stop(*errors):
        return target({"errors": list(errors)}, budget=9)[1]["tevid"].get("stop")

    stop(0.6)                                                   # stopped after epoch 0
    stop(0.7, 0.4, 0.3)
    assert stop(0.5, 0.2, 0.9)["standing"] == 1.0               # its best, 0.2, beats both
    assert stop(0.9, 0.8, 0.55)["standing"] == round(1 / 3, 4)  # beats only the stopped 0.6


@pytest.mark.parametrize("spare_leaders, leader_stops", [(0.5, False), (None, True)])
def test_leader_guard_spares_an_alerted_leader_but_not_a_nan_loss(monkeypatch, spare_leaders,
                                                                 leader_stops):
    overfit = {"label": OVERFITTING, "step": 20, "epoch": 0, "confidence": 0.9, "vacuity": 0.1,
               "reason": "diagnosis"}
    nan = overfit | {"label": INSTABILITY, "confidence": 1.0, "reason": NONFINITE_LOSS}

    def train(config, budget: float = 3, *, tevid):
        alerts = {config["alert"]["label"]: config["alert"]} if config["alert"] else {}
        monkeypatch.setattr(smac_module, "TrialMonitor", lambda model, diagnostician, **kw:
                            SimpleNamespace(alert=next(iter(alerts), None), alerts=alerts,
                                            last=None, error=None, history=[]))
        tevid.monitor(None)
        tevid.report(config["error"], epoch=0)
        if tevid.should_stop():
            raise TrialStopped()
        return config["error"]

    target = TEViDTarget(train, worst_cost=1.0, diagnostician="never/loaded",
                         spare_leaders=spare_leaders)
    monkeypatch.setattr(target, "diagnostician", lambda: None)

    def stop(error, alert):
        return target({"error": error, "alert": alert}, budget=3)[1]["tevid"].get("stop")

    for error in (0.5, 0.6):
        stop(error, None)                                 # two rivals, no alert
    assert stop(0.9, overfit)["label"] == OVERFITTING     # trails: stopped
    assert (stop(0.1, overfit) is not None) is leader_stops   # leads all three
    assert stop(0.05, nan)["reason"] == NONFINITE_LOSS    # a NaN loss stops whatever its rank


def test_a_monitor_failure_never_fails_the_trial(toy_checkpoint, digits_data):
    diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")

    def broken(*args, **kwargs):
        raise RuntimeError("diagnostician exploded")

    diag.update = broken
    target = TEViDTarget(make_train(digits_data), worst_cost=1.0, diagnostician=diag,
                         cost=CostModel())
    cost, info = target({"lr": DIVERGING}, seed=0, budget=1)
    tevid = info["tevid"]
    assert "diagnostician exploded" in tevid["error"] and not tevid["stopped"]
    assert tevid["epochs_done"] == 1 and 0.0 <= cost <= 1.0


def test_the_optimizer_given_reaches_the_monitor(toy_checkpoint, digits_data):
    # A telemetry diagnostician reads the learning rate from the frames' scalars.
    diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")
    frames = recording(diag)

    def train(config, *, tevid):
        model = small_cnn(in_channels=1, num_classes=10)
        opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
        with tevid.monitor(model, optimizer=opt) as mon:
            train_step(model, opt, digits_data, mon, 0)
        return float(mon.optimizer is opt)

    assert TEViDTarget(train, worst_cost=1.0, diagnostician=diag)({"lr": 0.05})[0] == 1.0
    assert len(frames) == 1 and frames[0].scalars["lr"] == 0.05
    with pytest.raises(TypeError, match="optimizer"):      # each trial's own, not the target's
        TEViDTarget(train, worst_cost=1.0, diagnostician=diag, monitor_kwargs={"optimizer": None})


def test_user_info_is_kept_and_a_plain_user_stop_is_not_penalised():
    def train(config, *, tevid):
        tevid.report(0.4)
        if config["quit"]:
            raise TrialStopped()
        return 0.3, {"note": "mine"}

    target = TEViDTarget(train, worst_cost=1.0, diagnostician="never/loaded")
    assert target({"quit": False}) == (0.3, {"note": "mine", "tevid": {
        "version": 1, "stopped": False, "monitored": False, "budget": None, "epochs_done": 1}})
    cost, info = target({"quit": True})
    assert cost == 0.4 and info["tevid"]["stop"]["pruner"] == "user"


def test_target_looks_like_the_function_to_smac_and_pickles(toy_checkpoint):
    def train(config, seed: int = 0, budget: float = 1, *, tevid):
        return 0.0

    target = TEViDTarget(train, worst_cost=1.0, diagnostician=str(toy_checkpoint))
    assert target.__code__ is train.__code__               # SMAC's runner metadata
    clone = cloudpickle.loads(cloudpickle.dumps(target))    # what dask ships to workers
    assert clone.diagnostician() is not target.diagnostician()
    assert clone({"x": 1}, budget=1)[0] == 0.0
    with pytest.raises(TypeError, match="tevid"):
        TEViDTarget(lambda config: 0.0, worst_cost=1.0)
    with pytest.raises(ValueError, match="worst_cost"):
        TEViDTarget(train, worst_cost=float("nan"))
    with pytest.raises(ValueError, match="prune_on"):
        TEViDTarget(train, worst_cost=1.0, prune_on=("Healthy",))


def test_without_a_default_checkpoint_the_setup_error_comes_once(tmp_path, monkeypatch):
    import tevid_hpo.smac as tevid_smac

    monkeypatch.setattr(tevid_smac, "DEFAULT_CHECKPOINT", tmp_path / "default")
    with pytest.raises(FileNotFoundError, match="diagnostician="):
        TEViDTarget(lambda config, *, tevid: 0.0, worst_cost=1.0)


# ----------------------------------------------------------------------------- SMAC run
@pytest.mark.filterwarnings("ignore:Please use `dict\\(config\\)`:DeprecationWarning")   # SMAC's
def test_multi_fidelity_run_ends_the_diverging_config_early(tmp_path, toy_diagnostician,
                                                            digits_data):
    # Adam's lr over [1e-4, 3]: above ~0.05 the loss explodes. Hyperband over budgets of 1 and
    # 3 epochs (eta 3).
    cs = ConfigurationSpace({"lr": Float("lr", (1e-4, 3.0), log=True)}, seed=0)
    scenario = Scenario(cs, name="tevid", output_directory=tmp_path / "smac", deterministic=True,
                        n_trials=6, min_budget=1, max_budget=3, seed=0)
    # Besides 2 random ones, the initial design holds a diverging and a healthy configuration,
    # so the run has both whatever SMAC samples (its later choices vary across processes).
    initial = MultiFidelityFacade.get_initial_design(
        scenario, n_configs=2, additional_configs=[Configuration(cs, {"lr": DIVERGING}),
                                                   Configuration(cs, {"lr": HEALTHY})])
    callback = TEViDCallback()
    target = TEViDTarget(make_train(digits_data, fixed_seed=0), worst_cost=1.0,
                         diagnostician=toy_diagnostician)
    smac = MultiFidelityFacade(scenario, target, initial_design=initial, callbacks=[callback],
                               overwrite=True, logging_level=40)
    incumbent = smac.optimize()

    records = callback.trials
    assert len(records) == len(smac.runhistory) == 6
    assert {r["budget"] for r in records} == {1.0, 3.0}
    # The diverging configuration was ended inside its budget, and the callback recorded it.
    bad = [r for r in records if r["config"]["lr"] == pytest.approx(DIVERGING)]
    assert any(r in callback.stopped for r in bad)
    for r in callback.stopped:
        assert r["stop"]["pruner"] == "TEViD" and r["stop"]["label"] == INSTABILITY
        assert r["stop"]["step"] < r["budget"] * STEPS_PER_EPOCH       # ended early
        assert r["epochs_done"] < r["budget"]
        # The cost SMAC saw is the cost at stopping, penalised by the evidence.
        assert r["cost"] == pytest.approx(target.stopped_cost(r["value_at_stop"],
                                                              r["p_anomaly"]), abs=1e-3)
        assert r["cost"] >= (r["value_at_stop"] or 0.0)
    # SMAC stored the same diagnoses (additional_info; also in runhistory.json).
    stored = [v.additional_info["tevid"] for v in smac.runhistory._data.values()]
    assert sum(s["stopped"] for s in stored) == len(callback.stopped)
    assert (tmp_path / "smac" / "tevid" / "0" / "runhistory.json").is_file()
    # SMAC still returns an incumbent, and it is a configuration that trained.
    assert incumbent is not None and incumbent["lr"] < 0.1
    best = smac.runhistory.get_cost(incumbent)
    assert best < 0.9 and all(r["cost"] > best for r in callback.stopped)      # chance: 0.9
