"""Diagnoses to TensorBoard and MLflow through TrialMonitor's one logger hook, read back."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import train_step

from data_factory.architectures import small_cnn
from data_factory.labels import INSTABILITY, KNOWN_LABELS
from tevid_hpo.loggers import MLflowLogger, TensorBoardLogger, scalars
from tevid_hpo.monitor import TrialMonitor


def diverge(monitor_kwargs, data, steps=45, lr=1.0):
    """small_cnn on digits with Adam at a diverging learning rate, monitored."""
    torch.manual_seed(0)
    model = small_cnn(in_channels=1, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with TrialMonitor(model, **monitor_kwargs) as mon:
        for k in range(steps):
            train_step(model, opt, data, mon, k)
    return mon


class Spy:
    def __init__(self):
        self.calls = []

    def log(self, diagnosis, step):
        self.calls.append((step, diagnosis))


def test_every_recorded_diagnosis_reaches_each_logger_in_order(toy_diagnostician, digits_data):
    spy = Spy()
    mon = diverge({"diagnostician": toy_diagnostician, "loggers": [spy]}, digits_data)
    assert [s for s, _ in spy.calls] == [h["step"] for h in mon.history] == [0, 10, 20, 30, 40]
    assert [d.step for _, d in spy.calls] == [s for s, _ in spy.calls]
    assert mon.alert == INSTABILITY
    assert any(d.alert == INSTABILITY for _, d in spy.calls)


def test_tensorboard_event_file_holds_the_diagnosis(toy_diagnostician, digits_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        mon = diverge({"diagnostician": toy_diagnostician,
                       "loggers": [TensorBoardLogger(writer)]}, digits_data)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"tevid/label", "tevid/vacuity", "tevid/alert", "tevid/alerted", "tevid/finite"} <= tags
    assert {f"tevid/p_{c.lower()}" for c in KNOWN_LABELS} <= tags
    p = acc.Scalars("tevid/p_instability")
    assert [e.step for e in p] == [h["step"] for h in mon.history]
    assert [e.value for e in p] == pytest.approx([h["probs"][INSTABILITY] for h in mon.history],
                                                 abs=1e-4)
    alerted = [e.value for e in acc.Scalars("tevid/alerted")]
    first = mon.alerts[INSTABILITY]["step"]
    assert alerted == [float(h["step"] >= first) for h in mon.history]
    [text] = acc.Tensors("tevid/alert/text_summary")
    assert text.step == first
    assert b"Instability confirmed at step" in text.tensor_proto.string_val[0]


def test_mlflow_run_holds_the_diagnosis(toy_diagnostician, digits_data, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    # A local file store under a temporary directory. MLflow 3 refuses it unless told (its
    # default is sqlite:///mlflow.db, which docs/loggers.md's example uses); the logger only
    # talks to MlflowClient, so the store behind it does not matter.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    client = MlflowClient(uri)
    experiment = client.create_experiment("tevid", artifact_location=str(tmp_path / "art"))
    run_id = client.create_run(experiment).info.run_id
    mon = diverge({"diagnostician": toy_diagnostician,
                   "loggers": [MLflowLogger(run_id, tracking_uri=uri)]}, digits_data)
    history = client.get_metric_history(run_id, "tevid/p_instability")
    assert [m.step for m in history] == [h["step"] for h in mon.history]
    assert [m.value for m in history] == pytest.approx(
        [h["probs"][INSTABILITY] for h in mon.history], abs=1e-4)
    label = client.get_metric_history(run_id, "tevid/label")
    assert [m.value for m in label] == [float(["Healthy", "Overfitting", "Instability",
                                               "Forgetting", "ConceptBias",
                                               "Unknown"].index(h["label"]))
                                        for h in mon.history]
    tags = client.get_run(run_id).data.tags
    assert "Instability confirmed at step" in tags["tevid.alert.Instability"]


def test_mlflow_logger_takes_the_active_run(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run() as run:
            assert MLflowLogger().run_id == run.info.run_id
    finally:
        mlflow.set_tracking_uri(None)


def test_a_failing_logger_is_dropped_and_monitoring_goes_on(toy_diagnostician, digits_data,
                                                            caplog):
    class Broken:
        def log(self, diagnosis, step):
            raise OSError("disk full")

    spy = Spy()
    with caplog.at_level(logging.WARNING, logger="tevid_hpo.monitor"):
        mon = diverge({"diagnostician": toy_diagnostician, "loggers": [Broken(), spy]},
                      digits_data)
    assert mon.error is None and len(mon.history) == 5 and len(spy.calls) == 5
    assert mon.loggers == [spy]
    [record] = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert "Broken" in record.getMessage() and "disk full" in record.getMessage()


def test_bad_loggers_are_refused(toy_diagnostician):
    model = small_cnn(in_channels=1)
    with pytest.raises(TypeError, match=r"log\(diagnosis, step\)"):
        TrialMonitor(model, diagnostician=toy_diagnostician, loggers=[object()])
    with pytest.raises(TypeError, match="SummaryWriter"):
        TensorBoardLogger(object())


def test_scalars_cover_every_class_and_are_plain_floats(toy_diagnostician, digits_data):
    mon = diverge({"diagnostician": toy_diagnostician}, digits_data, steps=11)
    values = scalars(mon.last)
    assert all(type(v) is float for v in values.values())
    assert {f"tevid/p_{c.lower()}" for c in KNOWN_LABELS} <= set(values)
