"""End to end: real (tiny) Optuna studies of a CNN on digits with TrialMonitor + TEViDPruner.

Covers issue 7's acceptance: in-memory, SQLite and journal storages; two worker processes sharing
one journal file; a diverging trial pruned by TEViD with its reason while a healthy one completes;
non-finite losses; a monitor that breaks inside without failing the trial (the wrapped pruner
takes over); and a quick run of the demo study.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from conftest import STEPS_PER_EPOCH, digits_cnn, silent, train_step, val_accuracy
from optuna.pruners import BasePruner
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from data_factory.datasets import digits
from data_factory.labels import INSTABILITY
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.monitor import ERROR_ATTR, NONFINITE_LOSS, USER_ATTR, TrialMonitor
from tevid_hpo.optuna_demo import run_demo
from tevid_hpo.pruners import TEViDPruner, prune_reason

optuna.logging.set_verbosity(optuna.logging.WARNING)

HEALTHY = {"optimizer": "adam", "lr": 3e-3}
DIVERGING = {"optimizer": "adam", "lr": 1.0}
NAN = {"optimizer": "sgd", "lr": 1e6}       # the loss is NaN from step 3 on


def make_objective(diagnostician, data, epochs=3):
    """An objective that trains small_cnn with a TrialMonitor and prunes at epoch ends."""

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("optimizer", ["adam", "sgd"])
        lr = trial.suggest_float("lr", 1e-4, 1e6, log=True)
        trial.set_user_attr("pid", os.getpid())
        torch.manual_seed(trial.number)
        model, opt = digits_cnn(name, lr)
        acc = 0.0
        with TrialMonitor(model, trial, diagnostician=diagnostician) as mon:
            for epoch in range(epochs):
                for k in range(STEPS_PER_EPOCH):
                    train_step(model, opt, data, mon, k)
                mon.epoch_end(epoch)
                acc = val_accuracy(model, data)
                trial.report(acc, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return acc

    return objective


def storage_for(kind: str, tmp_path: Path):
    if kind == "inmemory":
        return None
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))


def assert_pruned_by_tevid(t, label=INSTABILITY, reason="diagnosis"):
    assert t.state == TrialState.PRUNED, t
    why = prune_reason(t)
    assert why["pruner"] == "TEViD" and why["label"] == label and why["reason"] == reason
    assert why["confidence"] is not None and why["step"] <= STEPS_PER_EPOCH  # within epoch 0
    assert why["report_step"] == 0 and len(t.intermediate_values) == 1
    return why


class PruneFrom(BasePruner):
    """A stand-in wrapped pruner: prunes from a given reported step on."""

    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study, trial):
        return trial.last_step is not None and trial.last_step >= self.step


# ----------------------------------------------------------------------------- one process
@pytest.mark.parametrize("kind", ["inmemory", "sqlite", "journal"])
def test_diverging_trial_is_pruned_by_tevid_and_healthy_one_completes(
        kind, tmp_path, toy_diagnostician, digits_data):
    study = optuna.create_study(direction="maximize", pruner=TEViDPruner(),
                                storage=storage_for(kind, tmp_path))
    study.enqueue_trial(DIVERGING)
    study.enqueue_trial(HEALTHY)
    study.optimize(make_objective(toy_diagnostician, digits_data), n_trials=2)
    diverging, healthy = study.trials
    why = assert_pruned_by_tevid(diverging)
    stored = diverging.user_attrs[USER_ATTR]
    assert stored["alerts"][INSTABILITY]["step"] == why["step"]
    assert healthy.state == TrialState.COMPLETE and prune_reason(healthy) is None
    assert healthy.user_attrs[USER_ATTR]["alert"] is None
    assert healthy.user_attrs[USER_ATTR]["epochs_done"] == 3
    assert healthy.value > 0.3                       # chance is 0.1


def test_non_finite_loss_prunes_even_when_tevid_never_alerts(toy_diagnostician, digits_data):
    # MedianPruner alone lets NaN trials run to the end; TEViDPruner must not.
    study = optuna.create_study(direction="maximize",
                                pruner=TEViDPruner(optuna.pruners.MedianPruner()))
    study.enqueue_trial(NAN)
    study.optimize(make_objective(silent(toy_diagnostician), digits_data), n_trials=1)
    why = assert_pruned_by_tevid(study.trials[0], reason=NONFINITE_LOSS)
    assert why["confidence"] == 1.0


@pytest.mark.parametrize("wrapped, state", [(None, TrialState.COMPLETE),
                                            (PruneFrom(1), TrialState.PRUNED)])
def test_a_monitor_failure_never_fails_the_trial_and_wrapped_takes_over(
        toy_checkpoint, digits_data, monkeypatch, wrapped, state):
    diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")

    def broken(*args, **kwargs):
        raise RuntimeError("diagnostician exploded")

    monkeypatch.setattr(diag, "update", broken)
    study = optuna.create_study(direction="maximize", pruner=TEViDPruner(wrapped))
    study.enqueue_trial(DIVERGING)          # TEViD would have pruned it in epoch 0
    study.optimize(make_objective(diag, digits_data), n_trials=1)
    t = study.trials[0]
    assert t.state == state
    assert "diagnostician exploded" in t.user_attrs[ERROR_ATTR]
    if state == TrialState.PRUNED:
        assert prune_reason(t) == {"pruner": "PruneFrom", "rule": "wrapped", "report_step": 1,
                                   "value": t.intermediate_values[1]}
    else:
        assert len(t.intermediate_values) == 3 and prune_reason(t) is None


# ----------------------------------------------------------------------------- two processes
def worker(journal: str, study_name: str, checkpoint: str, n_trials: str) -> None:
    """Entry point of a worker process (run by the test below through ``python -c``)."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(journal))
    # No leader guard: which rivals a trial's standing sees depends on how the two processes
    # interleave, and this test is about sharing one storage, not about the guard.
    study = optuna.load_study(study_name=study_name, storage=storage,
                              pruner=TEViDPruner(spare_leaders=None))
    diag = Diagnostician.from_pretrained(checkpoint, device="cpu")
    study.optimize(make_objective(diag, digits(image_size=16, seed=0)), n_trials=int(n_trials))


