"""The external suite (issue 23): its pre-registered halves, the guard that keeps external-test
out of every fit and threshold choice, and the whole pipeline end to end on a few short runs.

The end-to-end fixture trains the five ``SMOKE`` runs (short MLP / Conv1d runs on digits, breast
cancer and sines) under the shipped diagnostician through the public ``TrialMonitor`` into a
temporary cache, labels them, scores TEViD, two baselines fitted on synthetic factory-like runs
(``core_models.baselines.toy``; the real suite fits them on the factory corpus) and the users'
rules, and writes the tables into a temporary results file — while every run list that reaches a
fit or a threshold choice is wiretapped independently of the guard.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from core_models.baselines.toy import toy_run
from data_factory.labelers.rules import RunLabel
from experiments import evaluate
from experiments.evaluate import LeakageError, LeakageGuard
from experiments.external import methods as ext_methods
from experiments.external.data import load_data
from experiments.external.models import FAMILIES, build_model
from experiments.external.record import record_suite, recording_id
from experiments.external.report import external_tables, run_outcome
from experiments.external.scenarios import Injector, Scenario
from experiments.external.suite import DEV, POOL, SMOKE, SUITE, TEST, check_disjoint
from experiments.external.truth import truth_of


def test_halves_are_disjoint_and_cover_ten_families() -> None:
    check_disjoint(DEV, TEST)
    assert len({s.family for s in SUITE}) >= 10
    for half in (DEV, TEST):
        kinds = {s.scenario.kind for s in half}
        assert kinds == {"healthy", "lr_jump", "lr_high", "overfit", "label_noise", "freeze",
                         "stall"}
    with pytest.raises(ValueError, match="external halves share family"):
        check_disjoint(DEV, DEV[:1])


def test_drawn_blocks_are_fixed_and_stay_inside_their_half() -> None:
    """The drawn blocks (dev v4–v7, test v3) are part of the committed spec: the same rows on every
    draw, each recipe inside its half's menu, every mid-run fault before the run's last epoch."""
    from collections import Counter

    from experiments.external.suite import _DEV_MENU, _TEST_MENU, _draw

    assert _draw(_DEV_MENU, 25, 120, 200) == _draw(_DEV_MENU, 25, 120, 200)
    block, block2, block3, block4 = DEV[58:178], DEV[178:298], DEV[298:418], DEV[418:]
    assert [s.seed for s in block] == list(range(200, 320))
    assert [s.seed for s in block2] == list(range(700, 820))
    assert [s.seed for s in block3] == list(range(900, 1020))
    assert [s.seed for s in block4] == list(range(1100, 1220))
    assert Counter(s.scenario.kind for s in block) == {
        "healthy": 47, "lr_jump": 42, "lr_high": 18, "overfit": 6, "stall": 3,
        "label_noise": 3, "freeze": 1}
    assert Counter(s.scenario.kind for s in block2) == {
        "healthy": 64, "lr_jump": 24, "overfit": 15, "lr_high": 10, "stall": 3, "freeze": 3,
        "label_noise": 1}
    assert Counter(s.scenario.kind for s in block3) == {
        "healthy": 63, "lr_jump": 30, "overfit": 10, "lr_high": 9, "stall": 4, "freeze": 3,
        "label_noise": 1}
    assert Counter(s.scenario.kind for s in block4) == {
        "healthy": 53, "lr_jump": 32, "overfit": 17, "lr_high": 13, "freeze": 3,
        "label_noise": 1, "stall": 1}
    assert Counter(s.scenario.kind for s in TEST[48:])["lr_jump"] == 14
    for menu, drawn in ((_DEV_MENU, block + block2 + block3 + block4), (_TEST_MENU, TEST[48:])):
        ranges = {name: (lo, hi) for name, lo, hi in menu.optimizers}
        cells = {(f, d): e for f, _, d, e in menu.cells}
        for s in drawn:
            lo, hi = ranges[s.recipe.optimizer]
            assert lo * 0.95 <= s.recipe.lr <= hi * 1.05, s
            base = cells[s.family, s.data]
            assert s.recipe.epochs == (3 * base if s.scenario.kind == "overfit" else base)
            if s.scenario.fault_epoch is not None:
                assert 2 <= s.scenario.fault_epoch < s.recipe.epochs


def test_pool_trains_on_factors_neither_half_has() -> None:
    """The external-train pool is fixed, disjoint from both halves, and every family of it
    builds on its data and takes a step with every pool optimizer."""
    from collections import Counter

    from experiments.external.recipes import build_optimizer
    from experiments.external.suite import _POOL_MENU, _draw

    check_disjoint(POOL, DEV + TEST)
    assert {s.half for s in POOL} == {"external-train"} and not set(POOL) & set(SUITE)
    assert [s.seed for s in POOL] == list(range(500, 660))
    assert _draw(_POOL_MENU, 27, 160, 500) == _draw(_POOL_MENU, 27, 160, 500)
    assert Counter(s.scenario.kind for s in POOL) == {
        "healthy": 71, "lr_jump": 43, "overfit": 21, "lr_high": 16, "stall": 4,
        "label_noise": 3, "freeze": 2}
    optimizers = sorted({s.recipe.optimizer for s in POOL})
    assert optimizers == ["adamax", "asgd", "nadam", "radam"]
    for (family, data), opt in zip(sorted({(s.family, s.data) for s in POOL}),
                                   optimizers * 2):
        d = load_data(data)
        model = build_model(family, d, variant=1, seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        o, _ = build_optimizer(replace(POOL[0].recipe, optimizer=opt), model.parameters(), 4)
        torch.nn.functional.cross_entropy(model(d.x_train[:8]), d.y_train[:8]).backward()
        o.step()
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), family


def test_dev_parts_split_external_dev_and_never_hold_a_test_run() -> None:
    from experiments.external.folds import PARTS, WRITTEN_ROWS, in_part

    ids = [s.run_id for s in DEV]
    parts = {p: {i for i in ids if in_part(i, p)} for p in PARTS}
    assert len(parts["written"]) == WRITTEN_ROWS == 58
    assert len(parts["drawn-even"]) == len(parts["drawn-odd"]) == 60
    assert {len(parts[f"drawn{k}"]) for k in ("", "2", "3", "4")} == {120}
    assert (parts["written"] | parts["drawn-even"] | parts["drawn-odd"] | parts["drawn2"]
            | parts["drawn3"] | parts["drawn4"] == parts["all"] == set(ids))
    assert not parts["drawn2"] & (parts["written"] | parts["drawn"] | parts["drawn3"])
    assert not parts["written"] & parts["drawn"] and not parts["drawn-even"] & parts["drawn-odd"]
    assert not any(in_part(s.run_id, p) for s in TEST for p in PARTS)
    mixers = {i for i in ids if in_part(i, "drawn@mixer")}
    assert mixers == {s.run_id for s in DEV[58:178] if s.family == "mixer"} and mixers
    assert {i for i in ids if in_part(i, "drawn@mlp,lstm+drawn@conv1d,mixer")} == parts["drawn"]
    with pytest.raises(ValueError, match="unknown external-dev part"):
        in_part(ids[0], "test")
    pool = {s.run_id for s in POOL if in_part(s.run_id, "pool")}
    assert pool == {s.run_id for s in POOL} and not any(in_part(i, "pool") for i in ids)
    assert not any(in_part(s.run_id, p) for s in POOL for p in PARTS if p != "pool")
    assert {s.run_id for s in POOL if in_part(s.run_id, "written+pool@tcn")} == {
        s.run_id for s in POOL if s.family == "tcn"}


def _shifted_preds(shift: float) -> list:
    """12 runs, every other one anomalous from step 1; ``shift`` raises some healthy runs'
    scores above the anomalous ones' (a worse method)."""
    from core_models.metrics import RunPrediction

    out = []
    for i in range(12):
        bad = i % 2 == 1
        score = np.clip(np.array([0.1, 0.2, 0.3 + (0.5 if bad else shift * (i % 3))]), 0, 1)
        probs = np.stack([1 - score, np.zeros(3), score, np.zeros(3), np.zeros(3)], 1)
        out.append(RunPrediction(f"r{i}", "Instability" if bad else "Healthy", [0, 1, 2],
                                 [0, 1, 2], probs, [0.1, 0.1, 0.1],
                                 onset_step=1 if bad else None))
    return out


