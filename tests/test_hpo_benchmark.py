"""The Appendix M HPO benchmark (experiments/hpo_benchmark/): the quick path end to end (real
Optuna studies and real Ray Tune runs), a live study against its replay, and the pieces whose
mistakes would silently change the table: epoch and wall-time accounting, TEViD / Curve-TCN stops
in the replay, false stops, Curve-TCN causality, the quick profile and the CLI.

Ray runs locally with its files under /tmp/ray_hpo_bench_test (not /tmp/ray_tevid, which the
factory uses, nor the default of the benchmark itself) and Tune's under ``tmp_path``;
``RAY_AUTH_MODE=disabled`` keeps ``~/.ray/auth_token`` from being written. The module starts one
Ray instance and shuts it down at the end (but never one it did not start).
"""

from __future__ import annotations

import os

os.environ["RAY_AUTH_MODE"] = "disabled"   # before Ray is imported or started

import hashlib
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from conftest import local_ray_session
from omegaconf import OmegaConf
from optuna.pruners import BasePruner

from data_factory.frames import Frame
from data_factory.labels import INSTABILITY
from experiments import hpo_benchmark as hb
from experiments.hpo_benchmark import driver, record
from experiments.hpo_benchmark.frames import read_frames
from experiments.hpo_benchmark.problem import _one_thread, _quiet_optuna, _sampler
from experiments.report import RESULTS
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.monitor import USER_ATTR

pytestmark = pytest.mark.timeout(600)   # the toy checkpoint alone takes > 300 s on a loaded 2-core machine

RAY_TEMP_DIR = "/tmp/ray_hpo_bench_test"
SIGNALS = ["TEViD", "Cheap rule", "LC-PFN"]
OPTUNA_NAMES = ["No pruning", *(f"{b}{s}" for b in ("Median", "Successive halving", "Hyperband")
                                for s in ["", *(f" + {x}" for x in SIGNALS)]),
                "Hyperband + Curve-TCN"]
RAY_NAMES = ["Ray HyperBand", "Ray HyperBand + TEViD", "Ray ASHA", "Ray ASHA + TEViD"]


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.fixture(scope="module")
def local_ray():
    """Ray on 2 CPUs in a short temporary path; shut down only if we started it."""
    with local_ray_session(RAY_TEMP_DIR):
        yield


