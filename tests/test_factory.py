"""The data factory end to end: a tiny corpus, the factorial split, failures and resumption."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from data_factory.datasets import TensorData
from data_factory.interventions import (
    INTERVENTIONS,
    NOVEL_KINDS,
    Plan,
    fault_step,
    make_intervention,
)
from data_factory.runner import RunSpec, execute_run
from data_factory.split import (
    DEFAULT_SPLIT,
    Cell,
    SplitLeakError,
    SplitSpec,
    cell_sets,
    check_factorial,
)
from data_factory.store import RunStore
from experiments.factory import build_corpus, compatible, corpus_index, plan_corpus

TINY = dict(epochs=3, every=5, frame_size=16, lyapunov_every=20, lyapunov_horizon=4)


def test_default_split_is_factorially_disjoint():
    check_factorial(DEFAULT_SPLIT)
    specs = plan_corpus()
    seen = {(s.arch, s.dataset, s.optimizer) for s in specs if s.split != "test"}
    test = [s for s in specs if s.split == "test"]
    for axis, i in (("arch", 0), ("dataset", 1), ("optimizer", 2)):
        assert not {c[i] for c in seen} & {getattr(s, axis) for s in test}, axis
    assert {s.intervention for s in specs if s.split != "test"}.isdisjoint(NOVEL_KINDS)
    assert set(NOVEL_KINDS) <= {s.intervention for s in test}
    counts = {split: sum(s.split == split for s in specs) for split in ("train", "val", "test")}
    assert counts["train"] + counts["val"] >= 600 and counts["test"] >= 300, counts


def test_leaky_split_is_rejected():
    leaky = SplitSpec(train=(Cell("cnn", "digits", "sgd"),), val=(Cell("vit", "shapes", "adamw"),),
                      test=(Cell("mixer", "patterns", "adamw"),))
    with pytest.raises(SplitLeakError, match="optimizer"):
        check_factorial(leaky)
    novel_in_train = SplitSpec(train=(Cell("cnn", "digits", "sgd"),), val=(),
                               test=(Cell("mixer", "patterns", "lion"),),
                               mix={"train": {"loader_stall": 1}})
    with pytest.raises(SplitLeakError, match="novel"):
        check_factorial(novel_in_train)


@pytest.mark.parametrize("kind", list(INTERVENTIONS))
def test_interventions_record_their_draws(kind):
    iv = make_intervention(kind, np.random.default_rng(0), total_steps=400)
    record = iv.describe()
    assert record["kind"] == kind and 0.2 <= record["severity"] <= 1.0
    assert 100 <= record["start_step"] <= 220
    plan = iv.hparams(Plan(lr=1e-3))
    # lr changes act through lr_factor; only overfitting lowers the base lr (slower memorisation)
    assert plan.lr == (2.5e-4 if kind == "overfitting" else 1e-3)


def test_overfitting_subset_is_small_and_shrinks_with_severity():
    # 10-35 % of digits still generalised well enough that validation loss only plateaued
    # (resnet/vit/deit/convnext on digits labelled Healthy); the subset is 5-12 % of the data.
    fractions = []
    for severity in (0.0, 0.2, 0.6, 1.0):
        iv = make_intervention("overfitting", np.random.default_rng(0), 400, severity=severity)
        plan = iv.hparams(Plan(lr=1e-3))
        assert 0.05 - 1e-9 <= plan.train_fraction <= 0.12 + 1e-9
        assert iv.describe()["train_fraction"] == round(plan.train_fraction, 3)
        assert plan.weight_decay == 0.0 and not plan.augment and plan.schedule == "constant"
        fractions.append(plan.train_fraction)
    assert fractions == sorted(fractions, reverse=True)


def test_instability_lr_schedules():
    for variant in ("extreme", "cyclical", "jump"):
        iv = make_intervention("instability", np.random.default_rng(0), 400, severity=1.0, start_step=100)
        iv.variant = variant
        before, after = iv.lr_factor(50), max(iv.lr_factor(s) for s in range(100, 200))
        assert after >= iv.factor * (1 - 2 / iv.period) and iv.factor > 299  # triangle peak on the step grid
        assert before == (after if variant == "extreme" else 1.0)


def test_instability_multiplies_at_least_the_reference_lr():
    iv = make_intervention("instability", np.random.default_rng(1), 400, severity=0.0, start_step=100)
    iv.variant = "jump"
    assert iv.faulty_lr(50, 1e-4) == 1e-4  # before the fault: the run's own lr
    assert iv.faulty_lr(150, 1e-4) == pytest.approx(1e-4 * iv.factor)  # no reference: as before
    iv.reference_lr = 0.01
    assert iv.faulty_lr(50, 1e-4) == 1e-4
    assert iv.faulty_lr(150, 1e-4) == pytest.approx(0.01 * iv.factor)  # a low lr is lifted
    assert iv.faulty_lr(150, 0.1) == pytest.approx(0.1 * iv.factor)  # a high one is not lowered


def test_overfitting_drops_every_regulariser():
    plan = Plan(lr=0.1, weight_decay=1e-2, label_smoothing=0.1, augment=True)
    iv = make_intervention("overfitting", np.random.default_rng(0), 400, severity=0.5)
    out = iv.hparams(plan)
    assert (out.weight_decay, out.label_smoothing, out.augment) == (0.0, 0.0, False)
    assert make_intervention("healthy", np.random.default_rng(0), 400).hparams(plan) == plan


@pytest.mark.parametrize("kind, variant", [(k, None) for k in INTERVENTIONS if k != "instability"]
                         + [("instability", v) for v in ("extreme", "cyclical", "jump")])
def test_fault_step_is_where_the_intervention_first_changes_training(kind, variant):
    """Every hook is the identity before ``fault_step`` and something changes at it or one step
    later, so an alert before it cannot have seen the fault
    (experiments.evaluate.premature_detections)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = TensorData("toy", torch.randn(64, 4), torch.arange(64) % 4, torch.randn(16, 4),
                      torch.arange(16) % 4, torch.randn(16, 4), torch.arange(16) % 4, 4)
    iv = make_intervention(kind, np.random.default_rng(0), total_steps=400, start_step=150)
    if kind == "instability":
        iv.variant = iv.details["variant"] = variant
    first = fault_step(iv.describe())
    if kind == "healthy":
        assert first is None
        return
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.Adam(model.parameters())

    def changes_at(step: int) -> bool:
        """Whether any hook alters training at ``step`` (fresh copies of data and model)."""
        x, y = torch.randn(8, 4, generator=g), torch.arange(8) % 4
        bx, by = iv.batch(step, x.clone(), y.clone())
        state = [p.detach().clone() for p in model.parameters()]
        model(x).logsumexp(1).mean().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()  # creates optimizer state the novel families may corrupt
        moments = [v.clone() for st in opt.state.values() for v in st.values()]
        iv.after_backward(step, model, opt)
        touched = any(not torch.equal(p.grad, q) for p, q in zip(model.parameters(), grads))
        touched |= any(not torch.equal(v, m) for v, m in
                       zip((v for st in opt.state.values() for v in st.values()), moments))
        with torch.no_grad():
            for p, q in zip(model.parameters(), state):
                p.copy_(q)
        model.zero_grad()
        return (iv.lr_factor(step) != 1.0 or touched or not torch.equal(bx, x)
                or not torch.equal(by, y))

    before_start = (iv.hparams(Plan(lr=1e-3)) != Plan(lr=1e-3)
                    or iv.prepare(data, "tabular") is not data)
    if first == 0:
        assert before_start or changes_at(0)
    else:
        assert first == 150 and not before_start
        assert not any(changes_at(step) for step in (0, 75, 149))
        assert changes_at(150) or changes_at(151)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    torch.set_num_threads(1)  # tiny models: extra threads only contend (the factory does the same)
    root = tmp_path_factory.mktemp("corpus")
    cfg = {"root": str(root), "backend": "local", "repeats": {"train": 1, "test": 1},
           "splits": ["train", "test"], "seed": 0, "limit": None, "run": TINY,
           "write_results": False, "ray": {"address": None, "num_cpus": None, "temp_dir": "/tmp/ray_tevid"}}
    specs = [s for s in plan_corpus(repeats={"train": 1, "test": 1}, splits=["train", "test"], **TINY)]
    # a few runs per kind: the first cell of each kind in each split
    keep, seen = [], set()
    for s in specs:
        if (s.split, s.intervention) not in seen:
            seen.add((s.split, s.intervention))
            keep.append(s.run_id)
    store = RunStore(root)
    for s in specs:
        if s.run_id in keep:
            execute_run(s, store)
    index = corpus_index(store)
    return root, store, index, cfg