def test_paired_to_best_compares_tevid_with_the_best_other_method() -> None:
    from core_models.metrics import event_time_auprc
    from experiments.external.methods import MethodScores
    from experiments.external.report import paired_to_best

    half = "external-test"
    # event-time AUPRC of _shifted_preds: 0.75 at shift 0, 0.625 at 0.3, 0.55 at 0.6
    methods = {"tevid": MethodScores("tevid", "TEViD (its own alert)", "TEViD",
                                     {half: _shifted_preds(0.0)}),
               "tevid_far": MethodScores("tevid_far", "TEViD @ 5 %", "TEViD",
                                         {half: _shifted_preds(0.6)}),   # not a rival
               "cusum": MethodScores("cusum", "CUSUM", "baseline", {half: _shifted_preds(0.6)}),
               "rule": MethodScores("rule", "a rule", "user rule", {half: _shifted_preds(0.3)})}
    out = paired_to_best(methods, half, n_resamples=200)
    assert out["best"] == "rule"
    want = (event_time_auprc(methods["tevid"].preds[half])
            - event_time_auprc(methods["rule"].preds[half]))
    assert out["estimate"] == pytest.approx(want) and want > 0
    assert out["low"] <= out["estimate"] <= out["high"]
    assert paired_to_best({"tevid": methods["tevid"]}, half) is None


