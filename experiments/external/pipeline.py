"""The external suite end to end: record → truth → methods → tables (``run_external``).

Example:
    >>> from experiments.external.suite import SUITE
    >>> composition(SUITE).shape[0] > 10
    True
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from data_factory.store import Run
from experiments.evaluate import LeakageGuard
from experiments.external.methods import score_methods
from experiments.external.record import CACHE, record_suite, recording_id, store_for
from experiments.external.report import external_tables, plot_runs
from experiments.external.suite import DEV_HALF, POOL, POOL_HALF, SMOKE, SUITE, TEST_HALF, RunSpec
from experiments.external.truth import ExternalTruth, truth_of
from experiments.report import RESULTS, write_section

__all__ = ["COMMAND", "composition", "run_external"]

COMMAND = "python -m experiments.external"


def composition(specs: Sequence[RunSpec]) -> pd.DataFrame:
    """Runs per half × family × scenario kind, with the family's data and optimizers."""
    rows = [{"half": s.half, "family": s.family, "data": s.data, "optimizer": s.recipe.optimizer,
             "kind": s.scenario.kind} for s in specs]
    df = pd.DataFrame(rows)
    table = df.pivot_table(index=["half", "family"], columns="kind", values="data",
                           aggfunc="count", fill_value=0)
    facts = df.groupby(["half", "family"]).agg(
        data=("data", lambda x: ", ".join(sorted(set(x)))),
        optimizers=("optimizer", lambda x: ", ".join(sorted(set(x)))))
    return facts.join(table).reset_index()


def _truth_table(runs: dict[str, list[Run]], truths: dict[str, ExternalTruth]) -> str:
    rows = []
    for half, rs in runs.items():
        if not rs:      # a half not recorded / not asked for (--half)
            continue
        df = pd.DataFrame([{"kind": truths[r.run_id].kind, "positive": truths[r.run_id].positive,
                            "reference": truths[r.run_id].reference} for r in rs])
        for kind, g in df.groupby("kind", sort=False):
            rows.append({"half": half, "scenario": kind, "runs": len(g),
                         "anomaly happened": int(g.positive.sum()),
                         "healthy reference": int(g.reference.sum()),
                         "not counted (no visible effect / below floor)":
                             int((~g.positive & ~g.reference).sum())})
    return pd.DataFrame(rows).to_markdown(index=False) if rows else "_none_"


def _home(path: Path) -> str:
    """``path`` with the home directory written ``~`` (as a reader would type it)."""
    p = Path(path).expanduser()
    return str(p).replace(str(Path.home()), "~", 1) if p.is_relative_to(Path.home()) else str(p)


def _recordings(specs: Sequence[RunSpec], record: bool, workers: int, root: Path | None,
                key: str | None, log: Any) -> tuple[Any, dict[str, str]]:
    """The store holding ``specs``' recordings (recording what is missing when ``record``),
    and the runs that failed, each logged."""
    if record:
        store, errors = record_suite(specs, workers=workers, root=root, key=key)
    else:   # score what is recorded so far
        store, errors = store_for(root=root, key=key), {}
    for rid, err in errors.items():
        log(f"[external] run {rid} failed: {err}")
    return store, errors


def _record_pool(workers: int, root: Path | None, key: str | None, record: bool,
                 log: Any) -> dict[str, Any]:
    """Record the external-train pool (cached) and count its truth labels; nothing is scored —
    the pool is only trained on (``finetune_extra=pool``)."""
    t0 = time.time()
    store, errors = _recordings(POOL, record, workers, root, key, log)
    runs = [store.load(recording_id(s)) for s in POOL if recording_id(s) in store]
    truths = [truth_of(r) for r in runs if (r.path / "frames.safetensors").exists()]
    counted = sum(t.counted for t in truths)
    labels = pd.Series([t.label.label if t.counted else "not counted" for t in truths])
    labels = labels.value_counts().to_dict()
    log(f"[external] external-train pool: {len(runs)}/{len(POOL)} recorded, "
        f"{counted} counted: {labels}")
    return {"runs": len(runs), "counted": counted, "labels": labels, "failed": errors,
            "seconds": round(time.time() - t0, 1)}


