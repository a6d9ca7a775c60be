"""optuna-dashboard serves each trial's diagnosis: the user attribute, the note and the figure.

A real (tiny) study on SQLite — a diverging trial pruned by TEViD, a healthy one — then the
dashboard's WSGI app (what ``optuna-dashboard`` and ``run_server`` serve) is queried over its
HTTP JSON API with a WSGI test client, and once through a real server thread.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState
from torch import nn

from data_factory.architectures import small_cnn
from data_factory.labels import INSTABILITY
from tevid_hpo.dashboard import SUMMARY_ATTR, publish_diagnosis
from tevid_hpo.monitor import USER_ATTR, TrialMonitor
from tevid_hpo.pruners import REASON_ATTR, TEViDPruner

optuna_dashboard = pytest.importorskip("optuna_dashboard")
werkzeug_test = pytest.importorskip("werkzeug.test")

optuna.logging.set_verbosity(optuna.logging.WARNING)
BATCH, STEPS = 32, 25
PNG = b"\x89PNG\r\n\x1a\n"


def make_objective(diag, data, store):
    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 10.0, log=True)
        torch.manual_seed(0)
        model = small_cnn(in_channels=1, num_classes=10)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        x, y = data.x_train, data.y_train
        mon = TrialMonitor(model, trial, diagnostician=diag)
        try:
            with mon:
                for epoch in range(2):
                    for k in range(STEPS):
                        i = ((epoch * STEPS + k) * BATCH) % (len(x) - BATCH)
                        loss = nn.functional.cross_entropy(model(x[i:i + BATCH]),
                                                           y[i:i + BATCH])
                        opt.zero_grad()
                        loss.backward()
                        mon.step(loss=loss.item())
                        opt.step()
                    mon.epoch_end(epoch)
                    trial.report(-loss.item(), epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
            return -loss.item()
        finally:
            publish_diagnosis(trial, mon, store)

    return objective


@pytest.fixture(scope="module")
def served_study(tmp_path_factory, toy_checkpoint, digits_data):
    from tevid_hpo.diagnostician import Diagnostician

    root = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{root / 'study.db'}"
    (root / "artifacts").mkdir()
    store = FileSystemArtifactStore(str(root / "artifacts"))
    study = optuna.create_study(study_name="tevid-dash", storage=url, direction="maximize",
                                pruner=TEViDPruner(wrapped=None))
    study.enqueue_trial({"lr": 1.0})      # diverges: pruned by TEViD
    study.enqueue_trial({"lr": 3e-3})     # healthy
    diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")
    study.optimize(make_objective(diag, digits_data, store), n_trials=2)
    return url, store, study


def pruned_attrs(study):
    return next(t for t in study.trials if t.state == TrialState.PRUNED).user_attrs


def get_json(client, path):
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return json.loads(response.get_data(as_text=True))


def test_dashboard_serves_the_diagnosis_note_and_figure_of_each_trial(served_study):
    url, store, study = served_study
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.COMPLETE]
    client = werkzeug_test.Client(optuna_dashboard.wsgi(url, artifact_store=store))
    [summary] = get_json(client, "/api/studies")["study_summaries"]
    detail = get_json(client, f"/api/studies/{summary['study_id']}")
    pruned, healthy = sorted(detail["trials"], key=lambda t: t["number"])

    attrs = {a["key"]: a["value"] for a in pruned["user_attrs"]}
    # The dashboard shows a JSON attribute's first 1024 characters: for "tevid" that is the
    # alert, the alerts and the latest diagnosis (the history is cut; the note has it).
    shown = attrs[USER_ATTR]
    assert len(shown) <= 1024 < len(json.dumps(pruned_attrs(study)[USER_ATTR]))
    assert shown.startswith('{"version": 1') and '"alert": "Instability"' in shown
    assert '"reason": "diagnosis"' in shown and '"latest": {' in shown
    assert json.loads(attrs[REASON_ATTR])["label"] == INSTABILITY
    assert attrs[SUMMARY_ATTR].startswith("Instability confirmed at step")
    assert "pruned by Instability at step" in attrs[SUMMARY_ATTR]
    healthy_attrs = {a["key"]: a["value"] for a in healthy["user_attrs"]}
    assert healthy_attrs[SUMMARY_ATTR].startswith("no alert; latest: Healthy")
    body = pruned["note"]["body"]
    assert body.startswith("## TEViD diagnosis: Instability")
    assert "pruned by Instability at step" in body and "| step | epoch | label |" in body
    healthy_note = healthy["note"]["body"]
    assert healthy_note.startswith("## TEViD diagnosis: no alert")
    # The note tabulates the full in-process history (5 diagnoses in 50 steps), not the
    # attribute's last 16.
    assert "5 diagnoses:" in healthy_note

    for trial in (pruned, healthy):
        [artifact] = trial["artifacts"]
        assert artifact["filename"] == f"tevid-trial-{trial['number']}.png"
        assert artifact["mimetype"] == "image/png"
        png = client.get(f"/artifacts/{summary['study_id']}/{trial['trial_id']}/"
                         f"{artifact['artifact_id']}")
        assert png.status_code == 200 and png.get_data().startswith(PNG)


def test_a_real_http_server_thread_serves_the_same(served_study):
    url, store, _ = served_study
    app = optuna_dashboard.wsgi(url, artifact_store=store)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server("127.0.0.1", port, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=10) as r:
                    studies = json.loads(r.read())["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}", timeout=30) as r:
            trials = json.loads(r.read())["trials"]
        assert any(t["note"]["body"].startswith("## TEViD diagnosis: Instability")
                   for t in trials)
    finally:
        server.shutdown()
        server.server_close()


def test_publish_without_a_diagnosis_writes_a_plain_note():
    study = optuna.create_study()
    trial = study.ask()
    assert publish_diagnosis(trial, artifact_store=None) is None
    from optuna_dashboard import get_note

    assert "No diagnosis was recorded." in get_note(trial)


def test_a_failing_artifact_store_never_changes_the_trials_outcome(tmp_path, caplog):
    store = FileSystemArtifactStore(str(tmp_path / "missing"))   # directory does not exist
    study = optuna.create_study()

    def objective(trial):
        trial.set_user_attr(USER_ATTR, {"version": 1, "alert": None, "alerts": {}, "history": [
            {"step": 0, "epoch": 0, "label": "Healthy", "probs": {"Healthy": 1.0},
             "vacuity": 0.1, "alert": None, "finite": True}]})
        try:
            return 1.0
        finally:
            assert publish_diagnosis(trial, artifact_store=store) is None

    with caplog.at_level("WARNING", logger="tevid_hpo.dashboard"):
        study.optimize(objective, n_trials=1)
    assert study.trials[0].state == TrialState.COMPLETE
    assert "could not publish the TEViD diagnosis of trial 0" in caplog.text
