"""Phase 2, replay: the recordings run through a real Optuna study per strategy and seed
(:func:`replay_optuna`) and a real ``tune.Tuner`` per scheduler and seed (:func:`replay_ray`);
what happened to each trial (:class:`TrialOutcome`) and each report (:class:`Event`).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from experiments.hpo_benchmark.arms import _STOPPER_NAMES, SIGNAL_NAMES, Strategy, _metric
from experiments.hpo_benchmark.curve_tcn import CURVE_ATTR
from experiments.hpo_benchmark.problem import Problem, _quiet_optuna, _sampler, suggest
from experiments.hpo_benchmark.record import EpochRecord, TrialRecording, _nan
from experiments.hpo_benchmark.stoppers import (
    PFNStopper,
    SignalStop,
    as_ray_keys,
    as_tevid_state,
    best_of_others,
)
from tevid_hpo.decision import describe
from tevid_hpo.monitor import ERROR_ATTR, USER_ATTR
from tevid_hpo.pruners import prune_reason


@dataclass(frozen=True)
class TrialOutcome:
    """What happened to one configuration under one strategy.

    Attributes:
        strategy, seed, number: which.
        epochs: epochs it trained (reports made).
        max_epochs: its budget.
        stopped_by: who stopped it early (``"Hyperband"``, ``"TEViD"``, ``"Curve-TCN"``,
            ``"Median"``, ``"Successive halving"``, ``"ASHA"``), ``None`` if it ran the budget.
        reason: the recorded reason, one line (``""`` when none).
        value, test_acc: best validation accuracy over the epochs it trained, test accuracy then.
        full_value: its best validation accuracy over all ``max_epochs`` (from the recording).
        wall_s: replayed wall time of the epochs it trained.
    """

    strategy: str
    seed: int
    number: int
    epochs: int
    max_epochs: int
    stopped_by: str | None
    reason: str
    value: float
    test_acc: float
    full_value: float
    wall_s: float

    @property
    def stopped(self) -> bool:
        """Stopped before its budget."""
        return self.epochs < self.max_epochs


@dataclass(frozen=True)
class Event:
    """One reported epoch, in the order a strategy's search produced it (for the plot)."""

    strategy: str
    seed: int
    number: int
    epoch: int
    val_acc: float


def _outcome(strategy: Strategy, rec: TrialRecording, epochs: int, stopped_by: str | None,
             reason: str) -> TrialOutcome:
    value, test, _ = rec.value(epochs)
    stopped = epochs < rec.n_epochs
    return TrialOutcome(strategy.name, rec.config.seed, rec.config.number, epochs, rec.n_epochs,
                        stopped_by if stopped else None, reason if stopped else "", value, test,
                        rec.full_value, rec.wall(epochs, strategy.monitored))


def _replay_value(ep: EpochRecord, metric: str) -> float:
    return ep.val_acc if metric == "val_acc" else _nan(ep.val_loss)


def _stopper_name(strategy: Strategy, pruner: str) -> str:
    """Who stopped a trial: a signal fed through the TEViD wrapper is named after the signal."""
    name = _STOPPER_NAMES.get(pruner, pruner)
    if name == "TEViD" and strategy.signal is not None:
        return SIGNAL_NAMES[strategy.signal]
    return name


