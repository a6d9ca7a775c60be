"""TEViDTrainerCallback on real (tiny) Hugging Face Trainer runs, offline.

The acceptance runs train small_cnn on digits wrapped as a Trainer model (``{"loss",
"logits"}``) with the suite's toy diagnostician (trained on small_cnn/digits runs), so the
callback's behaviour — when it steps, logs and stops — is tested on runs whose diagnosis is known:
AdamW at lr 1e-2 stays Healthy, ×20 explodes. A tiny GPT-2 built from a config checks that the
callback attaches to a transformer as well (no claim about what the toy says of it).
"""

from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import optuna
import torch
from conftest import recording
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from data_factory.architectures import small_cnn
from data_factory.labels import INSTABILITY
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.monitor import ERROR_ATTR, USER_ATTR
from tevid_hpo.pruners import prune_reason
from tevid_hpo.transformers import TEViDTrainerCallback

optuna.logging.set_verbosity(optuna.logging.WARNING)

BATCH = 32
STEPS_PER_EPOCH = 34
LR = 1e-2
JUMP_STEP = STEPS_PER_EPOCH          # ×20 from the second epoch on


class Digits(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class DigitsModel(nn.Module):
    """small_cnn returning what a Trainer expects: ``{"loss", "logits"}``."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = small_cnn(in_channels=1, num_classes=10)

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def run(callback, data, tmp_path, epochs=3, jump=False, model=None, **kwargs):
    model = model or DigitsModel()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=BATCH,
                             num_train_epochs=epochs, learning_rate=LR, weight_decay=0.0,
                             lr_scheduler_type="constant", warmup_steps=0, logging_steps=10,
                             save_strategy="no", eval_strategy="no", report_to="none",
                             use_cpu=True, seed=0, disable_tqdm=True, max_grad_norm=0.0,
                             dataloader_num_workers=0, **kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 20.0 if jump and s >= JUMP_STEP // args.gradient_accumulation_steps
        else 1.0)
    trainer = Trainer(model=model, args=args, train_dataset=Digits(data.x_train, data.y_train),
                      callbacks=[callback], optimizers=(opt, sched))
    trainer.train()
    return trainer


def tevid_logs(trainer):
    return [h for h in trainer.state.log_history if "tevid/label" in h]


def test_a_healthy_run_completes_and_logs_the_diagnosis(toy_diagnostician, digits_data,
                                                        tmp_path):
    cb = TEViDTrainerCallback(diagnostician=toy_diagnostician)
    trainer = run(cb, digits_data, tmp_path)
    assert cb.stop_reason is None and cb.error is None
    assert trainer.state.global_step == 3 * STEPS_PER_EPOCH == cb.optimizer_steps
    assert [h["step"] for h in cb.history] == list(range(0, 3 * STEPS_PER_EPOCH, 10))
    logs = tevid_logs(trainer)
    assert len(logs) >= 9                              # every training log (logging_steps=10)
    assert {"tevid/p_instability", "tevid/vacuity", "tevid/alert", "tevid/alerted"} <= set(
        logs[-1])
    assert all(h["tevid/alerted"] == 0.0 for h in logs)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]                             # it really learned


def test_a_learning_rate_jump_is_stopped_within_two_epochs_with_the_reason_logged(
        toy_diagnostician, digits_data, tmp_path, caplog):
    cb = TEViDTrainerCallback(diagnostician=toy_diagnostician)
    with caplog.at_level(logging.WARNING, logger="tevid_hpo.transformers"):
        trainer = run(cb, digits_data, tmp_path, epochs=6, jump=True)
    reason = cb.stop_reason
    assert reason is not None and reason["label"] == INSTABILITY
    assert JUMP_STEP < reason["global_step"] <= JUMP_STEP + 2 * STEPS_PER_EPOCH, reason
    assert trainer.state.global_step <= reason["global_step"] + 1
    [record] = [r for r in caplog.records if r.name == "tevid_hpo.transformers"]
    assert "TEViD stopped training at step" in record.getMessage()
    stopped = [h for h in trainer.state.log_history if "tevid/stop_reason" in h]
    assert len(stopped) == 1 and stopped[0]["tevid/stopped"] == 2.0     # LABELS.index
    assert stopped[0]["tevid/stop_reason"].startswith("Instability at step")
    assert stopped[0]["step"] == trainer.state.global_step


def test_gradient_accumulation_steps_the_monitor_once_per_optimizer_step(toy_diagnostician,
                                                                          digits_data, tmp_path):
    seen = []

    class Spy:                                   # loggers= goes through to the monitor
        def log(self, diagnosis, step):
            seen.append(step)

    cb = TEViDTrainerCallback(diagnostician=toy_diagnostician, every=5, loggers=[Spy()])
    trainer = run(cb, digits_data, tmp_path, epochs=1, gradient_accumulation_steps=2)
    assert trainer.state.global_step == STEPS_PER_EPOCH // 2 == cb.optimizer_steps
    assert [h["step"] for h in cb.history] == [0, 5, 10, 15] == seen


def test_the_monitor_reads_the_trainers_optimizer_for_the_learning_rate(toy_checkpoint,
                                                                         digits_data, tmp_path):
    # A telemetry diagnostician reads the learning rate from the frames' scalars.
    diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")
    frames = recording(diag)
    cb = TEViDTrainerCallback(diagnostician=diag)
    trainer = run(cb, digits_data, tmp_path, epochs=1, max_steps=11)
    assert cb.trial_monitor.optimizer is trainer.optimizer
    assert [f.step for f in frames] == [0, 10] and all(f.scalars["lr"] == LR for f in frames)


def test_non_finite_losses_stop_the_run(toy_diagnostician, digits_data, tmp_path):
    class Poisoned(DigitsModel):
        calls = 0

        def forward(self, pixel_values, labels=None):
            out = super().forward(pixel_values, labels)
            Poisoned.calls += 1
            if Poisoned.calls > 12:
                out["loss"] = out["loss"] * float("nan")
            return out

    cb = TEViDTrainerCallback(diagnostician=toy_diagnostician)
    run(cb, digits_data, tmp_path, model=Poisoned())
    assert cb.stop_reason["reason"] == "non-finite loss" and cb.stop_reason["step"] == 14
    assert cb.stop_reason["global_step"] == 20


@pytest.mark.parametrize("where", ["diagnostician", "callback"])
def test_a_failure_inside_monitoring_never_fails_the_run(toy_checkpoint, digits_data, tmp_path,
                                                         monkeypatch, caplog, where):
    diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")
    if where == "diagnostician":
        monkeypatch.setattr(diag, "update", lambda *a, **k: 1 / 0)
    else:
        monkeypatch.setattr("tevid_hpo.transformers.scalars", lambda d: 1 / 0)
    model = DigitsModel()
    cb = TEViDTrainerCallback(diagnostician=diag)
    with caplog.at_level(logging.WARNING):
        trainer = run(cb, digits_data, tmp_path, jump=True, model=model)
    assert trainer.state.global_step == 3 * STEPS_PER_EPOCH
    assert cb.stop_reason is None and "ZeroDivisionError" in cb.error
    assert any("disabled" in r.getMessage() for r in caplog.records)
    assert all(not m._forward_hooks for m in model.modules())


def test_with_a_trial_a_tevid_stop_prunes_it(toy_diagnostician, digits_data, tmp_path):
    def objective(trial):
        cb = TEViDTrainerCallback(trial, diagnostician=toy_diagnostician)
        trainer = run(cb, digits_data, tmp_path, epochs=4, jump=trial.number == 0)
        return trainer.state.log_history[-1]["train_loss"]

    study = optuna.create_study()
    study.optimize(objective, n_trials=2)
    diverging, healthy = study.trials
    assert diverging.state == TrialState.PRUNED
    assert prune_reason(diverging)["label"] == INSTABILITY
    assert diverging.user_attrs[USER_ATTR]["alert"] == INSTABILITY
    assert healthy.state == TrialState.COMPLETE and ERROR_ATTR not in healthy.user_attrs
    assert healthy.user_attrs[USER_ATTR]["epochs_done"] == 4


def test_a_tiny_gpt2_from_a_config_is_monitored(toy_diagnostician, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)

    class Tokens(Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.ids = torch.randint(0, 64, (64, 16), generator=g)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    cb = TEViDTrainerCallback(diagnostician=toy_diagnostician, every=2)
    args = TrainingArguments(output_dir=str(tmp_path / "gpt2"), per_device_train_batch_size=8,
                             num_train_epochs=1, logging_steps=4, save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[cb])
    trainer.train()
    assert cb.error is None and trainer.state.global_step == 8
    assert [h["step"] for h in cb.history] == [0, 2, 4, 6]
    assert len(cb.trial_monitor._capture.layers) == 3
    assert tevid_logs(trainer)
