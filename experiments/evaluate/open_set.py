"""The open-set tables: Table 16 (novel families → Unknown, abstention schemes) and Table 17
(what TEViD says about novel families, run-level confusion).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from core_models.metrics import (
    ANOMALOUS_KNOWN,
    augrc,
    risk_coverage_curve,
    selective_predictions,
    unknown_auroc,
)
from data_factory.labels import HEALTHY, LABELS, UNKNOWN
from experiments.evaluate.context import _CI_NOTE, _ci_dict, _Context, _fmt, _markdown, _num, _order
from experiments.evaluate.figures import _plot_risk_coverage
from experiments.evaluate.methods import MethodEval
from experiments.evaluate.records import run_level_label, step_labels


def _open_set_rows(ctx: _Context, m: MethodEval) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                          dict[str, Any]]:
    test = m.test
    step_auroc = ctx.ci(partial(unknown_auroc, level="step"), test)
    run_auroc = ctx.ci(partial(unknown_auroc, level="run"), test)
    anom_step = ctx.ci(partial(unknown_auroc, level="step", negatives="known_anomalies"), test)
    anom_run = ctx.ci(partial(unknown_auroc, level="run", negatives="known_anomalies"), test)
    ok_all, conf_all = selective_predictions(test, "vacuity")
    try:
        ok, conf = selective_predictions(test, "vacuity", labels=ANOMALOUS_KNOWN)
    except ValueError:
        ok = conf = np.zeros(0)
    full = float(1.0 - ok.mean()) if ok.size else float("nan")
    at80 = risk_coverage_curve(ok, conf).risk_at_coverage(0.8) if ok.size else float("nan")
    disc = {"Model": m.display, "AUROC Unknown vs known (steps)": _fmt(step_auroc),
            "AUROC (runs, max vacuity)": _fmt(run_auroc),
            "AUROC Unknown vs known anomalies (steps)": _fmt(anom_step),
            "… (runs)": _fmt(anom_run),
            "AUGRC (all steps)": _num(augrc(ok_all, conf_all), 4),
            "Error on known anomalies, full coverage": _num(full),
            "… at 80 % coverage": _num(at80)}
    schemes: list[tuple[str, float | None]] = [
        ("calibrated τ_u (checkpoint)", m.vacuity_threshold),
        ("90th percentile of val known-anomaly vacuity", m.abstention_q)]
    srows = []
    for title, tau in schemes:
        if tau is None or not ok.size:
            srows.append({"Model": m.display, "Scheme": title, "τ_u": "N/A",
                          "Coverage (known anomalies)": "N/A", "Selective error (known)": "N/A"})
            continue
        accept = (1.0 - conf) <= tau + 1e-12
        err = float(1.0 - ok[accept].mean()) if accept.any() else float("nan")
        srows.append({"Model": m.display, "Scheme": title, "τ_u": _num(tau),
                      "Coverage (known anomalies)": _num(float(accept.mean())),
                      "Selective error (known)": _num(err)})
    nums = {"auroc_step": _ci_dict(step_auroc), "auroc_run": _ci_dict(run_auroc),
            "auroc_step_vs_known_anomalies": _ci_dict(anom_step),
            "auroc_run_vs_known_anomalies": _ci_dict(anom_run),
            "augrc": augrc(ok_all, conf_all), "error_full": full, "error_at_80": at80,
            "schemes": srows}
    return disc, srows, nums


def _table16(ctx: _Context) -> None:
    tevids = [m for m in _order(ctx) if m.is_tevid]
    disc, schemes, nums = [], [], {}
    for m in tevids:
        d, s, n = _open_set_rows(ctx, m)
        disc.append(d)
        schemes.extend(s)
        nums[m.name] = n
    ctx.summary["table16"] = nums
    rc = _plot_risk_coverage(ctx, ctx.figures / "risk_coverage.png")
    n_unknown = sum(r.label == UNKNOWN for r in tevids[0].test) if tevids else 0
    body = "\n".join([
        "## Table 16 analogue — novel anomaly families → Unknown, and abstention", "",
        (f"{n_unknown} test runs belong to novel families (label `Unknown`, never seen in "
        "training). AUROC scores vacuity: per step (positives: steps of a novel anomaly under "
        "way; negatives: all other steps) and per run (each run's largest vacuity). Appendix "
        "H's \"known vs. unknown anomalies\" keeps only anomalies as negatives (steps of a "
        "known anomalous class, runs labelled with one): the score must tell a novel failure "
        "from a known one, not from healthy training. Errors on "
        "known anomalies count argmax ≠ event label on steps whose truth is a known anomalous "
        "class; 80 % coverage keeps the 80 % least vacuous of those steps. AUGRC: area under the "
        "generalized risk–coverage curve over all test steps (lower is better)."), "",
        _markdown(disc), "",
        ("Abstention schemes (Appendix H.1): the checkpoint's calibrated τ_u and the 90th "
        "percentile of vacuity on validation steps of known anomalies, both chosen on "
        "validation and applied to the test steps of known anomalies:"), "",
        _markdown(schemes), "", _CI_NOTE, "",
        f"![Risk–coverage, test steps]({ctx.figure_link(rc)})"])
    ctx.write("eval-table16", body)


def _table17(ctx: _Context) -> None:
    m = ctx.methods.get(str(ctx.cfg.open_set_method)) or ctx.methods["tevid_mae"]
    tau = m.vacuity_threshold
    cats = list(LABELS)
    novel = [r for r in m.test if r.label == UNKNOWN]
    rows = []
    for kind in sorted({str(r.meta.get("intervention")) for r in novel}):
        runs = [r for r in novel if str(r.meta.get("intervention")) == kind]
        labs = np.concatenate([step_labels(r, tau)[r.event_labels != HEALTHY] for r in runs])
        row: dict[str, Any] = {"True novel family": kind, "Runs": len(runs), "Steps": len(labs)}
        for c in cats:
            row[f"{c} %"] = _num(100.0 * float(np.mean(labs == c)), 1) if labs.size else "N/A"
        rows.append(row)
    truth = [r.label for r in m.test]
    pred = [run_level_label(r, tau) for r in m.test]
    confusion = pd.crosstab(pd.Categorical(truth, categories=cats),
                            pd.Categorical(pred, categories=cats), dropna=False,
                            rownames=["true \\ predicted"], colnames=[""])
    confusion = confusion.loc[[c for c in cats if c in truth]]
    ctx.summary["table17"] = {"novel": rows, "confusion": confusion.to_dict()}
    body = "\n".join([
        (f"## Table 17 analogue — what {m.display} says about novel families, and run-level "
        "confusion"), "",
        ("Per novel family: share of its diagnoses from the onset on, by diagnosed category "
        f"(argmax class, `Unknown` when vacuity > τ_u = {_num(tau)}):"), "",
        _markdown(rows) if rows else "_No novel-family run in the test split._", "",
        ("Run-level confusion matrix of every test run (counts): the predicted category is the "
        "most frequent diagnosis over the run's event window (from the onset on; the whole run "
        "for healthy runs):"), "", confusion.to_markdown(disable_numparse=True)])
    ctx.write("eval-table17", body)