@pytest.fixture(scope="session")
def toy_checkpoint_one_thread(request):
    """The shared toy diagnostician, trained (if this module is first to need it) with one
    torch thread: with both cores busy, spinning OpenMP threads make it take minutes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return request.getfixturevalue("toy_checkpoint")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick(tmp_path_factory, toy_checkpoint_one_thread, local_ray):
    """``--quick`` end to end, once, with the toy diagnostician (no test may assume the shipped
    one) and ``write_results=true`` (which quick mode must ignore)."""
    tmp = tmp_path_factory.mktemp("hpo-bench")
    docs = {p: _digest(p) for p in (RESULTS, RESULTS.parent / "figures" / hb.FIGURE)}
    cfg = hb.load_config([f"recordings={tmp / 'rec'}", f"diagnostician={toy_checkpoint_one_thread}",
                          f"ray.temp_dir={RAY_TEMP_DIR}", "progress=false",
                          "write_results=true"], quick=True)
    summary = hb.run_benchmark(cfg)
    return cfg, summary, docs, tmp


def test_quick_runs_every_strategy_and_never_touches_docs(quick):
    cfg, summary, docs, tmp = quick
    strategies = summary["strategies"]
    assert list(strategies) == OPTUNA_NAMES + RAY_NAMES
    n_seeds, n_trials, max_epochs = len(cfg.seeds), cfg.n_trials, cfg.problem.max_epochs
    for name, s in strategies.items():
        seeds = cfg.ray.seeds if name.startswith("Ray") else cfg.seeds
        assert s["n_trials"] == len(seeds) * n_trials
        assert 1 <= s["epochs_per_trial"]["estimate"] <= max_epochs
        assert s["epochs_total"] == pytest.approx(s["epochs_per_trial"]["estimate"] * s["n_trials"])
        assert 0.0 <= s["best_val_acc"]["estimate"] <= 1.0
        assert sum(s["stopped_by"].values()) <= s["n_trials"]
    nop = strategies["No pruning"]
    assert nop["epochs_per_trial"]["estimate"] == max_epochs and not nop["stopped_by"]
    assert strategies["Hyperband + TEViD"]["epochs_saved_vs_reference"]["estimate"] is not None
    out = Path(summary["out"])
    assert out.is_relative_to(tmp)
    for name in ("summary.json", "table.md", "outcomes.csv", hb.FIGURE, "hpo_pareto.png"):
        assert (out / name).is_file(), name
    table = (out / "table.md").read_text()
    assert "| Hyperband + TEViD |" in table
    for base in ("Median", "Successive halving", "Hyperband"):   # issue 25's per-base targets
        assert f"* **{base} + TEViD vs {base}:**" in table
    assert json.loads((out / "summary.json").read_text())["verdicts"]
    # Quick mode never writes docs/results.md or docs/figures, even with write_results=true.
    assert {p: _digest(p) for p in docs} == docs
    recs = sorted((tmp / "rec").glob("*/seed*/trial*.json"))
    assert len(recs) == n_seeds * n_trials


def _recordings(cfg) -> dict[int, list[hb.TrialRecording]]:
    problem = hb.Problem.from_cfg(cfg.problem)
    diag = Diagnostician.from_pretrained(str(cfg.diagnostician), device="cpu")
    root = hb.recordings_dir(cfg, problem, hb.diagnostician_key(diag))
    return {seed: [hb.TrialRecording.from_json(p.read_text())
                   for p in sorted((root / f"seed{seed}").glob("trial*.json"))]
            for seed in cfg.seeds}


def test_a_second_run_replays_the_stored_recordings(quick, monkeypatch):
    cfg, summary, _, _ = quick
    # Resumable: nothing is trained again (training would fail here).
    monkeypatch.setattr(record, "train_trial", lambda *a, **k: pytest.fail("re-recorded a trial"))
    again = hb.run_benchmark(hb.load_config(
        [f"recordings={cfg.recordings}", f"diagnostician={cfg.diagnostician}",
         "ray.enabled=false", "progress=false"], quick=True))
    for name in OPTUNA_NAMES:   # the same strategies on the same recordings: the same numbers
        assert again["strategies"][name]["epochs_total"] == \
            summary["strategies"][name]["epochs_total"]
        assert again["strategies"][name]["best_val_acc"] == summary["strategies"][name][
            "best_val_acc"]


def test_the_replay_of_a_recording_equals_the_live_study(quick):
    """Live studies — training with the monitor writing to the real trials — take exactly the
    decisions their replays take, epoch by epoch, with the same TEViD attribute."""
    cfg, _, _, _ = quick
    problem = hb.Problem.from_cfg(cfg.problem)
    diag = Diagnostician.from_pretrained(str(cfg.diagnostician), device="cpu")
    data = problem.load_data()
    strategies = {s.name: s for s in hb.optuna_strategies(cfg, None)}
    pruned = 0
    for name in ("Hyperband + TEViD", "Successive halving"):
        for seed, recs in _recordings(cfg).items():
            live = _live_study(strategies[name], seed, recs, problem, data, diag)
            outcomes, events = hb.replay_optuna(strategies[name], seed, recs, cfg)
            for t, o, r in zip(live.trials, outcomes, recs):
                assert len(t.intermediate_values) == o.epochs
                assert list(t.intermediate_values.values()) == \
                    [e.val_acc for e in r.epochs[:o.epochs]]
                assert (t.state == optuna.trial.TrialState.PRUNED) == o.stopped
                # What the live monitor left on the trial is what the recording replays.
                assert t.user_attrs[USER_ATTR] == r.epochs[o.epochs - 1].tevid
                pruned += o.stopped
            assert len(events) == sum(o.epochs for o in outcomes)
    assert pruned > 0     # the comparison covered stopped trials, not only full ones


def _live_study(strategy: hb.Strategy, seed: int, recs: list[hb.TrialRecording],
                problem: hb.Problem, data: Any, diag: Diagnostician) -> optuna.Study:
    def objective(trial: optuna.Trial) -> float:
        params = hb.suggest(trial, problem)
        config = hb.TrialConfig(seed, trial.number, params["lr"], params["weight_decay"],
                                params["train_size"])

        def on_epoch(ep: hb.EpochRecord) -> None:
            trial.report(ep.val_acc, ep.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        rec = hb.train_trial(problem, config, data, diag, trial=trial, on_epoch=on_epoch)
        return max(e.val_acc for e in rec.epochs)

    with _one_thread(), _quiet_optuna():   # one thread, as recorded: the same floats
        live = optuna.create_study(study_name=f"hpo-benchmark-seed{seed}",
                                   direction="maximize", sampler=_sampler(seed),
                                   pruner=strategy.make())
        for r in recs:
            live.enqueue_trial(r.config.params)
        live.optimize(objective, n_trials=len(recs))
    return live


# ------------------------------------------------------------------------- constructed cases
def _rec(number: int, accs: list[float], seed: int = 0, seconds: float = 0.5,
         monitor_seconds: float = 0.1, tevid: dict[int, dict[str, Any]] | None = None,
         ray_alert_at: int | None = None) -> hb.TrialRecording:
    """A recording without training: the given validation accuracies, fixed epoch times, and
    optionally TEViD attributes per epoch / a Ray alert from an epoch on."""
    epochs = []
    for e, acc in enumerate(accs):
        ray_m: dict[str, Any] = {"tevid_alert": "", "tevid_alerts": "{}"}
        if ray_alert_at is not None and e >= ray_alert_at:
            alert = {"label": INSTABILITY, "step": 10 * ray_alert_at, "epoch": ray_alert_at,
                     "confidence": 0.99, "vacuity": 0.1, "reason": "diagnosis"}
            ray_m = {"tevid_alert": INSTABILITY, "tevid_alerts": json.dumps({INSTABILITY: alert})}
        epochs.append(hb.EpochRecord(e, 1.0, acc, 1.0, acc - 0.05, 1.0, seconds, monitor_seconds,
                                     (tevid or {}).get(e, {"version": 1, "alerts": {}}), None,
                                     ray_m))
    n = len(accs) * 10
    steps = {"step": list(range(n)), "epoch": [s // 10 for s in range(n)],
             "loss": [1.0] * n, "lr": [0.1] * n, "grad_norm": [1.0] * n}
    return hb.TrialRecording(hb.TrialConfig(seed, number, 0.1, 1e-4, 150), "p", "d", 10, 10,
                             epochs, steps)


class StopOddTrialsAt(BasePruner):
    """Prunes odd-numbered trials once they report ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1 and (trial.last_step or 0) >= self.step