def test_tiny_corpus_runs_have_frames_scalars_and_metadata(tiny_corpus):
    root, store, index, _ = tiny_corpus
    assert set(index["intervention"]) == set(INTERVENTIONS)
    for run in store:
        m = run.meta
        assert m["complete"] and m["split"] in ("train", "test") and len(m["layers"]) == 3
        assert m["intervention"]["kind"] in INTERVENTIONS
        frames = run.frames
        assert frames.tensor.shape[1:] == (6, 16, 16) and len(frames) == m["n_frames"] > 0
        assert torch.isfinite(frames.tensor.float()).all()
        assert {"step", "epoch", "loss", "lr", "grad_norm", "lyapunov"} <= set(run.steps.columns)
        assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc"} <= set(run.epochs.columns)
        assert m["privileged_columns"] == ["lyapunov"] and m["seconds"] > 0
        if m["intervention"]["kind"] == "forgetting":
            assert "primary_acc" in run.epochs and m["task_switch_epoch"] is not None
            assert {"forget_correct_before", "forget_correct_after"} <= set(run.arrays)
        if m["modality"] != "text":
            assert {"bias_correct", "bias_shortcut", "bias_class"} <= set(run.arrays)
            if m["intervention"]["kind"] == "concept_bias":
                assert {"clean_acc", "poisoned_acc"} <= set(run.epochs.columns)
        else:
            assert "val_ppl" in run.epochs