def test_two_worker_processes_share_one_journal_storage(tmp_path, toy_checkpoint):
    journal = str(tmp_path / "shared.log")
    storage = JournalStorage(JournalFileBackend(journal))
    study = optuna.create_study(study_name="shared", storage=storage, direction="maximize",
                                pruner=TEViDPruner(spare_leaders=None))
    plan = [DIVERGING, HEALTHY, NAN, {"optimizer": "adam", "lr": 1e-3}]
    for params in plan:
        study.enqueue_trial(params)
    # The worker imports this file, which imports the tests' conftest: put tests/ on its path.
    code = ("import importlib.util as u, sys; "
            f"sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"s = u.spec_from_file_location('e2e_worker', {str(Path(__file__))!r}); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); m.worker(*sys.argv[1:])")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, journal, "shared",
                               str(toy_checkpoint), "2"], env=env, cwd=Path(__file__).parents[1],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out

    study = optuna.load_study(study_name="shared", storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.params for t in trials] == plan
    assert len({t.user_attrs["pid"] for t in trials}) == 2          # really two processes
    assert_pruned_by_tevid(trials[0])
    assert trials[2].state == TrialState.PRUNED and prune_reason(trials[2])["pruner"] == "TEViD"
    assert [trials[1].state, trials[3].state] == [TrialState.COMPLETE] * 2
    # A third process (this one) reaches the same decisions from storage alone. Without the
    # leader guard: a standing depends on the rivals stored by then, which a later judge sees
    # more of (here the diverged trial beats the NaN one at its last step).
    judge = TEViDPruner(wrapped=None, spare_leaders=None)
    assert [judge.prune(study, t) for t in trials] == [True, False, True, False]


# ----------------------------------------------------------------------------- the demo
def test_run_demo_compares_hyperband_and_tevid_on_the_same_trials(tmp_path, toy_checkpoint,
                                                                  capsys):
    result = run_demo(tmp_path / "runs", n_trials=3, epochs=2, diagnostician=toy_checkpoint)
    printed = capsys.readouterr().out
    assert "Epochs trained:" in printed and "optuna-dashboard sqlite:///" in printed
    assert {p.name for p in (tmp_path / "runs").glob("*.db")} == {
        "optuna-demo-hyperband.db", "optuna-demo-tevid.db"}
    assert set(result) == {"storages", "dashboard", "diagnostician", "studies", "trials", "totals"}
    rows = result["trials"]
    assert len(rows) == 3
    hb = optuna.load_study(study_name="tevid-demo", storage=result["storages"]["hyperband"])
    assert [r["params"] for r in rows] == [t.params for t in hb.trials]   # paired trials
    # one study name in both storages: Hyperband puts trial k in the same bracket in both
    assert {s["study_name"] for s in result["studies"].values()} == {"tevid-demo"}
    totals = result["totals"]
    assert totals["epochs_hyperband"] == sum(r["hyperband"]["epochs"] for r in rows)
    assert totals["epochs_tevid"] == sum(r["tevid"]["epochs"] for r in rows)
    assert totals["epochs_saved"] == totals["epochs_hyperband"] - totals["epochs_tevid"]
    # Trial 1 of the seed-0 QMC sequence is lr≈0.64: its loss explodes at once.
    assert rows[1]["params"]["lr"] > 0.1
    assert rows[1]["tevid"]["pruned_by"] == "TEViD" and rows[1]["tevid"]["epochs"] == 1
    stored = optuna.load_study(study_name="tevid-demo", storage=result["storages"]["tevid"])
    assert prune_reason(stored.trials[1])["label"] == INSTABILITY