def test_compare_parts_is_the_paired_difference_of_the_two_outcomes(monkeypatch) -> None:
    from core_models.metrics import event_time_auprc
    from experiments.external import part_scores

    runs = {"good": _shifted_preds(0.0), "worse": _shifted_preds(0.4)}
    reads = []
    monkeypatch.setattr(part_scores, "_part_runs",
                        lambda part, key: reads.append(part) or ([], {}))
    monkeypatch.setattr(part_scores, "_outcome",
                        lambda ckpt, part, counted, truths: {"checkpoint": ckpt, "preds": runs[ckpt]})
    out = part_scores.compare_parts("good", "worse", "drawn-odd", n_resamples=200)
    assert reads == ["drawn-odd"]   # the recordings are read once for both checkpoints
    diff = out["auprc_difference"]
    want = event_time_auprc(runs["good"]) - event_time_auprc(runs["worse"])
    assert diff["estimate"] == pytest.approx(want) and want > 0
    assert diff["low"] <= diff["estimate"] <= diff["high"]


def test_no_family_comes_from_the_factory() -> None:
    import data_factory.architectures as arch

    d = load_data("markov")
    for family in ("lstm", "mlp"):
        m = build_model(family, d if family == "lstm" else load_data("wine"))
        assert not type(m).__module__.startswith(arch.__name__)
    assert "mlp" in FAMILIES and "transformer" in FAMILIES


def test_scenarios_inject_what_they_say() -> None:
    inj = Injector(Scenario("lr_jump", fault_epoch=2, factor=12), n_train=64, batch_size=16,
                   seed=0)
    assert [inj.lr_scale(e) for e in range(4)] == [1.0, 1.0, 12.0, 12.0]
    noisy = Injector(Scenario("label_noise", fault_epoch=1, fraction=0.6), 200, 16, 0)
    y = torch.zeros(200, dtype=torch.long)
    assert noisy.labels(0, y, 4).eq(0).all()
    assert 0.3 < float(noisy.labels(1, y, 4).ne(0).float().mean()) < 0.6
    with pytest.raises(ValueError, match="needs fault_epoch"):
        Scenario("stall")


def test_outcomes_separate_detections_from_premature_alerts() -> None:
    assert run_outcome(5, 20, 10, positive=True).premature
    assert not run_outcome(5, 20, 10, positive=True).detected
    fa = run_outcome(3, None, 10, positive=False)
    assert fa.false_alarm and fa.first_epoch