def replay_optuna(strategy: Strategy, seed: int, recordings: Sequence[TrialRecording],
                  cfg: DictConfig, curve_alerts: Mapping[int, dict[str, Any]] | None = None,
                  signals: Mapping[int, SignalStop | None] | None = None,
                  pfn: PFNStopper | None = None) -> tuple[list[TrialOutcome], list[Event]]:
    """Phase 2 for one Optuna strategy and seed: a real study whose objective replays.

    Every configuration is enqueued in trial order; the objective checks it drew the recorded
    configuration, then per recorded epoch publishes what a live trial would have published by
    then (TEViD's attribute for monitored strategies, the Curve-TCN's alerts for the Curve-TCN
    one, the cheap rule's stop from ``signals`` or the LC-PFN's decision from ``pfn``, both in
    TEViD's attribute form), reports, and asks ``should_prune()``.
    """
    if strategy.signal == "cheap" and signals is None:
        raise ValueError(f"{strategy.name}: the cheap-rule arm needs its signals")
    if strategy.signal == "pfn" and pfn is None:
        raise ValueError(f"{strategy.name}: the LC-PFN arm needs its PFNStopper")
    problem_cfg = Problem.from_cfg(cfg.problem)
    metric, mode = _metric(cfg)
    by_number = {r.config.number: r for r in recordings}
    events: list[Event] = []

    def objective(trial: optuna.Trial) -> float:
        rec = by_number[trial.number]
        params = suggest(trial, problem_cfg)
        if params != rec.config.params:
            raise RuntimeError(f"trial {trial.number} drew {params}, recorded "
                               f"{rec.config.params}: the replay would not be exact")
        alerts = (curve_alerts or {}).get(trial.number, {})
        published: dict[str, Any] = {}
        pfn_stop: SignalStop | None = None
        for ep in rec.epochs:
            if strategy.signal == "cheap":
                trial.set_user_attr(USER_ATTR, as_tevid_state((signals or {}).get(
                    trial.number), ep.epoch))
            if strategy.signal == "pfn" and pfn is not None and pfn_stop is None:
                others = {t.number: list(t.intermediate_values.values())
                          for t in trial.study.get_trials(deepcopy=False)}
                prefix = [e.val_acc for e in rec.epochs[:ep.epoch + 1]]
                pfn_stop = pfn.decide(prefix, rec.n_epochs, best_of_others(others, trial.number))
                trial.set_user_attr(USER_ATTR, as_tevid_state(pfn_stop, ep.epoch))
            if strategy.monitored:
                if ep.tevid is not None:
                    trial.set_user_attr(USER_ATTR, ep.tevid)
                if ep.tevid_error:
                    trial.set_user_attr(ERROR_ATTR, ep.tevid_error)
            if strategy.curve:
                seen = {k: a for k, a in alerts.items() if a["epoch"] <= ep.epoch}
                if seen != published:
                    published = seen
                    trial.set_user_attr(CURVE_ATTR, {"alerts": seen})
            trial.set_user_attr("epochs", ep.epoch + 1)
            trial.report(_replay_value(ep, metric), ep.epoch)
            events.append(Event(strategy.name, seed, trial.number, ep.epoch, ep.val_acc))
            if trial.should_prune():
                raise optuna.TrialPruned()
        vals = [_replay_value(e, metric) for e in rec.epochs]
        finite = [v for v in vals if math.isfinite(v)]
        if not finite:   # e.g. val_loss NaN throughout: the worst value (NaN fails a trial)
            return -math.inf if mode == "max" else math.inf
        return max(finite) if mode == "max" else min(finite)

    with _quiet_optuna():
        # One study name for every strategy: Optuna's Hyperband picks a trial's bracket from
        # crc32(f"{study_name}_{number}"), so a shared name keeps the bracket assignment fixed.
        study = optuna.create_study(study_name=f"hpo-benchmark-seed{seed}",
                                    direction="maximize" if mode == "max" else "minimize",
                                    sampler=_sampler(seed), pruner=strategy.make())
        for rec in recordings:
            study.enqueue_trial(rec.config.params)
        study.optimize(objective, n_trials=len(recordings), catch=())
    outcomes = []
    for t in study.get_trials(deepcopy=False):
        rec = by_number[t.number]
        epochs = len(t.intermediate_values)
        by, why = None, ""
        if t.state == TrialState.PRUNED:
            reason = prune_reason(t)
            name = (reason or {}).get("pruner") or type(study.pruner).__name__
            by = _stopper_name(strategy, name)
            why = describe(reason) if reason is not None else f"pruned at step {t.last_step}"
        elif t.state != TrialState.COMPLETE:
            raise RuntimeError(f"{strategy.name}, seed {seed}: trial {t.number} ended {t.state}")
        outcomes.append(_outcome(strategy, rec, epochs, by, why))
    return outcomes, events


@contextlib.contextmanager
def _ray_session(cfg: DictConfig) -> Iterator[None]:
    """A local Ray with its files under ``ray.temp_dir``, or the one already running (never
    shut down unless started here)."""
    import logging

    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=int(cfg.ray.num_cpus), include_dashboard=False,
                 _temp_dir=str(cfg.ray.temp_dir), configure_logging=False, log_to_driver=False)
    # Tune's loggers warn on every resume of a paused trial that they found no result file to
    # restore (the trial directory is local and already has it): noise, by the hundred.
    noisy = logging.getLogger("ray.tune.logger.logger")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        yield
    finally:
        noisy.setLevel(level)
        if started:
            ray.shutdown()


