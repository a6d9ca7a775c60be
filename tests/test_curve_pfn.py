"""The LC-PFN-style curve extrapolator (core_models/baselines/curve_pfn.py): it learns something
about its prior (its median final value beats the last observed value on fresh prior curves),
its probabilities are distributions, and the cache round-trips through safetensors + JSON."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core_models.baselines.curve_pfn import (
    PFNConfig,
    load_or_train,
    observed_last,
    prob_above,
    quantile,
    sample_curves,
    train,
)

SMALL = PFNConfig(d_model=24, n_layers=1, n_heads=2, n_bins=40, t_min=6, t_max=15, steps=400,
                  batch=32, lr=3e-3)


@pytest.fixture(scope="module")
def small_model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(SMALL, seed=0)
    finally:
        torch.set_num_threads(threads)


def test_median_beats_the_last_value_on_prior_curves(small_model):
    rng = np.random.default_rng(123)   # not the training stream (seed 0)
    curves = sample_curves(300, rng, SMALL)
    for share, margin in ((3, 0.95), (2, 1.0)):   # a third of the curve seen; half of it
        err_pfn, err_last = [], []
        for c in curves:
            m = len(c) // share
            probs = small_model.predict(c[:m], n_epochs=len(c))
            err_pfn.append(abs(quantile(probs, 0.5, observed_last(c[:m])) - c[-1]))
            err_last.append(abs(c[m - 1] - c[-1]))
        assert np.mean(err_pfn) < margin * np.mean(err_last), (share, np.mean(err_pfn),
                                                               np.mean(err_last))


def test_probabilities_are_a_distribution_and_monotone(small_model):
    p = small_model.predict([0.2, 0.4, 0.5], n_epochs=12)
    assert p.shape == (SMALL.n_bins,) and np.all(p >= 0) and p.sum() == pytest.approx(1.0)
    assert prob_above(p, -0.01, 0.5) == 1.0 and prob_above(p, 1.0, 0.5) == 0.0
    assert prob_above(p, 0.3, 0.5) >= prob_above(p, 0.6, 0.5)
    qs = [quantile(p, q, 0.5) for q in (0.1, 0.5, 0.9)]
    assert 0.0 <= qs[0] <= qs[1] <= qs[2] <= 1.0


def test_bad_prefix_is_refused(small_model):
    with pytest.raises(ValueError, match="need 1 <= len\\(prefix\\) <= n_epochs"):
        small_model.predict([0.5, 0.6], n_epochs=1)


def test_cache_round_trip(tmp_path):
    cfg = PFNConfig(d_model=8, n_layers=1, n_heads=2, n_bins=10, steps=3, batch=4, t_max=6)
    a = load_or_train(cfg, seed=1, directory=tmp_path)
    b = load_or_train(cfg, seed=1, directory=tmp_path)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert not list(tmp_path.glob("*.pkl")) and len(list(tmp_path.glob("*.safetensors"))) == 1