def test_guard_refuses_external_test_for_fitting_and_thresholds() -> None:
    test_run = SimpleNamespace(run_id="t0", meta={"split": "external-test", "arch": "gru"})
    other = SimpleNamespace(run_id="t1", meta={"split": "external-test", "arch": "gru"})
    guard = LeakageGuard([test_run], factors=())
    for purpose in ("fit", "tuning / early stopping", "alert threshold (5% FAR)",
                    "calibration (pipeline)"):
        # also a run the guard was not built on: the split alone refuses it
        with pytest.raises(LeakageError, match="split=external-test"):
            guard.admit(purpose, "any", [other])
    dev = SimpleNamespace(run_id="d0", meta={"split": "external-dev", "arch": "gru"})
    assert guard.admit("fit", "any", [dev]) == [dev]
    # the factory evaluation's own guard refuses external-test runs the same way
    with pytest.raises(LeakageError, match="split=external-test"):
        LeakageGuard([]).admit("training (pipeline)", "tevid", [other])


def _toy_factory() -> tuple[list[Any], list[Any], dict[str, RunLabel]]:
    runs, labels = [], {}
    for i in range(8):
        boom = 150 if i % 2 else None
        r = toy_run(n_steps=300, explode_at=boom, seed=i, run_id=f"toy-{i}")
        r.meta["split"] = "train" if i < 6 else "val"
        runs.append(r)
        labels[r.run_id] = (RunLabel("Instability", boom, boom) if boom
                            else RunLabel("Healthy", None, None))
    return runs[:6], runs[6:], labels


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("external")
    store, errors = record_suite(SMOKE, workers=1, root=root, progress=False)
    assert errors == {}
    runs = {h: [store.load(recording_id(s)) for s in SMOKE if s.half == h]
            for h in ("external-dev", "external-test")}
    truths = {r.run_id: truth_of(r) for rs in runs.values() for r in rs}
    counted = {h: [r for r in rs if truths[r.run_id].counted] for h, rs in runs.items()}
    guard = LeakageGuard(runs["external-test"], factors=())
    seen: list[tuple[str, str]] = []
    real_admit = guard.admit

    def tapped(purpose: str, method: str, rs: Any) -> Any:
        seen.extend((purpose, str(dict(getattr(r, "meta", {}) or {}).get("split"))) for r in rs)
        return real_admit(purpose, method, rs)

    guard.admit = tapped  # type: ignore[method-assign]
    thresholds: list[set[str]] = []
    real_thr = ext_methods.threshold_at_far

    def tapped_thr(rs: Any, *a: Any, **k: Any) -> float:
        thresholds.append({str(r.meta.get("split")) for r in rs})
        return real_thr(rs, *a, **k)

    ext_methods.threshold_at_far = tapped_thr
    try:
        methods = ext_methods.score_methods(counted, truths, _toy_factory(), guard,
                                            baselines=["cusum", "stats_gbdt"], log=lambda *_: 0)
    finally:
        ext_methods.threshold_at_far = real_thr
    return SimpleNamespace(store=store, runs=runs, counted=counted, truths=truths,
                           methods=methods, seen=seen, thresholds=thresholds, guard=guard)


def test_recordings_come_from_the_public_monitor(smoke: SimpleNamespace) -> None:
    run = smoke.runs["external-dev"][0]
    assert run.meta["split"] == "external-dev" and len(run.frames) > 0
    assert np.array_equal(run.arrays["tevid_steps"], run.frames.steps)
    assert set(run.epochs.columns) >= {"train_loss", "val_loss", "val_acc"}
    # resumable: recording again trains nothing and returns the same store
    store, errors = record_suite(SMOKE, workers=1, root=smoke.store.root.parent, progress=False)
    assert errors == {} and len(store) == len(SMOKE)


def test_truth_follows_what_happened(smoke: SimpleNamespace) -> None:
    by_kind = {t.kind: t for t in smoke.truths.values()}
    assert by_kind["lr_high"].positive and by_kind["lr_high"].label.label == "Instability"
    jump = by_kind["lr_jump"]
    assert jump.positive and jump.label.onset == 2 * smoke.runs["external-dev"][1].meta[
        "steps_per_epoch"]
    assert any(t.reference for t in smoke.truths.values() if t.kind == "healthy")