def _ray_trainable(config: dict[str, Any], rows: Mapping[int, list[dict[str, Any]]],
                   checkpoint: bool) -> None:
    """Replay one recorded trial to Ray Tune; resume after the checkpointed epoch."""
    from ray import tune

    trial_rows = rows[int(config["trial"])]
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = int(json.loads((Path(d) / "replay.json").read_text())["epoch"]) + 1
    for row in trial_rows[start:]:
        result = {**row, "replay_clock": time.time()}
        if not checkpoint:
            tune.report(result)
            continue
        with tempfile.TemporaryDirectory(prefix="hpo-replay-") as tmp:
            (Path(tmp) / "replay.json").write_text(json.dumps({"epoch": row["epoch"]}))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


def _ray_rows(rec: TrialRecording, monitored: bool, signal: SignalStop | None = None,
              signalled: bool = False) -> list[dict[str, Any]]:
    rows = []
    for ep in rec.epochs:
        row: dict[str, Any] = {"epoch": ep.epoch, "val_acc": ep.val_acc,
                               "val_loss": _nan(ep.val_loss)}
        if monitored:
            row.update(ep.ray)
        elif signalled:
            row.update(as_ray_keys(signal, ep.epoch))
        rows.append(row)
    return rows


def replay_ray(strategy: Strategy, seed: int, recordings: Sequence[TrialRecording],
               cfg: DictConfig, storage: Path,
               signals: Mapping[int, SignalStop | None] | None = None
               ) -> tuple[list[TrialOutcome], list[Event]]:
    """Phase 2 for one Ray Tune scheduler and seed: a real ``tune.Tuner`` replaying.

    The trials are ``tune.grid_search`` over the trial numbers (created in order, so Hyperband
    fills its brackets in trial order) and each asks for every CPU of the cluster, so one runs at
    a time and the order of results does not depend on the machine's speed.
    """
    import ray
    from ray import cloudpickle, tune

    from tevid_hpo.ray import TEViDHyperband, TEViDScheduler

    if strategy.signal == "cheap" and signals is None:
        raise ValueError(f"{strategy.name}: the cheap-rule arm needs its signals")

    # Ship the trainable to Tune's workers by value (as cloudpickle ships a function of
    # ``__main__``): by reference, each worker would first import this package and with it torch,
    # Optuna and SciPy, seconds per worker start on a busy machine.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    scheduler = strategy.make()
    base = scheduler.base if isinstance(scheduler, TEViDScheduler) else scheduler
    pauses = type(base).__name__ != "AsyncHyperBandScheduler"   # ASHA never pauses
    rows = {r.config.number: _ray_rows(r, strategy.monitored, (signals or {}).get(
        r.config.number), signalled=strategy.signal == "cheap") for r in recordings}
    name = f"{strategy.name.replace(' ', '_').replace('+', 'plus')}-seed{seed}"
    shutil.rmtree(storage / name, ignore_errors=True)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    wrapped = isinstance(scheduler, (TEViDHyperband, TEViDScheduler))
    callbacks = [scheduler.callback()] if wrapped else []
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_ray_trainable, rows=rows, checkpoint=pauses),
                            {"cpu": cpus}),
        param_space={"trial": tune.grid_search([r.config.number for r in recordings])},
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                  callbacks=callbacks))
    results = tuner.fit()
    if results.errors:
        raise RuntimeError(f"{strategy.name}, seed {seed}: {len(results.errors)} Tune trial(s) "
                           f"failed: {results.errors[0]}")
    by_number = {r.config.number: r for r in recordings}
    outcomes, clocked = [], []
    for res in results:
        number = int(res.config["trial"])
        rec = by_number[number]
        epochs = int(res.metrics.get("training_iteration", 0))
        by, why = None, ""
        if epochs < rec.n_epochs:
            reason = scheduler.stop_reason(res.metrics["trial_id"]) if wrapped else None
            name_ = (reason or {}).get("pruner") or type(base).__name__
            by = _stopper_name(strategy, name_)
            why = describe(reason) if reason else f"stopped at iteration {epochs}"
        outcomes.append(_outcome(strategy, rec, epochs, by, why))
        df = res.metrics_dataframe
        if df is not None and len(df):
            clocked += [(float(c), number, int(e)) for c, e in zip(df["replay_clock"], df["epoch"])]
    outcomes.sort(key=lambda o: o.number)
    events = [Event(strategy.name, seed, n, e, by_number[n].epochs[e].val_acc)
              for _, n, e in sorted(clocked)]
    return outcomes, events
