"""Validated draws (data_factory.validated): a procedural network and recipe that do not learn in
the probe are replaced; one that learns is the plain draw; the run records which draw it used."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from data_factory.datasets import TensorData, load_dataset
from data_factory.procedural import build_procedural
from data_factory.recipes import RECURRENT, sample_recipe
from data_factory.validated import attempt_seed, draw_validated, prior_entropy, probe_draw

LOSS = torch.nn.functional.cross_entropy


@pytest.fixture(scope="module")
def tabular() -> TensorData:
    return load_dataset("tabular", seed=0)


def test_prior_entropy_is_the_constant_predictors_loss() -> None:
    y = torch.tensor([0, 0, 0, 1])
    best_constant = LOSS(torch.log(torch.tensor([[0.75, 0.25]])).expand(4, 2), y).item()
    assert prior_entropy(y, 2) == pytest.approx(best_constant, rel=1e-6)


def test_a_draw_that_learns_is_the_plain_draw(tabular: TensorData) -> None:
    d = draw_validated("mlp", "adam", tabular, seed=11, loss_fn=LOSS, steps=40, ratio=10.0)
    model, desc = build_procedural("mlp", tuple(tabular.x_train.shape[1:]), tabular.num_classes, 11)
    assert d.attempt == 0 and d.accepted and len(d.probes) == 1
    assert d.recipe == sample_recipe("adam", 11, arch="mlp") and d.arch_desc == desc
    # the run starts from untrained weights: the probe trained a copy
    assert all(torch.equal(p, q) for p, q in zip(d.model.parameters(), model.parameters()))


def test_a_draw_that_does_not_learn_is_replaced(tabular: TensorData, monkeypatch) -> None:
    from data_factory import validated

    def frozen_first(family: str, seed: int, arch: str | None = None):
        recipe = sample_recipe(family, seed, arch=arch)
        return dataclasses.replace(recipe, lr=0.0) if seed == 5 else recipe

    monkeypatch.setattr(validated, "sample_recipe", frozen_first)
    d = draw_validated("mlp", "adam", tabular, seed=5, loss_fn=LOSS, steps=40, ratio=0.95)
    assert d.probes[0]["ratio"] > 0.95  # lr 0: the loss stays where the prior is (or above)
    assert d.accepted and d.attempt >= 1 and d.probes[d.attempt]["ratio"] <= 0.95
    assert d.recipe == sample_recipe("adam", attempt_seed(5, d.attempt), arch="mlp")
    again = draw_validated("mlp", "adam", tabular, seed=5, loss_fn=LOSS, steps=40, ratio=0.95)
    assert again.attempt == d.attempt and again.probes == d.probes  # deterministic


def test_when_no_draw_learns_the_best_is_kept_and_marked(tabular: TensorData) -> None:
    d = draw_validated("mlp", "sgd", tabular, seed=2, loss_fn=LOSS, tries=3, steps=20, ratio=0.0)
    assert not d.accepted and len(d.probes) == 3
    assert d.probes[d.attempt]["ratio"] == min(p["ratio"] for p in d.probes)
    with pytest.raises(ValueError, match="tries"):
        draw_validated("mlp", "sgd", tabular, seed=2, loss_fn=LOSS, tries=0)


def test_a_diverging_probe_never_passes() -> None:
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    data = TensorData("toy", x, y, x, y, x, y, num_classes=2)
    recipe = dataclasses.replace(sample_recipe("sgd", 0), lr=1e30, clip_norm=0.0)
    assert probe_draw(torch.nn.Linear(4, 2), recipe, data, 0, LOSS, steps=20)["ratio"] == float("inf")


def test_recurrent_families_draw_larger_steps() -> None:
    for family in ("adam", "sgd", "rmsprop"):
        for arch in RECURRENT:
            lrs = [sample_recipe(family, s, arch=arch).lr for s in range(20)]
            plain = [sample_recipe(family, s).lr for s in range(20)]
            assert sorted(lrs)[10] > sorted(plain)[10]
    assert all(sample_recipe("sgd", s, arch="gru").clip_norm > 0 for s in range(20))
    # feed-forward draws are exactly the draws without an arch (the old corpus's recipes)
    assert all(sample_recipe("adam", s, arch="conv") == sample_recipe("adam", s) for s in range(20))


def test_a_procedural_run_records_its_draw(tmp_path) -> None:
    from data_factory.runner import RunSpec, execute_run
    from data_factory.store import RunStore

    store = RunStore(tmp_path)
    spec = RunSpec("p", "train", "procedural:mlp", "tabular", "procedural:adam", "healthy",
                   seed=1, epochs=1, lyapunov_every=0)
    assert execute_run(spec, store)["status"] == "ok"
    meta = store.load("p").meta
    draw = meta["draw"]
    assert len(draw["probes"]) == draw["attempt"] + 1
    used = meta["procedural_arch"]["seed"]  # the accepted draw's seed names both halves
    assert dataclasses.asdict(sample_recipe("adam", used, arch="mlp")) == \
        {**meta["recipe"], "kwargs": {**meta["recipe"]["kwargs"],
                                      "betas": tuple(meta["recipe"]["kwargs"]["betas"])}}