def test_steps_log_the_learning_rate_in_use(smoke: SimpleNamespace) -> None:
    """steps.csv (and so the telemetry TEViD reads) shows the injected jump: the lr of each step
    is the one the optimizer used, not the schedule's next, unscaled value."""
    jump = next(r for rs in smoke.runs.values() for r in rs
                if smoke.truths[r.run_id].kind == "lr_jump")
    st = jump.steps
    onset = smoke.truths[jump.run_id].label.onset
    before = float(st.loc[st["step"] == onset - 1, "lr"].iloc[0])
    after = float(st.loc[st["step"] == onset, "lr"].iloc[0])
    assert after / before > 5          # a x10-x30 jump, whatever the schedule did in one step


def test_external_test_never_reaches_fitting_or_selection(smoke: SimpleNamespace) -> None:
    assert smoke.seen, "nothing was admitted: the wiretap is not on the path"
    assert {split for _, split in smoke.seen} <= {"train", "val", "external-dev"}
    assert all(s <= {"external-dev"} for s in smoke.thresholds) and smoke.thresholds
    smoke.guard.check()
    # a test run slipped into the dev half is refused at the threshold choice
    leaky = dict(smoke.counted, **{"external-dev": smoke.counted["external-test"]})
    with pytest.raises(LeakageError, match="external-test"):
        ext_methods.score_methods(leaky, smoke.truths, None, LeakageGuard(
            smoke.runs["external-test"], factors=()), log=lambda *_: 0)


def test_tables_end_to_end(smoke: SimpleNamespace) -> None:
    names = set(smoke.methods)
    assert {"tevid", "tevid_far", "cusum", "stats_gbdt", "lightning_es", "optuna_nan",
            "sm_overfit"} <= names
    tables, summary = external_tables(smoke.methods, "external-test",
                                      smoke.counted["external-test"], smoke.truths,
                                      n_resamples=20)
    assert "TEViD shipped" in tables["headline"] and "lr_high: recall" in tables["scenario"]
    tevid = summary["tevid"]
    assert tevid["recall"][1] >= 1 and tevid["false_alarms"][1] >= 1
    # the non-finite loss of the lr-too-high run is caught by the NaN-aware rules
    assert summary["optuna_nan"]["recall"][0] == summary["optuna_nan"]["recall"][1]
    assert re.search(r"\d\.\d{3}", tables["headline"])


def test_scoring_a_checkpoint_keeps_its_own_summary(smoke: SimpleNamespace) -> None:
    """Scoring a given checkpoint writes ``summary-…-<hash>.json`` naming it, so scoring a
    second checkpoint does not overwrite the first one's per-run outcomes."""
    import json

    from experiments.external.pipeline import run_external
    from experiments.external.record import DEFAULT_CHECKPOINT

    root = smoke.store.root.parent
    run_external(smoke=True, half="dev", record=False, root=root, baselines=False,
                 n_resamples=20, checkpoint=str(DEFAULT_CHECKPOINT), log=lambda *_: 0)
    (written,) = root.glob("summary-smoke-dev-*.json")
    assert json.loads(written.read_text())["checkpoint"] == str(Path(DEFAULT_CHECKPOINT).resolve())
    assert not (root / "summary-smoke-dev.json").exists()


def test_baselines_can_learn_from_a_given_corpus(tmp_path: Path) -> None:
    """``--corpus DIR`` names the labelled corpus the trained baselines fit on (the tables then
    name it); an unlabelled one is refused with the command that labels it."""
    from experiments.external.corpus import factory_corpus

    corpus = tmp_path / "corpus-procedural-v10"
    corpus.mkdir()
    with pytest.raises(FileNotFoundError, match="python -m experiments.label"):
        factory_corpus(given=corpus)
    (corpus / "labels.csv").write_text("run_id,label\n")
    assert factory_corpus(given=corpus, build=False) == (corpus, "corpus-procedural-v10")


def test_evaluate_guard_is_the_one_extended() -> None:
    assert "external-test" in evaluate.leakage.REPORT_ONLY_SPLITS