def test_tiny_corpus_split_is_disjoint_by_code(tiny_corpus):
    _, _, index, _ = tiny_corpus
    train, test = index[index.split != "test"], index[index.split == "test"]
    for axis in ("arch", "dataset", "optimizer"):
        assert set(train[axis]).isdisjoint(test[axis]), axis
    assert not train["novel"].any() and test["novel"].any()


def test_adding_a_cell_set_adds_runs_and_relabels_none(tiny_corpus, tmp_path):
    """Extending a corpus by the diversity cells keeps every planned seed and every label."""
    from experiments.label import label_corpus

    src, _, _, _ = tiny_corpus
    root = tmp_path / "corpus"
    shutil.copytree(src, root)
    before, old_cfg = label_corpus(root, workers=1, variants=False)
    wide = plan_corpus(cell_sets(["default", "diversity"]), repeats={"train": 1, "test": 1},
                       splits=["train", "test"], **TINY)
    seeds = {s.run_id: s.seed for s in wide}
    old = plan_corpus(repeats={"train": 1, "test": 1}, splits=["train", "test"], **TINY)
    assert all(seeds[s.run_id] == s.seed for s in old) and len(wide) > len(old)
    # healthy runs of a new pair (tcn_lm/markov) and of a pair the corpus has (cnn/digits)
    added = [next(s for s in wide if (s.arch, s.dataset, s.optimizer, s.intervention) == cell)
             for cell in [("tcn_lm", "markov", "adamw", "healthy"),
                          ("cnn", "digits", "rmsprop", "healthy")]]
    assert "cnn/digits" in old_cfg.floors
    store = RunStore(root)
    for spec in added:
        assert execute_run(spec, store)["status"] == "ok"
    after, cfg = label_corpus(root, workers=1, variants=False, cells=["default", "diversity"])
    merged = before.merge(after, on="run_id", suffixes=("_before", "_after"))
    assert len(merged) == len(before) and len(after) == len(before) + 2
    assert (merged.label_before == merged.label_after).all()
    # the first set keeps choosing its own floors and the margin; the new pair gets a floor
    assert {k: cfg.floors[k] for k in old_cfg.floors} == dict(old_cfg.floors)
    assert cfg.lyap_margin == old_cfg.lyap_margin and "tcn_lm/markov" in cfg.floors
    # ... even when the extended corpus is labelled with the default cells
    again, cfg_default = label_corpus(root, workers=1, variants=False)
    assert again.set_index("run_id").label.equals(after.set_index("run_id").label)
    assert cfg_default.floors == cfg.floors and cfg_default.lyap_margin == cfg.lyap_margin


def test_build_resumes_and_records_failures(tiny_corpus, tmp_path):
    root, store, index, cfg = tiny_corpus
    build_corpus(cfg | {"limit": 3})  # runs whichever of the first 3 planned runs are missing
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir() if p.is_dir()}
    out = build_corpus(cfg | {"limit": 3})  # everything done: nothing reruns, index rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir() if p.is_dir()} == before
    assert len(out) == 3 and (root / "index.csv").exists()
    bad = RunSpec("bad", "train", "transformer_lm", "digits", "sgd", "healthy", **TINY)
    row = execute_run(bad, RunStore(tmp_path))
    assert row["status"] == "failed" and "cannot train" in row["error"]
    assert RunStore(tmp_path).list() == []


def test_compatibility_rules():
    assert compatible("mlp", "tabular", "concept_bias")
    assert not compatible("transformer_lm", "text", "concept_bias")
    assert not compatible("cnn", "text", "healthy")


def test_ray_backend_builds_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    import ray

    cfg = {"root": str(tmp_path / "c"), "backend": "ray", "repeats": {"train": 1}, "splits": ["train"],
           "seed": 0, "limit": 2, "run": TINY | {"epochs": 1}, "write_results": False,
           "ray": {"address": None, "num_cpus": 2, "temp_dir": "/tmp/ray_tevid"}}
    try:
        index = build_corpus(cfg)
    finally:
        ray.shutdown()
    assert len(index) == 2 and (tmp_path / "c" / "index.csv").exists()