def _cfg(max_epochs: int):
    return hb.load_config([f"problem.max_epochs={max_epochs}", "progress=false"])


def test_epochs_and_wall_time_are_the_epochs_actually_trained():
    recs = [_rec(k, [0.2, 0.4, 0.6, 0.7, 0.8]) for k in range(4)]
    cfg = _cfg(5)
    for monitored in (False, True):
        s = hb.Strategy(f"stop odd at 1 ({monitored})", "optuna", lambda: StopOddTrialsAt(1),
                        monitored=monitored)
        outcomes, events = hb.replay_optuna(s, 0, recs, cfg)
        assert [o.epochs for o in outcomes] == [5, 2, 5, 2]
        assert [o.stopped for o in outcomes] == [False, True, False, True]
        per_epoch = 0.5 if monitored else 0.4      # the monitor's time only where it runs
        assert [o.wall_s for o in outcomes] == pytest.approx([5 * per_epoch, 2 * per_epoch] * 2)
        assert [o.stopped_by for o in outcomes] == [None, "StopOddTrialsAt", None,
                                                    "StopOddTrialsAt"]
        # A stopped trial's accuracy is its best over the epochs it trained.
        assert [o.value for o in outcomes] == [0.8, 0.4, 0.8, 0.4]
        assert [o.full_value for o in outcomes] == [0.8] * 4
        assert len(events) == 14 and [e.number for e in events[:6]] == [0] * 5 + [1]
    summary = hb.summarize(outcomes, [s], n_resamples=100)[s.name]
    assert summary["epochs_total"] == 14 and summary["epochs_per_trial"].estimate == 3.5
    assert summary["stopped_by"] == {"StopOddTrialsAt": 2}
    # Trials 1 and 3 would have reached 0.8, the seed's best: both stops are false stops.
    assert summary["false_stops"] == {"StopOddTrialsAt": 2}
    assert summary["best_val_acc"].estimate == 0.8


def test_the_val_loss_metric_replays_trials_whose_loss_is_nan():
    recs = [_rec(0, [0.1] * 5), _rec(1, [0.2, 0.4, 0.6, 0.7, 0.8])]
    for e in recs[0].epochs:
        e.val_loss = None                       # diverged: NaN validation loss throughout
    cfg = hb.load_config(["problem.max_epochs=5", "metric=val_loss"])
    results = {s.name: hb.replay_optuna(s, 0, recs, cfg, signals={})[0]
               for s in hb.optuna_strategies(cfg, None)}
    assert all(len(o) == 2 for o in results.values())   # no trial fails on a NaN objective
    # Successive halving prunes a NaN at its first rung (Optuna reports steps from 0).
    assert results["Successive halving"][0].epochs == 2
    assert results["No pruning"][0].epochs == 5


def test_false_stops_count_stopped_would_be_best_trials_per_seed():
    def o(seed, n, epochs, full, by=None):
        return hb.TrialOutcome("s", seed, n, epochs, 9, by, "", 0.5, 0.5, full, 1.0)

    outcomes = [o(0, 0, 9, 0.90), o(0, 1, 3, 0.90, "TEViD"), o(0, 2, 1, 0.85, "Hyperband"),
                o(1, 0, 1, 0.70, "Hyperband"), o(1, 1, 9, 0.60), o(1, 2, 9, 0.69)]
    # Seed 0: trial 1 ties for the best and was stopped; seed 1: its best (trial 0) was stopped.
    assert [(f.seed, f.number) for f in hb.false_stops(outcomes)] == [(0, 1), (1, 0)]
    assert hb.false_stops([o(0, 0, 9, 0.9), o(0, 1, 1, 0.5, "Hyperband")]) == []


