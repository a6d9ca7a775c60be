"""DP capture in the factory's runner, and the privacy–utility experiment on a tiny corpus.

The runner's ``privacy=`` path must leave training exactly as it was (the labels of a corpus run
then hold for its DP re-run); ``experiments.privacy_factory`` re-runs a split under DP, resumes,
and scores plain and DP frames of the same runs.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from core_models.tevid import TEViD
from data_factory.privacy import DPTelemetry
from data_factory.runner import RunSpec, execute_run
from data_factory.store import RunStore
from experiments import privacy_factory
from experiments.privacy_factory import DPSettings, setting_dir, spec_from_meta
from tevid_hpo.diagnostician import Diagnostician

TINY = {"epochs": 2, "every": 5, "frame_size": 16, "lyapunov_every": 0}


def test_dp_capture_leaves_training_unchanged_and_accounts_epsilon(tmp_path):
    spec = RunSpec("test-mlp-digits-adamw-instability", "test", "mlp", "digits", "adamw",
                   "instability", **TINY)
    plain, private = RunStore(tmp_path / "plain"), RunStore(tmp_path / "dp")
    made: list[DPTelemetry] = []

    def factory(n: int) -> DPTelemetry:
        made.append(DPTelemetry(1.0, 8.0, 1e-5, dataset_size=n, seed=0))
        return made[-1]

    assert execute_run(spec, plain)["status"] == "ok"
    row = execute_run(spec, private, privacy=factory)
    assert row["status"] == "ok"
    a, b = plain.load(spec.run_id), private.load(spec.run_id)
    # The same training: every logged scalar is identical, only the frames are noised maps.
    pd.testing.assert_frame_equal(a.steps, b.steps)
    pd.testing.assert_frame_equal(a.epochs, b.epochs)
    np.testing.assert_array_equal(a.frames.steps, b.frames.steps)
    assert not torch.equal(a.frames.tensor, b.frames.tensor)
    assert a.frames.stats.shape[1] > 0 and b.frames.stats.shape[1] == 0   # no raw stats in DP
    # The plain run's meta is what it always was; the DP run's adds only the privacy report.
    assert "privacy" not in a.meta
    assert set(b.meta) - set(a.meta) == {"privacy"}
    assert spec_from_meta(a.meta) == spec
    p, dp = b.meta["privacy"], made[0]
    assert dp.dataset_size == b.meta["n_train"]
    assert p == dp.report().to_dict()
    assert (p["noise_multiplier"], p["clip"], p["delta"]) == (1.0, 8.0, 1e-5)
    assert p["compositions"] == b.meta["n_frames"] == len(b.frames)
    assert p["sample_rate"] == pytest.approx(b.meta["plan"]["batch_size"] / b.meta["n_train"])
    eps = [dp.epsilon_at(int(s)) for s in b.frames.steps]
    assert eps[0] > 0 and all(x < y for x, y in itertools.pairwise(eps))
    assert eps[-1] == pytest.approx(p["epsilon"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    """A healthy train run (the clip's pilot) and three test runs: two labelled mlp runs and a
    ResNet, whose BatchNorm rules out DP capture. Labels are written by hand (the experiment
    carries them over; it does not judge them). Returns the corpus root and an untrained ``tiny``
    checkpoint: plumbing, not a diagnosis."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("privacy-factory") / "corpus"
    store = RunStore(root)
    cells = [("train", "mlp", "healthy"), ("test", "mlp", "healthy"),
             ("test", "mlp", "instability"), ("test", "resnet", "healthy")]
    labels = []
    for split, arch, kind in cells:
        run_id = f"{split}-{arch}-digits-adamw-{kind}"
        spec = RunSpec(run_id, split, arch, "digits", "adamw", kind,
                       **{**TINY, "epochs": 1 if arch == "resnet" else 2})
        assert execute_run(spec, store)["status"] == "ok"
        onset = 30 if kind == "instability" else None
        labels.append({"run_id": run_id, "label": "Instability" if onset else "Healthy",
                       "onset": onset, "fire_time": onset, "onset_epoch": None,
                       "fire_epoch": None})
    pd.DataFrame(labels).to_csv(root / "labels.csv", index=False)
    torch.manual_seed(0)
    ckpt = root.parent / "checkpoint" / "default"
    Diagnostician(TEViD("tiny"), device="cpu").save_pretrained(ckpt)
    return root, ckpt


def _main(corpus, out, *extra: str) -> dict:
    root, ckpt = corpus
    return privacy_factory.main(["--root", str(root), "--checkpoint", str(ckpt), "--z", "0.5",
                                 "4", "--out", str(out), "--resamples", "30", *extra])


def test_experiment_end_to_end_resumes_and_scores_the_same_runs(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    summary = _main(corpus, out)
    assert summary["runs_in_split"] == 3 and summary["runs_scored"] == 2
    assert summary["runs_anomalous"] == 1
    assert "BatchNorm" in summary["excluded"]["0.5"]["test-resnet-digits-adamw-healthy"]
    assert (out / "pilot" / "train-mlp-digits-adamw-healthy").is_dir()   # the clip's pilot
    assert summary["settings"]["clip"] > 0 and "pilot" in summary["settings"]["clip_source"]
    plain, low, high = summary["rows"]
    assert (plain["z"], low["z"], high["z"]) == (None, 0.5, 4.0)
    assert plain["epsilon_median"] == np.inf
    # more noise, less ε; the median is over runs, the max is the worst run
    assert 0 < high["epsilon_median"] < low["epsilon_median"] <= low["epsilon_max"]
    assert all(0.0 <= r["auprc"]["estimate"] <= 1.0 for r in summary["rows"])
    assert all(r["runs"] == 2 for r in summary["rows"])
    assert "auprc_minus_plain" not in plain   # the paired difference is the DP rows' own
    for r in (low, high):
        d = r["auprc_minus_plain"]["estimate"]
        assert d == pytest.approx(r["auprc"]["estimate"] - plain["auprc"]["estimate"],
                                  nan_ok=True)
    written = json.loads((out / "summary.json").read_text())
    assert written["rows"][0]["epsilon_median"] is None   # ε = ∞ in JSON
    assert written["rows"][1]["auprc"] == pytest.approx(low["auprc"], nan_ok=True)
    assert "| DP z=0.5 " in capsys.readouterr().out
    for z in (0.5, 4.0):   # every DP run carries its report, with its own noise seed
        run = RunStore(setting_dir(out, z)).load("test-mlp-digits-adamw-healthy")
        assert run.meta["privacy"]["noise_multiplier"] == z

    again = _main(corpus, out)   # resumed: nothing is trained twice, the numbers stand
    assert again["train_seconds_this_call"] == 0
    assert again["epsilon_per_run"] == summary["epsilon_per_run"]
    assert [r["auprc"] for r in again["rows"]] == [r["auprc"] for r in summary["rows"]]
    with pytest.raises(SystemExit, match="other settings"):
        _main(corpus, out, "--clip", "123")


def test_limit_and_explicit_clip(corpus, tmp_path):
    results = tmp_path / "docs" / "results.md"
    summary = _main(corpus, tmp_path / "out", "--clip", "6", "--limit", "2",
                    "--results", str(results))
    assert summary["runs_asked"] == 2 and summary["settings"]["clip"] == 6.0
    assert summary["settings"]["clip_source"] == "--clip"
    text = results.read_text()   # the table, the figure and the command that made them
    assert "<!-- BEGIN privacy-factory -->" in text and "| DP z=4 " in text
    assert "--clip 6" in text and (tmp_path / "docs" / "figures" / "privacy_factory.png").is_file()
    assert not (tmp_path / "out" / "pilot").exists()
    assert DPSettings(1.0, 6.0)(100).clip == 6.0
