"""The CPU pipeline end to end on a tiny corpus: label → pretrain → fine-tune → calibrate → load."""

from __future__ import annotations

import ast
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from core_models.telemetry import NUM_FEATURES, capture_scalars
from data_factory.runner import RunSpec, execute_run
from data_factory.store import RunStore
from experiments.factory import corpus_index
from experiments.label import agreement, label_corpus
from experiments.pipeline import (CONF, load_labels, reference_mask, run_pipeline, split_runs,
                                  transfer_runs)
from tevid_hpo.diagnostician import Diagnostician

TINY = dict(epochs=3, every=5, frame_size=16, lyapunov_every=0)


def test_pipeline_on_tiny_corpus(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    root = tmp_path / "corpus"
    store = RunStore(root)
    cells = [("train", "cnn", "digits", "sgd"), ("train", "mlp", "tabular", "adamw"),
             ("val", "mlp", "tabular", "sgd")]
    for split, arch, data, opt in cells:
        for kind in ("healthy", "instability", "healthy"):
            run_id = f"{split}-{arch}-{data}-{opt}-{kind}-{len(store.list())}"
            spec = RunSpec(run_id, split, arch, data, opt, kind, severity=1.0, **TINY)
            assert execute_run(spec, store)["status"] == "ok"
    corpus_index(store).to_csv(root / "index.csv", index=False)

    table, cfg = label_corpus(root, workers=1, variants=False)
    assert set(table["intervention"]) == {"healthy", "instability"}
    matrix, per_family = agreement(table)
    assert per_family["instability"] > 0  # lr x300 blows up tiny runs (the jump variant may be late)
    assert matrix.to_numpy().sum() == 9

    conf = OmegaConf.load(CONF / "pipeline.yaml")
    conf.merge_with({"root": str(root), "out": str(tmp_path / "models"), "profile": "tiny",
                     "device": "cpu", "ship": False, "label_workers": 1, "transfer": "none",
                     "pretrain": {"epochs": 1, "batch_size": 8},
                     "finetune": {"epochs": 1, "batch_size": 8}})
    conf.pretrain.progress = False
    summary = run_pipeline(conf)
    assert summary["train_runs"] == 6 and summary["val_runs"] == 3
    assert "label_s" not in summary["timings"]        # labelled above, not by this run
    for variant in ("tevid_mae", "tevid_scratch"):
        path = tmp_path / "models" / variant / "default"
        diag = Diagnostician.from_pretrained(path, device="cpu")
        config = json.loads(path.with_suffix(".json").read_text())
        assert config["corpus_hash"] == summary["corpus_hash"] and config["variant"] == variant
        assert 0.0 <= config["val_metrics"]["val_window_accuracy"] <= 1.0
        frames = store.load(store.list()[0]).frames
        diagnoses = [diag.update(f) for f in frames]
        assert all(0.0 <= d.vacuity <= 1.0 for d in diagnoses)
    assert not (tmp_path / "models" / "tevid_mae" / "default.safetensors").stat().st_size == 0
    assert isinstance(pd.read_csv(root / "labels.csv"), pd.DataFrame)

    # A second call finds every stage complete: it recalibrates, and reports the training times
    # of the run that produced the checkpoints, not the seconds the skip took.
    again = run_pipeline(conf)
    assert set(again["reused_stages"]) == {"pretrain_s", "tevid_mae_s", "tevid_scratch_s"}
    for key in ("pretrain_s", "tevid_mae_s", "tevid_scratch_s"):
        assert again["timings"][key] == summary["timings"][key]
    assert again["timings"]["total_s"] == round(sum(
        v for k, v in again["timings"].items() if k != "total_s"), 1)
    # Default burn-in: the whole window; with a grid it is chosen on val and stored.
    assert again["tevid_mae"]["burn_in"] == 0
    # The alert's confirmation count is the config's, in the checkpoint's calibration.
    assert again["tevid_mae"]["consecutive"] == conf.consecutive
    shipped_gate = conf.tau_u
    conf.burn_in_grid, conf.consecutive, conf.tau_u = [1, 2], 3, 0.6
    chosen = run_pipeline(conf)
    for variant in ("tevid_mae", "tevid_scratch"):
        assert chosen[variant]["burn_in"] in (1, 2)
        diag = Diagnostician.from_pretrained(tmp_path / "models" / variant / "default", "cpu")
        assert diag.evidence_frames == chosen[variant]["burn_in"]
        assert diag.calibration.consecutive == 3
        assert diag.calibration.tau_u == 0.6        # a fixed abstention gate, as configured
    conf.tau_u = shipped_gate

    # Choose on transfer (point 4): a held-out set (here the val runs again, standing in for the
    # external-dev recordings) joins the choice and must keep the false-alarm budget on its own.
    from experiments.external import transfer

    held_out = [(r, ev, True) for r, ev in zip(*split_runs(store, load_labels(root), "val"))]
    monkeypatch.setattr(transfer, "dev_streams", lambda root=None: held_out)
    conf.transfer, conf.transfer_part = "external-dev", "all"   # the stand-ins have no dev row ids
    capsys.readouterr()
    xfer = run_pipeline(conf)
    for variant in ("tevid_mae", "tevid_scratch"):
        assert xfer[variant]["external_dev_runs"] == len(held_out)
        assert not xfer[variant]["external_dev_healthy_far"] > conf.target_far   # NaN: no healthy

    def clips(out: str) -> int:
        line = next(x for x in out.splitlines() if x.startswith("fine-tuning clips per label:"))
        return sum(ast.literal_eval(line.split(":", 1)[1].strip()).values())

    base = clips(capsys.readouterr().out)
    # User-style runs in fine-tuning (attempts row 17): a part's transfer runs join the
    # fine-tuning clips, each `finetune_extra_repeat` times; runs with Unknown frames stay out.
    from data_factory.labels import KNOWN_LABELS

    known = [ev for _, ev, _ in held_out if all(str(x) in KNOWN_LABELS for x in ev)]
    conf.merge_with({"out": str(tmp_path / "models_extra"), "finetune_extra": "all",
                     "finetune_extra_repeat": 2})
    run_pipeline(conf)
    out = capsys.readouterr().out
    assert f"fine-tuning also on {len(known)} external-dev runs (all), x2" in out
    assert known and clips(out) > base
    conf.merge_with({"out": str(tmp_path / "models"), "finetune_extra": "none"})
    conf.transfer = "none"

    # Telemetry (issue 24 point 3): MAE and tevid_mae read the training scalars; the Table 12
    # ablation adds frames-only A+G and scalars-only rows.
    conf.merge_with({"out": str(tmp_path / "models_tele"), "telemetry": True, "ablations": True,
                     "scratch": False, "burn_in_grid": []})
    tele = run_pipeline(conf)
    expected = {"tevid_mae": NUM_FEATURES, "tevid_act": 0, "tevid_grad": 0, "tevid_frames": 0,
                "tevid_scalars": NUM_FEATURES}
    run = store.load(store.list()[0])
    scalars = capture_scalars(run.steps, run.frames.steps)
    for variant, n_features in expected.items():
        assert 0.0 <= tele[variant]["val_window_accuracy"] <= 1.0
        diag = Diagnostician.from_pretrained(tmp_path / "models_tele" / variant / "default", "cpu")
        assert diag.model.telemetry == n_features
        frames = [dataclasses.replace(f, scalars=s) for f, s in zip(run.frames, scalars)]
        assert all(0.0 <= diag.update(f).vacuity <= 1.0 for f in frames)


def test_calibration_budgets_false_alarms_on_healthy_references_only():
    def run(kind):
        return SimpleNamespace(meta={"intervention": {"kind": kind}})

    runs = [run("healthy"), run("overfitting"), run("overfitting"), SimpleNamespace(meta={})]
    streams = [(None, "Healthy", None), (None, "Healthy", None), (None, "Overfitting", None),
               (None, "Healthy", None)]
    # The overfitting run its rule left Healthy is neither a clean negative nor a positive.
    assert reference_mask(runs, streams) == [True, False, True, True]


def test_transfer_reads_the_named_recordings_directory(tmp_path, monkeypatch):
    """``transfer=DIR`` reads the recordings in DIR itself (e.g. ones made before a change of the
    recording code moved the cache key), not DIR/<current key>; ``external-dev`` the current
    key's; ``none`` none, and an empty directory gives no transfer set."""
    from experiments.external import transfer

    seen = []
    monkeypatch.setattr(transfer, "dev_streams",
                        lambda root=None, key=None: seen.append((root, key)) or [])
    profile = SimpleNamespace(name="cpu", in_chans=6, frame_size=32)
    assert transfer_runs(str(tmp_path / "f6c52739ac17fa1e"), profile) == []
    assert transfer_runs("external-dev", profile) == []
    assert transfer_runs("none", profile) == []
    assert seen == [(tmp_path, "f6c52739ac17fa1e"), (None, None)]


def test_transfer_runs_read_the_pool_only_for_a_part_that_names_it(monkeypatch) -> None:
    """Part ``pool`` (alone or joined) asks ``dev_streams`` for the external-train pool's runs
    too and keeps the part's runs; a dev part never asks for them."""
    from experiments.external import transfer

    frames = SimpleNamespace(tensor=torch.zeros(2, 6, 32, 32))
    runs = {rid: (SimpleNamespace(run_id=rid, frames=frames), np.array(["Healthy"] * 2), True)
            for rid in ("external-dev-03-mlp-digits-healthy-aa",
                        "external-dev-60-mlp-digits-healthy-bb",
                        "external-train-05-tcn-chirps-healthy-cc")}
    asked = []

    def streams(root=None, key=None, pool=False):
        asked.append(pool)
        return [r for rid, r in runs.items() if pool or "external-train" not in rid]

    monkeypatch.setattr(transfer, "dev_streams", streams)
    profile = SimpleNamespace(name="cpu", in_chans=6, frame_size=32)
    ids = lambda part: [r.run_id for r, _, _ in transfer_runs("external-dev", profile, part)]
    assert ids("pool") == ["external-train-05-tcn-chirps-healthy-cc"]
    assert ids("written+pool") == ["external-dev-03-mlp-digits-healthy-aa",
                                   "external-train-05-tcn-chirps-healthy-cc"]
    assert ids("drawn") == ["external-dev-60-mlp-digits-healthy-bb"]
    assert asked == [True, True, False]