def test_a_recorded_tevid_alert_stops_the_replayed_trial_where_the_live_one_would_stop():
    alert = {"label": INSTABILITY, "step": 12, "epoch": 1, "confidence": 0.97, "vacuity": 0.1,
             "reason": "diagnosis"}
    # The alert is in the attribute from epoch 1 on (as the monitor publishes it).
    tevid = {e: {"version": 1, "alert": INSTABILITY, "alerts": {INSTABILITY: alert}}
             for e in range(1, 9)}
    recs = [_rec(0, [0.1] * 9, tevid=tevid), _rec(1, [0.3 + 0.05 * e for e in range(9)])]
    cfg = _cfg(9)
    strategies = {s.name: s for s in hb.optuna_strategies(cfg, None)}
    tv, _ = hb.replay_optuna(strategies["Hyperband + TEViD"], 0, recs, cfg)
    assert tv[0].epochs == 2 and tv[0].stopped_by == "TEViD" and "Instability" in tv[0].reason
    # Without the monitor's attribute (plain Hyperband) the same trial is not stopped by TEViD.
    plain, _ = hb.replay_optuna(strategies["Hyperband"], 0, recs, cfg)
    assert plain[0].stopped_by != "TEViD" and plain[0].epochs >= tv[0].epochs


def test_the_curve_tcn_pruner_stops_on_a_replayed_alert():
    recs = [_rec(0, [0.1] * 9), _rec(1, [0.3 + 0.05 * e for e in range(9)])]
    cfg = _cfg(9)
    detector = object()   # only its presence matters to the strategy list
    s = next(s for s in hb.optuna_strategies(cfg, detector) if s.curve)   # type: ignore[arg-type]
    alerts = {0: {INSTABILITY: {"label": INSTABILITY, "step": 35, "epoch": 3,
                                "confidence": 0.9, "reason": "curve-tcn"}}}
    outcomes, _ = hb.replay_optuna(s, 0, recs, cfg, alerts)
    assert outcomes[0].epochs == 4 and outcomes[0].stopped_by == "Curve-TCN"
    assert outcomes[1].stopped_by != "Curve-TCN"


def test_ray_tevid_hyperband_stops_on_a_recorded_alert(local_ray, tmp_path):
    recs = [_rec(k, [0.3 + 0.01 * k + 0.05 * e for e in range(3)]) for k in range(2)]
    recs.append(_rec(2, [0.1, 0.1, 0.1], ray_alert_at=0))
    cfg = hb.load_config(["problem.max_epochs=3", f"ray.temp_dir={RAY_TEMP_DIR}"])
    s = next(s for s in hb.ray_strategies(cfg) if s.monitored)
    outcomes, events = hb.replay_ray(s, 0, recs, cfg, tmp_path)
    assert outcomes[2].epochs == 1 and outcomes[2].stopped_by == "TEViD"
    assert len(events) == sum(o.epochs for o in outcomes)
    assert [e.epoch for e in events if e.number == 0] == list(range(outcomes[0].epochs))


def test_curve_tcn_alerts_of_a_prefix_are_those_of_the_whole_run(tmp_path):
    """Causality: replaying "alerts up to epoch t" equals a Curve-TCN run on the curve up to t."""
    cfg = hb.load_config([f"recordings={tmp_path}"], quick=True)
    detector = hb.fit_curve_tcn(cfg, tmp_path)
    assert detector is not None
    rng = np.random.default_rng(0)
    rec = _rec(0, [0.2] * 12)
    n = len(rec.steps["loss"])
    # A loss that decays, then explodes from step 60 on.
    rec.steps["loss"] = [float(2 * math.exp(-s / 50) * (1.2 ** max(0, s - 60))
                               * math.exp(0.05 * rng.standard_normal())) for s in range(n)]
    full = detector.model.predict_proba(rec.as_run())
    for k in (3, 6, 9):
        prefix = replace(rec, epochs=rec.epochs[:k],
                         steps={c: v[:k * rec.steps_per_epoch] for c, v in rec.steps.items()})
        part = detector.model.predict_proba(prefix.as_run())
        np.testing.assert_allclose(part, full[:len(part)], rtol=1e-6, atol=1e-9)
        cut = {lab: a for lab, a in detector.alerts(rec).items() if a["epoch"] < k}
        assert detector.alerts(prefix) == cut


def test_recordings_round_trip_through_json_without_nan():
    rec = _rec(0, [0.2, 0.5])
    rec.epochs[1].val_loss = None          # a non-finite loss is stored as null
    rec.steps["loss"][3] = None
    again = hb.TrialRecording.from_json(rec.to_json())
    assert again == rec
    assert math.isnan(again.as_run().steps["loss"].iloc[3])