def test_offline_scoring_reproduces_the_live_diagnoses(smoke: SimpleNamespace) -> None:
    """Scored offline from the recorded frames with the recording's own checkpoint, TEViD's raw
    window outputs, put through the same run memory the live Diagnostician applies, are the
    live (remembered) diagnoses, capture step by capture step."""
    from core_models.memory import RunMemory
    from data_factory.labels import HEALTHY
    from tevid_hpo import Diagnostician

    diag = Diagnostician.from_pretrained(device="cpu")
    cal = diag.calibration
    worst, worst_stream = 0.0, 0.0
    for run in smoke.runs["external-dev"] + smoke.runs["external-test"]:
        assert str(diag.source) == run.meta["checkpoint"]
        off = ext_methods.tevid_offline_scores(diag, run)
        assert np.array_equal(off.steps, run.arrays["tevid_steps"])
        mem = RunMemory(cal.memory, list(diag.known_labels).index(HEALTHY), cal.consecutive)
        rem = [mem.update(p, u) for p, u in zip(off.probs, off.extras["vacuity"])]
        probs = np.stack([p for p, _ in rem])
        vac = np.array([u for _, u in rem])
        worst = max(worst, float(np.abs(probs - run.arrays["tevid_probs"]).max()),
                    float(np.abs(vac - run.arrays["tevid_vacuity"]).max()))
        diag.reset()      # the same frames streamed through a fresh Diagnostician now
        live = [diag.update(f, step=f.step, epoch=f.epoch) for f in ext_methods.replay_frames(run)]
        sp = np.array([[d.probs[k] for k in diag.known_labels] for d in live])
        worst_stream = max(worst_stream, float(np.abs(probs - sp).max()),
                           float(np.abs(vac - np.array([d.vacuity for d in live])).max()))
    print(f"offline vs recorded live: {worst:.2e}; offline vs streaming now: {worst_stream:.2e}")
    assert worst_stream < 1e-5
    # the recorded live diagnoses were made inside the training process (float32 kernels on
    # another thread state); streaming the very same frames now differs from them as much
    assert worst < 1e-4
    # the replayed alert is the live one (runs whose loss stayed finite: the monitor's own
    # non-finite rule reports at its own step, replay_alert at the first non-finite step)
    for run in smoke.runs["external-dev"] + smoke.runs["external-test"]:
        if bool(run.steps["finite"].all()):
            assert ext_methods.replay_alert(diag, run) == ext_methods._live_alert(run)


def test_a_checkpoint_shipped_after_the_recording_is_replayed_not_taken_for_the_live_one(
        tmp_path: Path) -> None:
    """The recording's live alert stands for a checkpoint only if its files are the recorded
    ones: a new checkpoint at the same path (a re-ship) and an older recording without a digest
    are replayed instead."""
    from core_models.checkpoint import checkpoint_digest

    stem = tmp_path / "default"
    for suffix in (".safetensors", ".json"):
        stem.with_suffix(suffix).write_bytes(b"old " + suffix.encode())
    run = SimpleNamespace(meta={"checkpoint": str(stem), "checkpoint_digest": checkpoint_digest(stem)})
    diag = SimpleNamespace(source=stem)
    assert ext_methods._same_checkpoint(diag, run)
    stem.with_suffix(".safetensors").write_bytes(b"new weights")   # shipped after recording
    assert not ext_methods._same_checkpoint(diag, run)
    assert not ext_methods._same_checkpoint(diag, SimpleNamespace(meta={"checkpoint": str(stem)}))


