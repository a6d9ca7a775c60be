"""The test-split evaluation end to end on a tiny corpus, and the no-leakage guarantee.

One module fixture builds a factorial corpus of 16 tiny runs (train and val cells share nothing
with the test cells, which also hold two novel-family runs), labels it, trains both TEViD variants
with the CPU pipeline and runs ``experiments.evaluate`` into a temporary results file. While it
runs, every place where runs could reach learning or choosing is wiretapped *independently of the
evaluation's own LeakageGuard*: the clip datasets the pipeline pretrains / fine-tunes / calibrates
on, every baseline's ``fit``, and every threshold search.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from core_models.baselines import BASELINES, run_id_of
from core_models.metrics import RunPrediction
from data_factory.runner import RunSpec, execute_run
from data_factory.store import RunStore
from experiments import evaluate, pipeline
from experiments.evaluate import driver, methods
from experiments.factory import corpus_index
from experiments.label import label_corpus
from tevid_hpo.cost import CostModel

TINY = {"epochs": 3, "every": 5, "frame_size": 16, "lyapunov_every": 0}
TRAIN_CELLS = [("cnn", "digits", "sgd"), ("mlp", "tabular", "adamw")]
VAL_CELLS = [("mlp", "tabular", "sgd")]
# Disjoint from train/val on every factor, as in data_factory.split.DEFAULT_SPLIT.
TEST_CELLS = {("mobilenet", "patterns", "lion"): ("healthy", "instability", "healthy",
                                                  "loader_stall"),
              ("gru_lm", "text", "adafactor"): ("healthy", "instability", "gradient_clipping")}
SECTIONS = ("eval-table3", "eval-table4", "eval-table12", "eval-table15", "eval-table16",
            "eval-table17", "eval-table18-19", "eval-memory")


def _facts(run: Any) -> tuple[str, str, str, str, str]:
    meta = dict(getattr(run, "meta", None) or {})
    return (run_id_of(run), str(meta.get("split")), str(meta.get("arch")),
            str(meta.get("dataset")), str(meta.get("optimizer")))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("evaluate")
    root = tmp / "corpus"
    store = RunStore(root)
    cells = [("train", c, k) for c in TRAIN_CELLS for k in ("healthy", "instability", "healthy")]
    cells += [("val", c, k) for c in VAL_CELLS for k in ("healthy", "instability", "healthy")]
    cells += [("test", c, k) for c, kinds in TEST_CELLS.items() for k in kinds]
    for split, (arch, data, opt), kind in cells:
        run_id = f"{split}-{arch}-{data}-{opt}-{kind}-{len(store.list())}"
        spec = RunSpec(run_id, split, arch, data, opt, kind, severity=1.0, **TINY)
        assert execute_run(spec, store)["status"] == "ok"
    corpus_index(store).to_csv(root / "index.csv", index=False)
    label_corpus(root, workers=1, variants=False)

    seen: list[tuple[str, tuple[str, ...]]] = []   # (purpose, facts of one run)

    def tap(purpose: str, runs: Any) -> None:
        seen.extend((purpose, _facts(r)) for r in (runs or []))

    class TappedClips(pipeline.ClipDataset):
        def __init__(self, runs: Any, *args: Any, **kwargs: Any) -> None:
            tap("pipeline clips (pretrain / finetune / calibrate)", runs)
            super().__init__(runs, *args, **kwargs)

    def tapped_fit(orig: Any) -> Any:
        def fit(self: Any, train_runs: Any, train_labels: Any, val_runs: Any = None,
                val_labels: Any = None) -> Any:
            tap(f"{self.name}.fit train", train_runs)
            tap(f"{self.name}.fit val", val_runs)
            return orig(self, train_runs, train_labels, val_runs, val_labels)
        return fit

    def tapped(name: str, orig: Any) -> Any:
        def call(runs: Any, *args: Any, **kwargs: Any) -> Any:
            tap(name, runs)
            return orig(runs, *args, **kwargs)
        return call

    orig_best = CostModel.best_threshold

    def best_threshold(self: CostModel, runs: Any, *args: Any, **kwargs: Any) -> Any:
        tap("CostModel.best_threshold", runs)
        return orig_best(self, runs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "ClipDataset", TappedClips)
        for cls in BASELINES.values():
            mp.setattr(cls, "fit", tapped_fit(cls.fit))
        mp.setattr(methods, "threshold_at_far",
                   tapped("threshold_at_far", methods.threshold_at_far))
        mp.setattr(methods, "abstention_quantile",
                   tapped("abstention_quantile", methods.abstention_quantile))
        mp.setattr(methods, "_memory_runs", tapped("run memory", methods._memory_runs))
        mp.setattr(CostModel, "best_threshold", best_threshold)

        conf = OmegaConf.load(pipeline.CONF / "pipeline.yaml")
        conf.merge_with({"root": str(root), "out": str(tmp / "models"), "profile": "tiny",
                         "device": "cpu", "ship": False, "label_workers": 1,
                         "pretrain": {"epochs": 1, "batch_size": 8, "progress": False},
                         "finetune": {"epochs": 1, "batch_size": 8, "progress": False}})
        pipeline.run_pipeline(conf)

        cfg = OmegaConf.load(evaluate.CONF / "evaluate.yaml")
        cfg.merge_with({
            "root": str(root), "out": str(tmp / "models"), "results": str(tmp / "results.md"),
            "device": "cpu", "quick": True, "quick_resamples": 30,
            "baselines": {"curve_tcn": {"epochs": 3, "patience": 2, "channels": 8},
                          "stats_gbdt": {"num_boost_round": 10, "min_child_samples": 2},
                          "stats_gbdt_curves": {"num_boost_round": 10, "min_child_samples": 2},
                          "embedding_cpd": {"window": 4, "proj_dim": 8}}})
        summary = evaluate.run_evaluation(cfg, command="pytest tests/test_evaluate.py")
    test_runs = [store.load(r) for r in store.list() if r.startswith("test-")]
    yield SimpleNamespace(root=root, tmp=tmp, cfg=cfg, summary=summary, seen=seen,
                          results=(tmp / "results.md").read_text(), test_runs=test_runs,
                          corpus=pipeline.corpus_hash(root))


def test_every_table_is_written_with_its_provenance(evaluated: SimpleNamespace) -> None:
    text = evaluated.results
    for name in SECTIONS:
        section = re.search(rf"<!-- BEGIN {name} -->(.*?)<!-- END {name} -->", text, re.DOTALL)
        assert section, f"section {name} missing"
        body = section.group(1)
        # Every table names its command, seed and corpus hash.
        assert "_Command: `pytest tests/test_evaluate.py`" in body
        assert "seed=0" in body and f"corpus={evaluated.corpus}" in body
    # Both pipeline variants and every baseline were evaluated; the ablation is reported missing.
    methods = evaluated.summary["methods"]
    assert {"tevid_mae", "tevid_scratch"} | set(BASELINES) == set(methods)
    for name, nums in methods.items():
        est = nums["auprc"]["estimate"]
        assert 0.0 <= est <= 1.0, name
        assert nums["far_threshold"] is not None, name          # chosen on val
        assert nums["detected"] <= nums["anomalous"]
        assert 0 <= nums["premature"] <= nums["detected"], name
    assert methods["bocpd"]["macro_f1"] is None                  # no class probabilities: N/A
    assert methods["tevid_mae"]["macro_f1"] is not None
    assert "Not measured: no checkpoint at" in text and "tevid_act" in text
    assert "threshold" in text and "validation" in text
    for fig in ("pr_curves.png", "risk_coverage.png"):
        path = evaluated.tmp / "figures" / fig
        assert path.stat().st_size > 1000 and f"](figures/{fig})" in text
    summary = json.loads((evaluated.tmp / "models" / "evaluation" / "summary.json").read_text())
    assert summary["runs"]["test"] == len(evaluated.test_runs) == 7
    assert set(summary["table15"]["tevid_mae"]) == {"0", "1", "2", "4"}
    # Every method went through a run memory chosen on val from the grid, reported with and
    # without it, per anomalous label too.
    grid = set(evaluated.cfg.memory_grid)
    for name, mem in summary["memory"].items():
        assert mem["window"] in grid, name
        assert set(mem["test_by_label_memory"]) <= {"Instability", "Unknown"}
        if name not in ("tevid_mae", "tevid_scratch"):          # TEViD's comes from its checkpoint
            best = max(mem["val_auprc"].values())
            assert mem["val_auprc"][str(mem["window"])] == best, name
    assert "Which anomalies each method finds" in text
    # Two novel-family test runs are labelled Unknown and appear in Table 17.
    assert "loader_stall" in text and "gradient_clipping" in text
    assert summary["table16"]["tevid_mae"]["auroc_step"]["estimate"] is not None
    assert "auroc_step_vs_known_anomalies" in summary["table16"]["tevid_mae"]
    assert "Before the fault began" in text and "known vs. unknown anomalies" in text


def test_no_test_run_or_factor_reaches_training_calibration_or_thresholds(
        evaluated: SimpleNamespace) -> None:
    seen = evaluated.seen
    purposes = {p for p, _ in seen}
    # The taps really saw the pipeline's training/calibration, every baseline and every search.
    assert "pipeline clips (pretrain / finetune / calibrate)" in purposes
    assert {f"{n}.fit train" for n in BASELINES} <= purposes
    assert {"threshold_at_far", "CostModel.best_threshold", "abstention_quantile",
            "run memory"} <= purposes
    test_ids = {r.run_id for r in evaluated.test_runs}
    held_out = [{str(r.meta[f]) for r in evaluated.test_runs} for f in evaluate.FACTORS]
    assert all(len(v) == 2 for v in held_out)
    for purpose, (run_id, split, *factors) in seen:
        assert run_id not in test_ids, f"test run {run_id} reached {purpose}"
        assert split in ("train", "val"), f"{run_id} ({split}) reached {purpose}"
        for value, test_values in zip(factors, held_out):
            assert value not in test_values, f"held-out {value} reached {purpose} via {run_id}"
    # The evaluation's own guard agrees and says so in the results.
    assert evaluated.summary["leakage"]["test_runs"] == 7
    assert "none is one of the 7 test runs" in evaluated.results


def test_evaluation_refuses_a_test_run_in_validation(evaluated: SimpleNamespace,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = driver.split_runs

    def leaky(store: Any, labels: Any, split: str) -> Any:
        runs, events = real(store, labels, split)
        if split == "val":   # a test run slipped into validation (e.g. a mislabelled split)
            extra, extra_ev = real(store, labels, "test")
            return runs + extra[:1], events + extra_ev[:1]
        return runs, events

    monkeypatch.setattr(driver, "split_runs", leaky)
    cfg = evaluated.cfg.copy()
    cfg.results = str(evaluated.tmp / "leaky.md")
    with pytest.raises(evaluate.LeakageError, match="test runs"):
        evaluate.run_evaluation(cfg, command="pytest")
    assert not (evaluated.tmp / "leaky.md").exists()


def _run(run_id: str, split: str, arch: str, dataset: str, optimizer: str) -> SimpleNamespace:
    return SimpleNamespace(run_id=run_id, meta={"split": split, "arch": arch,
                                                "dataset": dataset, "optimizer": optimizer})


def test_leakage_guard_rejects_test_runs_and_held_out_factors() -> None:
    test = [_run("test-0", "test", "mixer", "text", "lion")]
    guard = evaluate.LeakageGuard(test)
    clean = [_run("train-0", "train", "cnn", "digits", "sgd")]
    assert guard.admit("fit", "m", clean) is clean
    with pytest.raises(evaluate.LeakageError, match="test runs"):
        guard.admit("fit", "m", test)
    for leak, what in [(_run("val-1", "val", "mixer", "digits", "sgd"), "arch"),
                       (_run("val-2", "val", "cnn", "text", "sgd"), "dataset"),
                       (_run("val-3", "val", "cnn", "digits", "lion"), "optimizer"),
                       (_run("other-4", "test", "cnn", "digits", "sgd"), "split=test")]:
        with pytest.raises(evaluate.LeakageError, match=what):
            guard.admit("alert threshold", "m", [leak])
    with pytest.raises(evaluate.LeakageError):
        guard.check()   # the recorded leaks are still there
    assert "held out: arch: mixer; dataset: text; optimizer: lion" in guard.summary()
    # a guard without factors checks ids and splits only, and its summary claims no more
    bare = evaluate.LeakageGuard(test, factors=())
    bare.admit("fit", "m", clean)
    assert "held out" not in bare.summary() and bare.summary().endswith("split=test.")


def test_retime_and_run_level_label() -> None:
    probs = np.array([[0.9, 0.1, 0, 0, 0], [0.1, 0, 0.9, 0, 0], [0.1, 0, 0.9, 0, 0],
                      [0.2, 0.8, 0, 0, 0]])
    pred = RunPrediction("r", "Instability", [0, 40, 80, 120], [0, 0, 1, 1], probs,
                         [0.1, 0.1, 0.9, 0.1], onset_step=40, fire_step=80)
    q = evaluate.retime(pred, 80)
    assert q.epochs.tolist() == [0.0, 0.5, 1.0, 1.5]
    assert (q.onset_epoch, q.fire_epoch) == (0.5, 1.0)
    assert evaluate.retime(pred, None) is pred
    # Event window = steps 1..3: Instability, Unknown (abstained), Overfitting -> tie broken by
    # LABELS order (Overfitting before Instability).
    assert evaluate.step_labels(q, 0.35).tolist() == ["Healthy", "Instability", "Unknown",
                                                      "Overfitting"]
    assert evaluate.run_level_label(q, 0.35) == "Overfitting"
    assert evaluate.run_level_label(q, None) == "Instability"


def test_transfer_probes_measure_a_checkpoint_and_a_fine_tuned_variant(
        evaluated: SimpleNamespace) -> None:
    from data_factory.labelers import frame_event_labels
    from experiments import transfer_probe

    out = evaluated.tmp / "probes"
    ckpt = transfer_probe.run_probe(checkpoint=evaluated.tmp / "models" / "tevid_mae" / "default",
                                    root=evaluated.root, out=out)
    probe = transfer_probe.run_probe(frames="first_frame", augment="layout", epochs=1,
                                     root=evaluated.root, out=out, profile="tiny",
                                     finetune_overrides={"batch_size": 8, "progress": False},
                                     fit_on="train+val")
    labels = pipeline.load_labels(evaluated.root)
    anomalous = {str(x) for r in evaluated.test_runs
                 for x in np.unique(frame_event_labels(labels[r.run_id], r.frames.steps))}
    anomalous -= {"Healthy"}
    for result in (ckpt, probe):
        for split in ("val", "test"):
            m = result[split]
            assert 0.0 < m["auprc"] <= 1.0 and 0.0 <= m["known_acc"] <= 1.0
        # Every anomalous label of the test steps gets its own AUPRC against the healthy steps.
        assert {k for k in result["test"] if k.startswith("auprc_vs_healthy")} == {
            f"auprc_vs_healthy[{x}]" for x in anomalous}
        # One diagnosis per capture step of every test run (stride 1, as Table 3).
        assert result["test"]["steps"] == sum(r.meta["n_frames"] for r in evaluated.test_runs)
        # The tiny test split holds novel-family runs, so every Unknown score is measured there.
        assert {k for k in result["test"] if k.startswith("unknown_auroc")} == {
            f"unknown_auroc[{k}]" for k in ("vacuity", "1-max p", "unknown anomaly", "mahalanobis")}
    assert ckpt["name"] == "checkpoint-tevid_mae"
    assert probe["name"] == "scratch-first_frame-layout-1ep-trainval"
    table = transfer_probe.probes_section(out)
    assert "| checkpoint-tevid_mae |" in table
    # Fitted on val: the table shows no val number for it.
    assert "| scratch-first_frame-layout-1ep-trainval | fitted |" in table
    with pytest.raises(ValueError, match="fit_on"):
        transfer_probe.run_probe(fit_on="test", root=evaluated.root, out=out)
    with pytest.raises(ValueError, match="fit_on"):   # a checkpoint was trained as it was
        transfer_probe.run_probe(checkpoint=evaluated.tmp / "models" / "tevid_mae" / "default",
                                 fit_on="train+val", root=evaluated.root, out=out)


def test_probe_transforms_keep_what_they_promise() -> None:
    from experiments.transfer_probe import first_frame_reference, layout_augment

    frames = torch.randn(5, 6, 16, 16) * 3
    ref = first_frame_reference(frames, clip=8.0)
    assert torch.equal(ref[0], torch.zeros(6, 16, 16)) and float(ref.abs().max()) <= 8.0
    assert torch.allclose(ref[3], (frames[3] - frames[0]).clamp(-8, 8))
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        out = layout_augment(frames, gen, patch=8)
        # Positions move and each channel is rescaled by one gain in [0.8, 1.2], shared by every
        # frame: per channel, the sorted values are the original ones times that gain.
        for c in range(6):
            gain = float(out[:, c].abs().sum() / frames[:, c].abs().sum())
            assert 0.8 <= gain <= 1.2
            assert torch.allclose(out[:, c].flatten().sort().values / gain,
                                  frames[:, c].flatten().sort().values, atol=1e-4)
    # One layout for the whole clip: a clip whose frames differ by a constant keeps differing by
    # a constant (times the gain) at every position.
    drift = frames[:1] + torch.arange(5.0).view(5, 1, 1, 1)
    out = layout_augment(drift, torch.Generator().manual_seed(3), patch=8)
    step = out[1:] - out[:-1]
    assert torch.allclose(step, step[:, :, :1, :1].expand_as(step), atol=1e-4)