def run_external(smoke: bool = False, workers: int = 2, n_resamples: int = 1000, seed: int = 0,
                 baselines: bool = True, results: Path | None = None, figures: Path | None = None,
                 root: Path | None = None, key: str | None = None, record: bool = True,
                 log: Any = print, half: str | None = None,
                 checkpoint: str | None = None, corpus: Path | None = None) -> dict[str, Any]:
    """Record (cached), label, score and report the suite (``smoke``: the short runs only; then
    nothing is written to ``docs/`` unless ``results`` is given; ``key``: score the recordings
    of that cache key instead of the current code's; ``half``: ``"dev"`` / ``"test"`` records
    that half only and scores it (``"test"`` with the stored external-dev runs, on which its
    thresholds are chosen); ``"train"`` records the external-train pool and counts its labels,
    nothing is scored; ``checkpoint``: the TEViD checkpoint scored offline, default the
    shipped one; with ``half`` nothing is written to ``docs/`` unless ``results`` is given;
    ``corpus``: the labelled factory corpus the trained baselines learn from, default
    :func:`~experiments.external.corpus.factory_corpus`'s full or quick one)."""
    t0 = time.time()
    if half in ("train", POOL_HALF):
        return _record_pool(workers, root, key, record, log)
    specs = scored = SMOKE if smoke else SUITE
    if half is not None:
        want = {"dev": DEV_HALF, "test": TEST_HALF}.get(half, half)
        specs = tuple(s for s in specs if s.half == want)
        # external-test is scored at thresholds chosen on the stored external-dev runs
        scored = specs if want == DEV_HALF else scored
    store, errors = _recordings(specs, record, workers, root, key, log)
    t_rec = time.time() - t0
    all_runs: dict[str, list[Run]] = {DEV_HALF: [], TEST_HALF: []}
    for s in scored:
        if recording_id(s) in store:
            all_runs[s.half].append(store.load(recording_id(s)))
    # a run the monitor could not watch (it turned itself off, e.g. a model with fewer than three
    # capturable layers) has no frames: reported, not scored
    unmonitored = {r.run_id: r.meta.get("monitor_error") or "no frames recorded"
                   for rs in all_runs.values() for r in rs if not (r.path / "frames.safetensors").exists()}
    all_runs = {h: [r for r in rs if r.run_id not in unmonitored] for h, rs in all_runs.items()}
    truths = {r.run_id: truth_of(r) for rs in all_runs.values() for r in rs}
    counted = {h: [r for r in rs if truths[r.run_id].counted] for h, rs in all_runs.items()}
    # built on every external-test recording: none may reach a fit or a threshold choice
    guard = LeakageGuard(all_runs[TEST_HALF], factors=())

    factory, corpus_kind, diag_model = None, "none", None
    if baselines:
        from data_factory.store import RunStore
        from experiments.external.corpus import factory_corpus
        from experiments.pipeline import load_labels, split_runs
        from tevid_hpo import Diagnostician

        croot, corpus_kind = factory_corpus(given=corpus)
        cstore, clabels = RunStore(croot), load_labels(croot)
        train, _ = split_runs(cstore, clabels, "train")
        val, _ = split_runs(cstore, clabels, "val")
        corpus_kind = f"{corpus_kind} ({len(train)} train / {len(val)} val runs)"
        factory = (train, val, clabels)
        diag_model = Diagnostician.from_pretrained(device="cpu").model
    t_score = time.time()
    from tevid_hpo import Diagnostician as _Diag

    diag = None if checkpoint is None else _Diag.from_pretrained(checkpoint, device="cpu")
    methods = score_methods(counted, truths, factory, guard, diag_model=diag_model, seed=seed,
                            log=log, diag=diag)
    guard.check()
    t_score = time.time() - t_score

    summary: dict[str, Any] = {
        "runs": {h: len(rs) for h, rs in all_runs.items()},
        "counted": {h: len(rs) for h, rs in counted.items()}, "errors": errors,
        "unmonitored": unmonitored,
        "corpus": corpus_kind, "cache": str(store.root), "seed": seed,
        "n_resamples": n_resamples, "leakage": {"uses": len(guard.uses),
                                                "test_runs": len(guard.test_ids)},
        "truth": {rid: {"label": t.label.label, "onset": t.label.onset, "kind": t.kind,
                        "positive": t.positive, "reference": t.reference, "why": t.why,
                        "appendix_a": t.appendix_a} for rid, t in truths.items()},
        "halves": {}}
    tables = {}
    for h in (DEV_HALF, TEST_HALF):
        if counted[h]:
            tables[h], summary["halves"][h] = external_tables(methods, h, counted[h], truths,
                                                             n_resamples, seed)
    summary["seconds"] = {"record": round(t_rec, 1), "score": round(t_score, 1),
                          "total": round(time.time() - t0, 1)}
    name = "summary" + ("-smoke" if smoke else "") + (f"-{half}" if half else "")
    if checkpoint is not None:   # one file per scored checkpoint: scoring another keeps this one
        summary["checkpoint"] = str(Path(checkpoint).expanduser().resolve())
        name += "-" + hashlib.sha256(summary["checkpoint"].encode()).hexdigest()[:8]
    out = (root or CACHE) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=str))

    if results is None and (smoke or half is not None):   # one half never rewrites docs/
        return summary
    results = results or RESULTS
    figures = figures or results.parent / "figures"
    half_of = {r.run_id: h for h, rs in counted.items() for r in rs}
    pick = [r for rs in counted.values() for r in rs]
    shown = []
    for want in ("healthy", "lr_jump", "lr_high", "overfit", "stall"):
        cand = [r for r in pick if truths[r.run_id].kind == want and r not in shown
                and (truths[r.run_id].positive or want == "healthy")]
        if cand:
            shown.append(cand[0])
    fig = plot_runs(shown, truths, methods, half_of, figures / "external_runs.png")
    command = COMMAND + (f" --corpus {_home(corpus)}" if corpus is not None else "")
    cfg = {"seed": seed, "n_resamples": n_resamples, "factory corpus": corpus_kind,
           "recordings": store.root.name}
    write_section("external-suite", "## External suite: composition and ground truth\n\n"
                  + composition(specs).to_markdown(index=False) + "\n\n"
                  + _truth_table(all_runs, truths) + "\n\n"
                  + "".join(f"Not scored — the monitor turned itself off on `{rid}`: {err}.\n\n"
                            for rid, err in unmonitored.items())
                  + f"![runs with their diagnoses](figures/{fig.name})", command, results,
                  **cfg)
    for h, t in tables.items():
        paired = f"{t['paired']}\n\n" if t.get("paired") else ""
        body = (f"## External suite, {h}\n\n### Every method\n\n{t['headline']}\n\n{paired}"
                f"### Per scenario\n\n{t['scenario']}\n\n### Per model family "
                f"(false alarms on healthy references · recall)\n\n{t['family']}\n\n"
                + guard.summary().replace("test split", "external-test half"))
        write_section(h, body, command, results, **cfg)
    return summary