def test_quick_profile_yields_to_explicit_overrides():
    cfg = hb.load_config(["n_trials=5", "problem.max_epochs=4"], quick=True)
    assert (cfg.n_trials, cfg.problem.max_epochs, list(cfg.seeds)) == (5, 4, [0, 1])
    assert cfg.problem.dataset_options.n_train == 256       # the rest of the profile applies
    full = hb.load_config()
    assert (full.quick, full.n_trials, full.problem.max_epochs) == (False, 48, 27)
    assert len(full.seeds) >= 3 and full.curve_tcn.source == "corpus"


def test_cli_accepts_quick_and_hydra_overrides(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(driver, "run_benchmark", lambda cfg, command: seen.update(
        cfg=cfg, command=command))
    monkeypatch.setattr(sys, "argv", ["hpo_benchmark"])
    hb.main(["--quick", "n_trials=3", f"cache={tmp_path}"])
    cfg = seen["cfg"]
    assert cfg.quick and cfg.n_trials == 3 and cfg.problem.max_epochs == 3
    assert cfg.recordings == str(tmp_path / "hpo_benchmark")
    assert seen["command"] == f"{hb.COMMAND} --quick n_trials=3 cache={tmp_path}"



def test_the_cheap_rule_is_lightnings_check_finite_and_divergence_threshold():
    from experiments.hpo_benchmark.stoppers import cheap_rule_stop

    rec = _rec(0, [0.1] * 6)
    assert cheap_rule_stop(rec) is None                     # a flat loss of 1.0: nothing fires
    rec.epochs[3].train_loss = 3.5                          # above 3 x the first step's 1.0
    stop = cheap_rule_stop(rec)
    assert stop.epoch == 3 and stop.reason.startswith("divergence_threshold")
    assert cheap_rule_stop(rec, divergence_factor=4.0) is None
    rec.epochs[2].train_loss = None                         # NaN/inf: check_finite, earlier
    assert cheap_rule_stop(rec).epoch == 2
    assert cheap_rule_stop(rec).reason == "check_finite: training loss is not finite"
    with pytest.raises(ValueError, match="divergence_factor must be > 0"):
        cheap_rule_stop(rec, divergence_factor=0.0)


def test_cusum_on_the_training_loss_fires_on_a_loss_that_climbs():
    from core_models.baselines.cusum import CUSUM
    from experiments.hpo_benchmark.stoppers import cheap_rule_stop

    rec = _rec(0, [0.2] * 20)
    n = len(rec.steps["loss"])
    rng = np.random.default_rng(0)
    # Decays, then climbs by 2 % a step from step 120 (epoch 12) — below 3x the start until late.
    rec.steps["loss"] = [float(2 * math.exp(-s / 60) * (1.02 ** max(0, s - 120))
                               * math.exp(0.02 * rng.standard_normal())) for s in range(n)]
    for e in rec.epochs:
        e.train_loss = float(np.mean(rec.steps["loss"][10 * e.epoch:10 * e.epoch + 10]))
    assert cheap_rule_stop(rec, divergence_factor=100.0) is None
    cusum = CUSUM(drift=1.0, sides="up")      # the benchmark's setting
    stop = cheap_rule_stop(rec, divergence_factor=100.0, cusum=cusum)
    assert stop is not None and 12 <= stop.epoch <= 16 and "CUSUM" in stop.reason
    # The same decay without the climb: no alarm (drift 0.5 alarms here, at epoch 8).
    rec.steps["loss"] = [float(2 * math.exp(-s / 60) * math.exp(0.02 * rng.standard_normal()))
                         for s in range(n)]
    assert cheap_rule_stop(rec, divergence_factor=100.0, cusum=cusum) is None


@pytest.mark.parametrize("base", ["Median", "Successive halving", "Hyperband"])
def test_a_signal_stops_the_trial_under_every_base_and_is_named_after_the_signal(base):
    from experiments.hpo_benchmark.stoppers import SignalStop

    recs = [_rec(0, [0.3 + 0.05 * e for e in range(9)]), _rec(1, [0.1] * 9),
            _rec(2, [0.35 + 0.05 * e for e in range(9)])]
    cfg = _cfg(9)
    s = {x.name: x for x in hb.optuna_strategies(cfg, None)}[f"{base} + Cheap rule"]
    signals = {0: None, 1: SignalStop(1, INSTABILITY, "check_finite: training loss is not "
                                      "finite"), 2: None}
    outcomes, _ = hb.replay_optuna(s, 0, recs, cfg, signals=signals)
    assert outcomes[1].epochs == 2 and outcomes[1].stopped_by == "Cheap rule"
    assert "check_finite" in outcomes[1].reason
    assert all(o.stopped_by != "Cheap rule" for o in (outcomes[0], outcomes[2]))
    with pytest.raises(ValueError, match="needs its signals"):
        hb.replay_optuna(s, 0, recs, cfg)


class _FixedPFN:
    """A stand-in network: the final value is predicted at the last observed value ± 0.05."""

    def predict(self, prefix, n_epochs):
        probs = np.zeros(20)
        probs[min(int(prefix[-1] * 20), 19)] = 1.0
        return probs


def test_the_lc_pfn_arm_stops_a_trial_that_cannot_beat_the_best_of_the_others():
    from experiments.hpo_benchmark.stoppers import PFNStopper

    recs = [_rec(0, [0.5 + 0.05 * e for e in range(9)]), _rec(1, [0.2] * 9),
            _rec(2, [0.9] * 9)]
    cfg = _cfg(9)
    s = next(x for x in hb.optuna_strategies(cfg, None, pfn=True)
             if x.name == "Median + LC-PFN")
    pfn = PFNStopper(_FixedPFN(), threshold=0.05)   # type: ignore[arg-type]
    outcomes, _ = hb.replay_optuna(s, 0, recs, cfg, pfn=pfn)
    # Trial 0 has nobody to beat; trial 1 (predicted ~0.2 < 0.9 reached by trial 0) stops at
    # its first report; trial 2 (predicted 0.9-0.95 > 0.9) may go on.
    assert outcomes[0].stopped_by is None and outcomes[0].epochs == 9
    assert outcomes[1].epochs == 1 and outcomes[1].stopped_by == "LC-PFN"
    assert "P(final > 0.900)" in outcomes[1].reason
    assert outcomes[2].stopped_by != "LC-PFN"


def test_ray_asha_with_the_cheap_rule_stops_on_the_signal(local_ray, tmp_path):
    from experiments.hpo_benchmark.stoppers import SignalStop

    recs = [_rec(k, [0.3 + 0.01 * k + 0.05 * e for e in range(3)]) for k in range(2)]
    recs.append(_rec(2, [0.1, 0.1, 0.1]))
    cfg = hb.load_config(["problem.max_epochs=3", f"ray.temp_dir={RAY_TEMP_DIR}",
                          "ray.bases=[Ray ASHA]", "ray.signals=[cheap]"])
    s = next(s for s in hb.ray_strategies(cfg) if s.signal == "cheap")
    signals = {0: None, 1: None, 2: SignalStop(0, INSTABILITY, "check_finite")}
    outcomes, _ = hb.replay_ray(s, 0, recs, cfg, tmp_path, signals=signals)
    assert outcomes[2].epochs == 1 and outcomes[2].stopped_by == "Cheap rule"
    assert all(o.stopped_by != "Cheap rule" for o in outcomes[:2])


def test_targets_are_checked_per_base_and_say_not_met():
    from experiments.hpo_benchmark.targets import base_targets

    recs = [_rec(k, [0.3 + 0.05 * e for e in range(9)]) for k in range(3)]
    cfg = _cfg(9)
    strategies = [x for x in hb.optuna_strategies(cfg, None) if x.base == "Median"]
    outcomes = []
    for x in strategies:
        outcomes += hb.replay_optuna(x, 0, recs, cfg, signals={})[0]
    summary = hb.summarize(outcomes, strategies, n_resamples=100)
    lines = base_targets(summary, outcomes, strategies, 100)
    assert lines[0].startswith("* **Median + TEViD vs Median:** epochs saved +0.0 %")
    assert "(not met: ≥ 20 %)" in lines[0] and "false stops by TEViD 0 (met)" in lines[0]
    assert "vs Cheap rule: Δ epochs/trial +0.00" in lines[0] and "the same epochs" in lines[0]
    assert "Pareto front" in lines[-1]


def test_an_out_of_distribution_task_records_with_its_schedule(toy_checkpoint_one_thread,
                                                                monkeypatch):
    """``task=gn_cnn_gratings``: the external suite's GroupNorm CNN on gratings, SGD with a step
    decay, recorded through the same TrialMonitor path (the lr column is the scheduled rate), and
    the monitor holds the trial's optimizer, so a telemetry diagnostician reads the lr in use."""
    monitors: list[Any] = []

    class SpyMonitor(record.TrialMonitor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            monitors.append(self)

    monkeypatch.setattr(record, "TrialMonitor", SpyMonitor)
    cfg = hb.load_config(["task=gn_cnn_gratings", "problem.max_epochs=2", "problem.step_epochs=1",
                          "problem.train_sizes=[64]"], quick=True)
    problem = hb.Problem.from_cfg(cfg.problem)
    assert (problem.source, problem.arch, problem.schedule) == ("external", "gn_cnn", "step")
    data = problem.load_data()
    assert len(data.x_val) + len(data.x_test) == 256    # the suite's validation part, halved
    diag = Diagnostician.from_pretrained(str(toy_checkpoint_one_thread), device="cpu")
    config = hb.draw_configs(problem, 0, 1)[0]
    with _one_thread():
        rec = hb.train_trial(problem, config, data, diag)
    spe = rec.steps_per_epoch
    assert rec.steps["lr"][0] == pytest.approx(config.lr)
    assert rec.steps["lr"][spe] == pytest.approx(0.1 * config.lr)     # decayed after epoch 0
    assert rec.n_epochs == 2 and all(0.0 <= e.val_acc <= 1.0 for e in rec.epochs)
    assert len(monitors) == 1 and isinstance(monitors[0].optimizer, torch.optim.SGD)
    assert monitors[0].optimizer.param_groups[0]["lr"] == pytest.approx(rec.steps["lr"][-1])


def test_the_text_task_builds_the_external_gru_and_warms_up():
    cfg = hb.load_config(["task=gru_text"], quick=True)
    problem = hb.Problem.from_cfg(cfg.problem)
    data = problem.load_data()
    torch.manual_seed(0)
    model = problem.build_model(data)
    assert model(data.x_train[:4]).shape == (4, data.num_classes)
    assert data.x_train.dtype == torch.int64                      # bytes of stdlib sources
    spe = problem.steps_per_epoch(data)
    assert problem.lr_factor(0, spe) < problem.lr_factor(spe, spe) <= 1.0   # warm-up
    assert problem.lr_factor(3 * spe - 1, spe) < problem.lr_factor(2 * spe, spe)  # cosine
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        hb.load_config(["task=nope"])


def test_curve_tcn_pruner_spares_a_leader_as_the_tevid_arms_do():
    # The Curve-TCN arm is compared with the TEViD arms under one stop rule: the leader guard.
    from experiments.hpo_benchmark.curve_tcn import CURVE_ATTR, CurveTCNPruner
    from tevid_hpo.pruners import prune_reason

    _quiet_optuna()
    study = optuna.create_study(direction="maximize")
    for _ in range(3):   # finished rivals, mid-field at step 2
        study.add_trial(optuna.trial.create_trial(value=0.5, intermediate_values={2: 0.5}))
    alerted = {"alerts": {"Overfitting": {"step": 20, "epoch": 2}}}

    def running(value):
        t = study.ask()
        t.set_user_attr(CURVE_ATTR, alerted)
        t.report(value, 2)
        return t.number

    leader, trailer = running(0.9), running(0.1)
    frozen = lambda n: study.get_trials(deepcopy=False)[n]
    hyperband = {"min_resource": 1, "max_resource": 9, "reduction_factor": 3}
    guarded, unguarded = CurveTCNPruner(**hyperband), CurveTCNPruner(**hyperband,
                                                                     spare_leaders=None)
    assert guarded.prune(study, frozen(trailer)) is True
    assert prune_reason(study.trials[trailer])["pruner"] == "CurveTCN"
    assert prune_reason(study.trials[leader]) is None
    guarded.prune(study, frozen(leader))   # Hyperband may stop it; the alert may not
    assert (prune_reason(study.trials[leader]) or {}).get("pruner") != "CurveTCN"
    assert unguarded.prune(study, frozen(leader)) is True
    assert prune_reason(study.trials[leader])["pruner"] == "CurveTCN"
    with pytest.raises(ValueError, match="spare_leaders"):
        CurveTCNPruner(**hyperband, spare_leaders=0)


def _telemetry_diagnostician(seed: int, root: Path) -> Diagnostician:
    """An untrained 'tiny' diagnostician that reads the training scalars and alerts on whatever
    leads twice in a row (so two of them disagree visibly), loaded from disk (it has a key)."""
    from core_models.calibration import Calibration
    from core_models.telemetry import NUM_FEATURES
    from core_models.tevid import TEViD
    from data_factory.labels import KNOWN_LABELS

    torch.manual_seed(seed)
    diag = Diagnostician(TEViD("tiny", telemetry=NUM_FEATURES),
                         Calibration(tau_u=1.0, tau_c={c: 0.0 for c in KNOWN_LABELS}, memory=1,
                                     consecutive=2), device="cpu")
    return Diagnostician.from_pretrained(str(diag.save_pretrained(root / f"diag{seed}")),
                                         device="cpu")


def test_another_checkpoint_rediagnoses_the_recorded_frames_as_it_would_have_live(
        tmp_path, monkeypatch):
    """A recording keeps the frames its diagnostician read; another checkpoint re-reads them
    through a real TrialMonitor instead of training the trial again, and gets exactly the
    attributes it would have published live (alerts, history, Ray keys)."""
    a, b, c = (_telemetry_diagnostician(s, tmp_path) for s in (0, 1, 2))
    overrides = [f"recordings={tmp_path / 'rec'}", "task=gru_text", "problem.max_epochs=2",
                 "problem.train_sizes=[64]", "seeds=[0]", "n_trials=2", "progress=false"]
    cfg = hb.load_config(overrides, quick=True)
    problem = hb.Problem.from_cfg(cfg.problem)

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("trained a recorded trial again")

    with _one_thread():
        by_a = record.record_all(cfg, problem, a, [0], 2, progress=False)[0]
        live_b = [hb.train_trial(problem, config, problem.load_data(), b)
                  for config in hb.draw_configs(problem, 0, 2)]
        monkeypatch.setattr(record, "train_trial", no_training)
        by_b = record.record_all(cfg, problem, b, [0], 2, progress=False)[0]
        with pytest.raises(RuntimeError, match="trained"):    # rediagnose=false: train
            record.record_all(hb.load_config([*overrides, "rediagnose=false"], quick=True),
                              problem, c, [0], 2, progress=False)

    def published(recs):
        return [[(e.tevid, e.tevid_error, e.ray) for e in r.epochs] for r in recs]

    assert published(by_b) == published(live_b)
    assert published(by_b) != published(by_a)          # the checkpoints disagree ...
    assert any((e.tevid or {}).get("alerts") for r in by_b for e in r.epochs)
    for x, y in zip(by_b, by_a):                       # ... on the same training
        assert [e.val_acc for e in x.epochs] == [e.val_acc for e in y.epochs]
        assert x.steps == y.steps and x.diagnostician != y.diagnostician
    stored = sorted(p.relative_to(tmp_path / "rec") for p in (tmp_path / "rec").rglob(
        "*.frames.safetensors"))
    assert len(stored) == 4                             # kept under both checkpoints' keys
    frames, header = read_frames(tmp_path / "rec" / stored[0])
    assert header["every"] == a.profile.every and frames[0].scalars.keys() >= {"loss", "lr"}


def test_frames_of_another_capture_size_are_refused(toy_checkpoint_one_thread):
    diag = Diagnostician.from_pretrained(str(toy_checkpoint_one_thread), device="cpu")
    side = diag.profile.frame_size + 1
    frame = Frame(torch.zeros(6, side, side, dtype=torch.bfloat16), step=0, epoch=0)
    with pytest.raises(ValueError, match="record anew"):
        record.rediagnose(_rec(0, [0.2]), [frame], diag)


def test_a_trial_stuck_at_the_constant_guess_counts_as_failed():
    """Chance is what a constant guess scores (the majority class's share of the validation
    split, not 1/K: ~0.30 on the text and gratings tasks) and the loss it has (the entropy of the
    class prior); a trial that blew up and then settled at that loss predicts a constant too."""
    from experiments.hpo_benchmark.diagnosis import Chance, trial_kinds

    stuck, learned = _rec(0, [0.30] * 5), _rec(1, [0.3, 0.5, 0.8])   # training loss 1.0 each
    collapsed = _rec(2, [0.30] * 3)
    collapsed = replace(collapsed, epochs=[replace(e, train_loss=x) for e, x in
                                           zip(collapsed.epochs, [20.0, 1.39, 1.39])])
    recs = {0: [stuck, learned, collapsed]}
    assert trial_kinds(recs, Chance(0.30, 1.386)) == {
        (0, 0): "learned", (0, 1): "learned", (0, 2): "failed"}   # 1.0 is below the guess's loss
    assert trial_kinds(recs, Chance(0.30, 1.0))[(0, 0)] == "failed"
    assert trial_kinds(recs, Chance(0.10, 1.0))[(0, 0)] == "learned"
    problem = hb.Problem.from_cfg(hb.load_config(["task=gn_cnn_gratings"]).problem)
    data = problem.load_data()
    chance = Chance.of(data)
    assert 1 / data.num_classes < chance.accuracy < 1
    assert 0 < chance.loss <= math.log(data.num_classes) + 1e-9


def test_workers_record_the_same_trials_as_one_process(quick, tmp_path):
    cfg, _, _, _ = quick
    serial = _recordings(cfg)
    side_by_side = OmegaConf.merge(cfg, {"recordings": str(tmp_path), "workers": 2})
    diag = Diagnostician.from_pretrained(str(cfg.diagnostician), device="cpu")
    recs = record.record_all(side_by_side, hb.Problem.from_cfg(cfg.problem), diag,
                             list(cfg.seeds), int(cfg.n_trials), progress=False)

    def untimed(r: hb.TrialRecording) -> dict[str, Any]:
        d = asdict(hb.TrialRecording.from_json(r.to_json()))
        for e in d["epochs"]:
            e["seconds"] = e["monitor_seconds"] = None
        return d

    for seed in cfg.seeds:   # the same trials in the same order, whichever process trained them
        assert [untimed(r) for r in recs[seed]] == [untimed(r) for r in serial[seed]]
    assert len(list(tmp_path.glob("*/seed*/trial*.frames.safetensors"))) == \
        len(cfg.seeds) * cfg.n_trials
    with pytest.raises(ValueError, match="workers"):
        record.record_all(OmegaConf.merge(side_by_side, {"workers": 0}),
                          hb.Problem.from_cfg(cfg.problem), diag, [0], 1, progress=False)
