"""The benchmark end to end: record, fit the Curve-TCN, replay every strategy, summarise and
write the report (:func:`run_benchmark`); the Hydra command line (:func:`main`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from experiments.cli import run_hydra
from experiments.hpo_benchmark.arms import optuna_strategies, ray_strategies
from experiments.hpo_benchmark.config import (
    COMMAND,
    FIGURE,
    PARETO_FIGURE,
    SECTION,
    _override_keys,
    _say,
    apply_quick,
    apply_task,
)
from experiments.hpo_benchmark.curve_tcn import fit_curve_tcn
from experiments.hpo_benchmark.diagnosis import Chance, diagnose, trial_kinds
from experiments.hpo_benchmark.problem import Problem, _one_thread
from experiments.hpo_benchmark.record import diagnostician_key, record_all, recordings_dir
from experiments.hpo_benchmark.replay import (
    Event,
    TrialOutcome,
    _ray_session,
    replay_optuna,
    replay_ray,
)
from experiments.hpo_benchmark.report import (
    _json_ready,
    _verdicts,
    plot_curves,
    render_section,
    render_table,
)
from experiments.hpo_benchmark.stats import summarize
from experiments.hpo_benchmark.stoppers import cheap_signals, load_pfn
from experiments.hpo_benchmark.targets import base_targets, plot_pareto
from experiments.report import RESULTS, write_section
from tevid_hpo.diagnostician import Diagnostician


def run_benchmark(cfg: DictConfig, command: str = COMMAND) -> dict[str, Any]:
    """Record (or load), replay every strategy, write the report; returns the summary.

    Writes ``summary.json``, ``outcomes.csv``, ``table.md`` and the figure into ``out``
    (default ``<recordings>/report``, ``report-quick`` in quick mode); with
    ``write_results=true`` (never in quick mode) also the ``hpo-benchmark`` section of
    ``docs/results.md`` and ``docs/figures/hpo_benchmark.png``.
    """
    with _one_thread():
        return _run_benchmark(cfg, command)


def _run_benchmark(cfg: DictConfig, command: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    problem = Problem.from_cfg(cfg.problem)
    seeds = [int(s) for s in cfg.seeds]
    n_trials = int(cfg.n_trials)
    if len(set(seeds)) != len(seeds) or not seeds or n_trials < 1:
        raise ValueError(f"need distinct seeds and n_trials >= 1, got {seeds}, {n_trials}")
    cache = Path(cfg.recordings).expanduser()
    task = f"-{cfg.task}" if cfg.get("task") else ""   # one report per task
    out = Path(cfg.out).expanduser() if cfg.get("out") else \
        cache / (("report-quick" if cfg.quick else "report") + task)
    if cfg.quick and out.resolve().is_relative_to(RESULTS.parent.resolve()):
        raise ValueError(f"quick mode never writes under {RESULTS.parent}: choose another out")
    out.mkdir(parents=True, exist_ok=True)
    progress = bool(cfg.progress)

    diag = _resolve(cfg, out)
    diag_source = f"`{_shown(diag.source)}` (key {diagnostician_key(diag)})"
    _say(f"phase 1: record {len(seeds)} seed(s) × {n_trials} trial(s) × {problem.max_epochs} "
         f"epochs into {recordings_dir(cfg, problem, diagnostician_key(diag))}")
    t1 = time.perf_counter()
    recordings = record_all(cfg, problem, diag, seeds, n_trials, progress=progress)
    record_s = time.perf_counter() - t1
    sec_epoch = [e.seconds for rs in recordings.values() for r in rs for e in r.epochs]
    _say(f"phase 1 done in {record_s:.0f} s (recorded epochs take {np.mean(sec_epoch):.2f} s "
         "each on average)")

    detector = fit_curve_tcn(cfg, cache)
    prune_on = tuple(cfg.tevid.prune_on)
    curve_alerts: dict[int, dict[int, dict[str, Any]]] = {}
    if detector is not None:
        curve_alerts = {seed: {r.config.number: detector.alerts(r, prune_on) for r in recs}
                        for seed, recs in recordings.items()}

    cheap = cheap_signals(cfg, recordings)
    pfn = load_pfn(cfg)
    strategies = optuna_strategies(cfg, detector, pfn=pfn is not None)
    outcomes: list[TrialOutcome] = []
    events: list[Event] = []
    jobs = [(s, seed) for s in strategies for seed in seeds]
    t2 = time.perf_counter()
    for s, seed in tqdm(jobs, desc="replay optuna", unit="study", disable=not progress,
                        dynamic_ncols=True):
        o, e = replay_optuna(s, seed, recordings[seed], cfg, curve_alerts.get(seed),
                             signals=cheap.get(seed), pfn=pfn)
        outcomes += o
        events += e
    optuna_s = time.perf_counter() - t2
    ray_s = 0.0
    if cfg.ray.enabled:
        rstrats = ray_strategies(cfg)
        rseeds = [int(s) for s in (cfg.ray.seeds if cfg.ray.seeds is not None else seeds)]
        t3 = time.perf_counter()
        with _ray_session(cfg):
            for s, seed in tqdm([(s, seed) for s in rstrats for seed in rseeds],
                                desc="replay ray tune", unit="run", disable=not progress,
                                dynamic_ncols=True):
                o, e = replay_ray(s, seed, recordings[seed], cfg, out / "ray",
                                  signals=cheap.get(seed))
                outcomes += o
                events += e
        ray_s = time.perf_counter() - t3
        strategies = [*strategies, *rstrats]
    n_resamples = int(cfg.n_resamples)
    summary = summarize(outcomes, strategies, n_resamples=n_resamples)
    chance = Chance.of(problem.load_data())
    diagnosis = diagnose(recordings, outcomes, prune_on, chance)
    verdicts = _verdicts(summary, outcomes, n_resamples, diagnosis)
    targets = base_targets(summary, outcomes, strategies, n_resamples,
                           kinds=trial_kinds(recordings, chance))
    if targets:
        verdicts += ["", ("Issue 25's targets, per base X (X + TEViD against X, the cheap "
                          "rule and LC-PFN on the same base):"), "", *targets]

    fig_path = plot_curves(events, strategies, out / FIGURE)
    pareto_path = plot_pareto(summary, strategies, out / PARETO_FIGURE,
                              f"{problem.arch} / {problem.dataset} / {problem.optimizer}")
    table = render_table(summary)
    curve_source = detector.source if detector is not None else None
    section = render_section(cfg, summary, verdicts, problem, diag_source, curve_source,
                             FIGURE)
    (out / "table.md").write_text(section + "\n")
    pd.DataFrame([asdict(o) for o in outcomes]).to_csv(out / "outcomes.csv", index=False)
    timings = {"record_s": round(record_s, 1), "optuna_replay_s": round(optuna_s, 1),
               "ray_replay_s": round(ray_s, 1), "total_s": round(time.perf_counter() - t0, 1),
               "mean_epoch_s": round(float(np.mean(sec_epoch)), 4)}
    result = {"config": OmegaConf.to_container(cfg, resolve=True), "problem": asdict(problem),
              "diagnostician": diag_source, "curve_tcn": curve_source,
              "strategies": _json_ready(summary), "diagnosis": diagnosis,
              "verdicts": verdicts, "timings": timings, "out": str(out)}
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    print("\n" + table + "\n\n" + "\n".join(verdicts) + "\n", flush=True)

    if cfg.write_results and cfg.get("task"):
        _say(f"task={cfg.task}: the {SECTION} section holds the in-distribution search; this "
             f"task's report is in {out} (docs/ untouched)")
    elif cfg.write_results and cfg.quick:
        _say(f"quick mode never writes docs/results.md or docs/figures: report in {out}")
    elif cfg.write_results:
        results = Path(cfg.results).expanduser() if cfg.get("results") else RESULTS
        figures = Path(cfg.figures).expanduser() if cfg.get("figures") else \
            results.parent / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fig_path, figures / FIGURE)
        shutil.copyfile(pareto_path, figures / PARETO_FIGURE)
        rel = os.path.relpath(figures / FIGURE, results.parent)
        body = render_section(cfg, summary, verdicts, problem, diag_source, curve_source, rel)
        write_section(SECTION, body, command=command, path=results,
                      seeds=seeds, n_trials=n_trials, max_epochs=problem.max_epochs,
                      metric=cfg.metric, total_min=round(timings["total_s"] / 60, 1))
        _say(f"wrote the {SECTION} section of {results} and {figures / FIGURE}")
    _say(f"done in {timings['total_s']:.0f} s (record {timings['record_s']:.0f} s, Optuna "
         f"replay {timings['optuna_replay_s']:.0f} s, Ray replay {timings['ray_replay_s']:.0f} s)"
         f"; report in {out}")
    return result


def _shown(path: Path | None) -> str:
    """A checkpoint path as the report shows it: relative to the repository when inside it."""
    if path is None:
        return "in-memory"
    root = RESULTS.parents[1]
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def _resolve(cfg: DictConfig, out: Path) -> Diagnostician:
    """The diagnostician: ``cfg.diagnostician``, else the shipped default; in quick mode only,
    the demo's toy diagnostician when there is no default (its numbers mean nothing)."""
    if cfg.diagnostician:
        return Diagnostician.from_pretrained(str(cfg.diagnostician), device="cpu")
    try:
        return Diagnostician.from_pretrained(device="cpu")
    except FileNotFoundError as err:
        if not cfg.quick:
            raise FileNotFoundError(
                f"{err} The benchmark measures the real diagnostician: run `make pipeline` or "
                "pass diagnostician=PATH.") from err
    from tevid_hpo.optuna_demo import _resolve_diagnostician

    return _resolve_diagnostician(None, out, _say)


def main(argv: Sequence[str] | None = None) -> None:
    """Hydra entry point; ``--quick`` is a shorthand for ``quick=true`` (which applies
    ``quick_profile`` under any explicit overrides)."""

    def run(cfg: DictConfig, command: str, args: list[str]) -> None:
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        cfg = apply_task(cfg, args)
        if cfg.quick:
            cfg = apply_quick(cfg, _override_keys(args))
        run_benchmark(cfg, command=command)

    run_hydra("hpo_benchmark", COMMAND, argv, run)
