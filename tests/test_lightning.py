"""TEViDCallback on real (tiny) Lightning fits: small_cnn on digits, CPU, and DDP on 2 processes.

The diagnostician is the suite's toy one (``conftest.toy_diagnostician``: trained in seconds on
small_cnn/digits runs, Healthy vs Instability), not the shipped checkpoint, so these tests check
the callback's behaviour — when it steps, logs, stops and reports — on runs whose diagnosis is
known: Adam at lr 1e-2 stays Healthy; ×20 (lr 0.2, like the toy corpus' diverging runs) explodes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

L = pytest.importorskip("lightning.pytorch")

import optuna
import torch
from conftest import recording
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from data_factory.architectures import small_cnn
from data_factory.labels import INSTABILITY
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.lightning import TEViDCallback
from tevid_hpo.monitor import ERROR_ATTR, USER_ATTR
from tevid_hpo.pruners import TEViDPruner, prune_reason

optuna.logging.set_verbosity(optuna.logging.WARNING)

BATCH = 32
STEPS_PER_EPOCH = 34     # ceil(1078 / 32): one pass over the digits training split
LR = 1e-2                # Healthy for the toy diagnostician
JUMP_EPOCH = 1           # the learning rate is ×20 from this epoch on


class DigitsNet(L.LightningModule):
    """small_cnn on digits; ``jump_epoch`` multiplies the learning rate by ``factor`` from then."""

    def __init__(self, lr: float = LR, jump_epoch: int | None = None, factor: float = 20.0,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = small_cnn(in_channels=1, num_classes=10)
        self.lr, self.jump_epoch, self.factor = lr, jump_epoch, factor

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        if self.jump_epoch is None:
            return opt
        jump, factor = self.jump_epoch, self.factor
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: factor if e >= jump else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def loaders(data):
    train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=BATCH)
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=256)
    return train, val


def trainer(callback, max_epochs=3, **kwargs):
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=[callback],
                     enable_progress_bar=False, logger=False, enable_checkpointing=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def jump_window(stop_step: int) -> bool:
    """Stopped after the jump and within 2 epochs of it."""
    jump = JUMP_EPOCH * STEPS_PER_EPOCH
    return jump < stop_step <= jump + 2 * STEPS_PER_EPOCH


# ----------------------------------------------------------------------------- one process
def test_a_healthy_fit_completes_and_logs_the_diagnosis(toy_diagnostician, digits_data):
    cb = TEViDCallback(diagnostician=toy_diagnostician)
    t = trainer(cb)
    t.fit(DigitsNet(), *loaders(digits_data))
    assert cb.stop_reason is None and cb.error is None and not t.should_stop
    assert t.current_epoch == 3 and t.global_step == 3 * STEPS_PER_EPOCH
    assert cb.optimizer_steps == t.global_step
    steps = [h["step"] for h in cb.history]
    assert steps == list(range(0, 3 * STEPS_PER_EPOCH, 10))          # every 10 optimizer steps
    assert cb.alert is None
    metrics = t.logged_metrics
    assert {"tevid/label", "tevid/p_instability", "tevid/vacuity", "tevid/alert",
            "tevid/alerted"} <= set(metrics)
    assert float(metrics["tevid/p_instability"]) == pytest.approx(
        cb.history[-1]["probs"][INSTABILITY], abs=1e-4)
    assert float(metrics["tevid/alerted"]) == 0.0
    assert t.callback_metrics["val_acc"] > 0.3      # it really learned (chance is 0.1; 0.44)


def test_a_learning_rate_jump_is_stopped_within_two_epochs_with_the_reason_logged(
        toy_diagnostician, digits_data, caplog):
    cb = TEViDCallback(diagnostician=toy_diagnostician)
    t = trainer(cb, max_epochs=6)
    with caplog.at_level(logging.WARNING, logger="tevid_hpo.lightning"):
        t.fit(DigitsNet(jump_epoch=JUMP_EPOCH), *loaders(digits_data))
    reason = cb.stop_reason
    assert reason is not None and reason["label"] == INSTABILITY and reason["rule"] == "alert"
    assert jump_window(reason["global_step"]), reason
    assert reason["step"] >= JUMP_EPOCH * STEPS_PER_EPOCH      # the frame that confirmed it
    assert t.should_stop and t.global_step <= reason["global_step"] + 1   # at most the batch
    assert t.current_epoch <= JUMP_EPOCH + 2
    [record] = [r for r in caplog.records if r.name == "tevid_hpo.lightning"]
    assert "TEViD stopped training at step" in record.getMessage()
    assert "Instability at step" in record.getMessage()
    assert float(t.logged_metrics["tevid/stopped"]) == 2.0        # LABELS.index(Instability)
    assert float(t.logged_metrics["tevid/alerted"]) == 1.0


def test_gradient_accumulation_steps_the_monitor_once_per_optimizer_step(toy_diagnostician,
                                                                          digits_data):
    seen = []

    class Spy:                                   # loggers= goes through to the monitor
        def log(self, diagnosis, step):
            seen.append(step)

    cb = TEViDCallback(diagnostician=toy_diagnostician, every=5, loggers=[Spy()])
    t = trainer(cb, max_epochs=1, accumulate_grad_batches=2)
    t.fit(DigitsNet(), *loaders(digits_data))
    assert t.global_step == STEPS_PER_EPOCH // 2 == cb.optimizer_steps
    assert [h["step"] for h in cb.history] == [0, 5, 10, 15] == seen


def test_the_monitor_reads_the_fits_optimizer_for_the_learning_rate(toy_checkpoint,
                                                                     digits_data):
    # A telemetry diagnostician reads the learning rate from the frames' scalars.
    diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")
    frames = recording(diag)
    cb = TEViDCallback(diagnostician=diag)
    t = trainer(cb, max_epochs=1, limit_train_batches=11)
    t.fit(DigitsNet(), loaders(digits_data)[0])
    assert cb.trial_monitor.optimizer is t.optimizers[0]
    assert [f.step for f in frames] == [0, 10] and all(f.scalars["lr"] == LR for f in frames)


def test_non_finite_losses_stop_the_fit(toy_diagnostician, digits_data):
    class Poisoned(DigitsNet):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.global_step >= 12 else loss

    cb = TEViDCallback(diagnostician=toy_diagnostician)
    t = trainer(cb)
    t.fit(Poisoned(), *loaders(digits_data))
    assert cb.stop_reason["reason"] == "non-finite loss"
    assert cb.stop_reason["step"] == 14                     # third NaN in a row (nan_patience=3)
    assert cb.stop_reason["global_step"] == 20              # the next decision point
    assert t.global_step == 21


@pytest.mark.parametrize("where", ["diagnostician", "callback"])
def test_a_failure_inside_monitoring_never_fails_the_fit(toy_checkpoint, digits_data, caplog,
                                                         monkeypatch, where):
    diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")
    model = DigitsNet(jump_epoch=JUMP_EPOCH)                 # TEViD would have stopped it
    if where == "diagnostician":
        def broken(*args, **kwargs):
            raise RuntimeError("diagnostician exploded")

        monkeypatch.setattr(diag, "update", broken)
    else:
        original = model.log

        def log(name, *args, **kwargs):
            if name.startswith("tevid/"):
                raise RuntimeError("logging exploded")
            return original(name, *args, **kwargs)

        monkeypatch.setattr(model, "log", log)
    cb = TEViDCallback(diagnostician=diag)
    t = trainer(cb)
    with caplog.at_level(logging.WARNING):
        t.fit(model, *loaders(digits_data))
    assert t.current_epoch == 3 and t.global_step == 3 * STEPS_PER_EPOCH
    assert cb.stop_reason is None and "exploded" in cb.error
    assert any("disabled" in r.getMessage() for r in caplog.records)
    assert all(not m._forward_hooks for m in model.modules())        # hooks removed


def test_a_callback_is_reusable_across_fits(toy_diagnostician, digits_data):
    cb = TEViDCallback(diagnostician=toy_diagnostician)
    trainer(cb, max_epochs=4).fit(DigitsNet(jump_epoch=JUMP_EPOCH), *loaders(digits_data))
    assert cb.stop_reason is not None
    t = trainer(cb, max_epochs=1)
    t.fit(DigitsNet(), *loaders(digits_data))
    assert cb.stop_reason is None and t.global_step == STEPS_PER_EPOCH
    assert cb.history[0]["step"] == 0 and len(cb.history) == 4


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="pass trial= too"):
        TEViDCallback(monitor="val_acc")
    with pytest.raises(ValueError, match="prune_on must name labels"):
        TEViDCallback(prune_on=("Healthy",))
    with pytest.raises(ValueError, match="every must be >= 1"):
        TEViDCallback(every=0)


# ----------------------------------------------------------------------------- Optuna
def objective_for(diag, data, jump_epoch=None, max_epochs=3):
    def objective(trial):
        cb = TEViDCallback(trial, monitor="val_acc", diagnostician=diag)
        t = trainer(cb, max_epochs=max_epochs)
        t.fit(DigitsNet(jump_epoch=jump_epoch), *loaders(data))
        cb.check_pruned()
        return float(t.callback_metrics["val_acc"])

    return objective


def test_with_a_trial_a_diverging_fit_is_pruned_by_tevid_and_a_healthy_one_completes(
        toy_diagnostician, digits_data, tmp_path):
    study = optuna.create_study(direction="maximize", pruner=TEViDPruner(wrapped=None),
                                storage=f"sqlite:///{tmp_path / 'study.db'}")
    study.optimize(objective_for(toy_diagnostician, digits_data, JUMP_EPOCH, 6), n_trials=1)
    study.optimize(objective_for(toy_diagnostician, digits_data), n_trials=1)
    diverging, healthy = study.trials
    assert diverging.state == TrialState.PRUNED
    why = prune_reason(diverging)
    assert why["pruner"] == "TEViD" and why["label"] == INSTABILITY
    assert jump_window(why["global_step"])
    assert diverging.user_attrs[USER_ATTR]["alert"] == INSTABILITY
    assert sorted(diverging.intermediate_values) == list(range(len(diverging.intermediate_values)))
    assert healthy.state == TrialState.COMPLETE and prune_reason(healthy) is None
    assert sorted(healthy.intermediate_values) == [0, 1, 2]        # one report per validation
    assert healthy.value == pytest.approx(healthy.intermediate_values[2])
    assert healthy.user_attrs[USER_ATTR]["epochs_done"] == 3


def test_with_a_trial_the_studys_pruner_prunes_as_optuna_integration_does(toy_diagnostician,
                                                                          digits_data):
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    study.optimize(objective_for(toy_diagnostician, digits_data), n_trials=1)
    [t] = study.trials
    assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [0]
    assert t.user_attrs[USER_ATTR]["n_diagnoses"] >= 3              # the diagnosis is there too


def test_a_monitor_failure_is_written_to_the_trial(toy_checkpoint, digits_data, monkeypatch):
    diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")
    monkeypatch.setattr(diag, "update", lambda *a, **k: 1 / 0)
    study = optuna.create_study(direction="maximize", pruner=TEViDPruner(wrapped=None))
    study.optimize(objective_for(diag, digits_data, JUMP_EPOCH), n_trials=1)
    [t] = study.trials
    assert t.state == TrialState.COMPLETE and "ZeroDivisionError" in t.user_attrs[ERROR_ATTR]


# ----------------------------------------------------------------------------- distributed
def test_the_distributed_path_broadcasts_rank_zeros_decision_and_defers_pruning(
        toy_diagnostician, digits_data, monkeypatch):
    """The DDP code path in one process: every decision goes through strategy.broadcast, and
    with a trial the pruning is left to check_pruned() (the real 2-process run is slow below)."""

    class Distributed(TEViDCallback):
        def on_fit_start(self, trainer, pl_module):
            super().on_fit_start(trainer, pl_module)
            self._distributed = True

    study = optuna.create_study(direction="maximize")
    cb = Distributed(study.ask(), monitor="val_acc", diagnostician=toy_diagnostician)
    t = trainer(cb, max_epochs=6)
    sent = []
    broadcast = t.strategy.broadcast

    def spy(obj, src=0):
        sent.append(obj)
        return broadcast(obj, src)

    monkeypatch.setattr(t.strategy, "broadcast", spy)
    t.fit(DigitsNet(jump_epoch=JUMP_EPOCH), *loaders(digits_data))      # no TrialPruned here
    reason = cb.stop_reason
    assert reason is not None and jump_window(reason["global_step"])
    decisions = [s for s in sent if s is None or isinstance(s, dict)]
    # rank 0's reason went out once; every other decision point sent "no stop" (None)
    assert [d for d in decisions if d is not None] == [
        {k: v for k, v in reason.items() if k != "global_step"}]
    assert reason["label"] == INSTABILITY
    # one decision per 10 optimizer steps and per epoch end, all broadcast
    n = reason["global_step"]
    assert len(decisions) == n // 10 + t.current_epoch
    with pytest.raises(optuna.TrialPruned, match="TEViD: Instability"):
        cb.check_pruned()


DDP_SCRIPT = """
import json, sys
import lightning.pytorch as L, torch
from torch.utils.data import DataLoader, TensorDataset
from data_factory.datasets import digits
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.lightning import TEViDCallback
sys.path.insert(0, {tests!r})
from test_lightning import DigitsNet, JUMP_EPOCH