def test_replay_gives_each_frame_the_scalars_the_monitor_saw(smoke: SimpleNamespace) -> None:
    """A telemetry checkpoint replayed on stored runs reads the loss, lr and gradient norm the
    live monitor passed with each frame (the store keeps them in steps.csv, not on frames); on a
    clipped run that is the clipped norm (the monitor steps after ``clip_grad_norm_``)."""
    import pandas as pd

    from core_models.telemetry import capture_scalars
    from experiments.external.record import as_monitored

    class Spy:
        first_alert = None

        def reset(self) -> None:
            self.seen: list[dict[str, float]] = []

        def update(self, frame: Any, step: int, epoch: int) -> None:
            self.seen.append(dict(frame.scalars))

    spy = Spy()
    for run in smoke.runs["external-dev"][:2]:
        ext_methods.replay_alert(spy, run)
        want = capture_scalars(as_monitored(run).steps, run.frames.steps)
        assert len(spy.seen) == len(run.frames.steps)
        assert pd.DataFrame(spy.seen).equals(pd.DataFrame(want))         # NaN == NaN here
        assert all({"loss", "lr", "grad_norm"} <= set(s) for s in want[1:])
        clip = run.meta["recipe"]["clip"]
        if clip:   # the smoke's clipped run: its logged norm exceeds the clip, the monitor's not
            assert run.steps["grad_norm"].max() > clip
            assert max(s["grad_norm"] for s in spy.seen) <= clip + 1e-6


def test_dev_streams_label_frames_and_refuse_external_test(smoke: SimpleNamespace) -> None:
    from experiments.external.transfer import dev_streams

    streams = dev_streams(store=smoke.store)
    assert streams and all(r.meta["split"] == "external-dev" for r, _, _ in streams)
    for run, labels, reference in streams:
        t = smoke.truths[run.run_id]
        assert len(labels) == len(run.frames) and reference == t.reference
        onset = t.label.onset
        assert set(labels[run.frames.steps < (onset if onset is not None else 10**9)]) <= {
            "Healthy"}
        if onset is not None:
            assert set(labels[run.frames.steps >= onset]) == {t.label.label}
    with pytest.raises(LeakageError):
        dev_streams(store=smoke.store, half="external-test")


def test_pool_is_recorded_apart_and_handed_out_only_when_asked(smoke: SimpleNamespace,
                                                              tmp_path: Path,
                                                              monkeypatch) -> None:
    """``--half train`` records the pool (here one short run) and scores nothing;
    ``dev_streams`` hands its runs out only with ``pool=True``, after the dev runs."""
    from experiments.external import pipeline as ext_pipeline
    from experiments.external.transfer import dev_streams

    short = POOL[36]   # a healthy resmlp on synth_tab, 8 epochs of batch 64: about a second
    assert (short.family, short.scenario.kind) == ("resmlp", "healthy")
    monkeypatch.setattr(ext_pipeline, "POOL", (short,))
    logged: list[str] = []
    summary = ext_pipeline.run_external(half="train", workers=1, root=tmp_path,
                                        log=logged.append)
    assert summary["runs"] == 1 and summary["failed"] == {}
    assert "external-train pool: 1/1 recorded" in logged[-1]
    assert not (tmp_path / "summary-train.json").exists()
    store = ext_pipeline.store_for(root=tmp_path)
    for rid in smoke.store.list():   # the dev / test recordings beside it
        if not (store.root / rid).exists():
            (store.root / rid).symlink_to(smoke.store.root / rid)
    plain = dev_streams(store=store)
    both = dev_streams(store=store, pool=True)
    assert all(r.meta["split"] == "external-dev" for r, _, _ in plain)
    assert truth_of(store.load(recording_id(short))).counted
    assert len(both) == len(plain) + 1 and both[-1][0].meta["split"] == "external-train"
    assert [r.run_id for r, _, _ in both[:len(plain)]] == [r.run_id for r, _, _ in plain]


def test_recordings_key_follows_the_code_that_makes_them(monkeypatch) -> None:
    """A change to the data sets, models, recipes or fault injection must record afresh: the
    v1 key hashed only the frame / capture code and the loop, so a changed data generator
    would have been scored from stale recordings."""
    from experiments.external import record

    hashed: list[str] = []
    real = record._file_hash

    def spy(*paths):
        hashed.extend(Path(p).name for p in paths)
        return real(*paths)

    monkeypatch.setattr(record, "_file_hash", spy)
    record.cache_key()
    assert {"frames.py", "capture.py", "record.py", "data.py", "models.py", "recipes.py",
            "scenarios.py"} <= set(hashed)
