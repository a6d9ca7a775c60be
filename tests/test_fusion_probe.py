"""The late-fusion probe's arithmetic (experiments.fusion_probe): alpha recovery and each rule."""

from __future__ import annotations

import numpy as np
import pytest

from core_models.metrics import RunPrediction
from experiments.fusion_probe import dirichlet_alpha, fuse


def _run(run_id: str, probs, vacuity) -> RunPrediction:
    return RunPrediction(run_id, "Healthy", range(len(vacuity)), range(len(vacuity)),
                         np.asarray(probs, float), vacuity)


def test_alpha_is_recovered_from_probabilities_and_vacuity():
    alpha = np.array([[3.0, 1.0, 1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    s = alpha.sum(1)
    run = _run("r", alpha / s[:, None], 5 / s)
    assert np.allclose(dirichlet_alpha(run), alpha)


def test_each_fusion_rule_and_run_matching():
    # vacuity 0.5 with K = 5: S = 10, alpha = 10 p
    frames = [_run("b", [[0.1, 0.6, 0.1, 0.1, 0.1]], [0.5]),
              _run("a", [[0.6, 0.1, 0.1, 0.1, 0.1]], [0.5])]          # alpha [6, 1, 1, 1, 1]
    scalars = [_run("a", [[0.2, 0.5, 0.1, 0.1, 0.1]], [0.5])]         # alpha [2, 5, 1, 1, 1]
    ev = fuse(frames, scalars, "evidence", 0.5)[0]                   # [2, 5, 1, 1, 1] + 0.5 [5, 0..]
    alpha = np.array([4.5, 5.0, 1.0, 1.0, 1.0])
    assert np.allclose(ev.probs, alpha / alpha.sum()) and np.isclose(ev.vacuity[0], 5 / 12.5)
    pr = fuse(frames, scalars, "probs", 1.0)[0]                      # matched run "a", not "b"
    assert np.allclose(pr.probs, [[0.4, 0.3, 0.1, 0.1, 0.1]]) and pr.vacuity[0] == 0.5
    lp = fuse(frames, scalars, "logpool", 0.0)[0]                    # weight 0: the scalars alone
    assert np.allclose(lp.probs, scalars[0].probs)
    with pytest.raises(ValueError, match="rule"):
        fuse(frames, scalars, "max", 1.0)   # type: ignore[arg-type]