torch.set_num_threads(1)
checkpoint, out = sys.argv[1], sys.argv[2]
data = digits(image_size=16, seed=0)
cb = TEViDCallback(diagnostician=Diagnostician.from_pretrained(checkpoint, device="cpu"))
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=6, callbacks=[cb],
                    enable_progress_bar=False, logger=False, enable_checkpointing=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
# 16 per process, 32 in all: the same 34 optimizer steps per epoch as in one process
train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=16)
trainer.fit(DigitsNet(jump_epoch=JUMP_EPOCH), train)
with open(f"{{out}}/rank{{trainer.global_rank}}.json", "w") as f:
    json.dump({{"world_size": trainer.world_size, "stop_reason": cb.stop_reason,
               "global_step": trainer.global_step, "n_diagnoses": len(cb.history),
               "steps_per_epoch": trainer.num_training_batches}}, f)
"""


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_stops_every_rank_at_the_same_step(toy_checkpoint, tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(toy_checkpoint), str(tmp_path)], check=False,
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["stop_reason"] == ranks[1]["stop_reason"] is not None
    assert ranks[0]["stop_reason"]["label"] == INSTABILITY
    assert ranks[0]["global_step"] == ranks[1]["global_step"]
    assert ranks[0]["n_diagnoses"] > 0 and ranks[1]["n_diagnoses"] == 0   # rank 0 monitors
    steps_per_epoch = ranks[0]["steps_per_epoch"]
    jump = JUMP_EPOCH * steps_per_epoch
    assert jump < ranks[0]["stop_reason"]["global_step"] <= jump + 2 * steps_per_epoch
