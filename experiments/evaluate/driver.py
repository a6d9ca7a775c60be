"""The evaluation end to end: load the corpus and split, build and score every method, freeze
the operating points, check the leakage guard and write every table (:func:`run_evaluation`); the
Hydra command line (:func:`main`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from core_models.checkpoint import resolve_device
from data_factory.store import RunStore
from experiments.cli import run_hydra
from experiments.evaluate.context import _Context
from experiments.evaluate.costs import _table18_19
from experiments.evaluate.leakage import LeakageGuard
from experiments.evaluate.methods import _build_methods, _thresholds
from experiments.evaluate.open_set import _table16, _table17
from experiments.evaluate.tables import _table3, _table4, _table12, _table15, _table_memory
from experiments.pipeline import corpus_hash, load_labels, split_hash, split_runs
from experiments.report import RESULTS
from tevid_hpo.cost import CostModel

COMMAND = "python -m experiments.evaluate"


def run_evaluation(cfg: DictConfig, command: str = COMMAND) -> dict[str, Any]:
    """Run the whole protocol and write every table; returns the JSON summary."""
    t0 = time.time()
    root, out = Path(cfg.root).expanduser(), Path(cfg.out).expanduser()
    results = Path(cfg.results).expanduser() if cfg.get("results") else RESULTS
    figures = Path(cfg.figures).expanduser() if cfg.get("figures") else results.parent / "figures"
    n_resamples = int(cfg.quick_resamples if cfg.quick else cfg.n_resamples)
    device = resolve_device(cfg.device)
    if not (root / "labels.csv").is_file():
        raise FileNotFoundError(f"no labels.csv under {root}: run `python -m experiments.label`")

    store = RunStore(root)
    labels = load_labels(root)
    chash = corpus_hash(root)
    train, _ = split_runs(store, labels, "train")
    val, _ = split_runs(store, labels, "val")
    test, _ = split_runs(store, labels, "test")
    if not (train and val and test):
        raise RuntimeError(f"need labelled train, val and test runs under {root}; found "
                           f"{len(train)} / {len(val)} / {len(test)}")
    print(f"[evaluate] {len(train)} train, {len(val)} val, {len(test)} test runs; corpus {chash}",
          flush=True)
    guard = LeakageGuard(test)
    cost = CostModel(**OmegaConf.to_container(cfg.cost, resolve=True))
    methods, missing, timings = _build_methods(cfg, out, device, guard, train, val, test,
                                               labels, chash)
    for m in methods.values():
        _thresholds(m, float(cfg.far), int(cfg.consecutive), cost, guard)
    # Stop before anything is written if any step saw the test split.
    guard.check()

    ctx = _Context(cfg, command, results, figures, int(cfg.seed), n_resamples, chash, methods,
                   guard, missing, cost)
    cells = cfg.get("cells", ["default"])
    ctx.summary = {"corpus_hash": chash, "split_hash": split_hash(cells), "seed": ctx.seed,
                   "n_resamples": n_resamples, "far": float(cfg.far),
                   "runs": {"train": len(train), "val": len(val), "test": len(test)},
                   "leakage": {"checked_uses": len(guard.uses), "runs_seen": len(guard.seen_ids()),
                               "test_runs": len(guard.test_ids)},
                   "methods": {}}
    for step in (_table3, _table4, _table12, _table15, _table16, _table17, _table18_19,
                 _table_memory):
        t = time.time()
        step(ctx)
        timings[step.__name__.lstrip("_")] = time.time() - t
    timings["total"] = time.time() - t0
    ctx.summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    dest = out / "evaluation"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "summary.json").write_text(json.dumps(ctx.summary, indent=1, default=_json_default))
    print(f"[evaluate] wrote {results} and {dest / 'summary.json'} in {timings['total']:.0f} s",
          flush=True)
    return ctx.summary


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def main(argv: Sequence[str] | None = None) -> None:
    """Hydra entry point; ``--quick`` is accepted as a shorthand for ``quick=true``."""
    run_hydra("evaluate", COMMAND, argv,
              lambda cfg, command, _: run_evaluation(cfg, command=command))
