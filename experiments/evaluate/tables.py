"""The detection tables: Table 3 (every method on the test split), the run-memory table,
Table 4 (by held-out factor), Table 12 (channel ablation) and Table 15 (diagnoses cut before the
rule fires).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from core_models.metrics import (
    evaluate_alerts,
    event_time_auprc,
    event_time_auprc_by_label,
    macro_f1,
    median_lead,
    truncate_before_fire,
)
from data_factory.labels import HEALTHY, LABELS
from experiments.evaluate.context import (
    _CI_NOTE,
    _ci_dict,
    _Context,
    _fmt,
    _markdown,
    _num,
    _order,
    _test_mix,
)
from experiments.evaluate.figures import _plot_pr_curves
from experiments.evaluate.methods import MethodEval, reference_far
from experiments.evaluate.records import premature_detections


def _method_row(ctx: _Context, m: MethodEval) -> tuple[dict[str, Any], dict[str, Any]]:
    """Table 3's numbers for one method: (formatted row, JSON numbers)."""
    vt, k = m.vacuity_threshold, int(ctx.cfg.consecutive)
    auprc = ctx.ci(event_time_auprc, m.test)
    f1 = ctx.ci(partial(macro_f1, vacuity_threshold=vt), m.test) if m.has_classes else None
    lead = onset = strict = None
    a = m.alerts
    early = premature_detections(a, m.test) if a else frozenset()
    if m.far_threshold is not None:
        fire_lead = partial(median_lead, threshold=m.far_threshold, reference="fire",
                            consecutive=k, vacuity_threshold=vt)
        lead = ctx.ci(fire_lead, m.test)
        onset = ctx.ci(partial(median_lead, threshold=m.far_threshold, reference="onset",
                               consecutive=k, vacuity_threshold=vt), m.test)
        strict = ctx.ci(lambda rs: fire_lead([r for r in rs if r.run_id not in early]), m.test)
    row = {"Input": m.input_type, "Method": m.display,
           "Macro-F1 (known)": _fmt(f1) if m.has_classes else "N/A",
           "Event-time AUPRC": _fmt(auprc),
           "Median lead vs rule firing (epochs)": _fmt(lead, 2),
           "Median lead vs onset (epochs)": _fmt(onset, 2),
           "Detected / anomalous": f"{a.n_detected}/{a.n_anomalous}" if a else "N/A",
           "… of them before the fault began": str(len(early)) if a else "N/A",
           "Median lead vs firing without those": _fmt(strict, 2),
           "Test FAR: labelled / reference (val)":
               f"{_num(a.far)} / {_num(reference_far(a, m.test))} ({_num(m.val_far)})" if a else "N/A"}
    nums = {"display": m.display, "input": m.input_type, "auprc": _ci_dict(auprc),
            "macro_f1": _ci_dict(f1), "median_lead_fire": _ci_dict(lead),
            "median_lead_onset": _ci_dict(onset), "far_threshold": m.far_threshold,
            "val_far": m.val_far, "test_far": a.far if a else None,
            "test_reference_far": reference_far(a, m.test) if a else None,
            "detected": a.n_detected if a else None, "anomalous": a.n_anomalous if a else None,
            "premature": len(early) if a else None, "median_lead_fire_strict": _ci_dict(strict),
            "vacuity_threshold": vt, "notes": m.notes, "provenance": m.provenance}
    return row, nums


def _table3(ctx: _Context) -> None:
    rows = []
    for m in _order(ctx):
        row, nums = _method_row(ctx, m)
        rows.append(row)
        ctx.summary["methods"][m.name] = nums
    any_test = next(iter(ctx.methods.values())).test
    ctx.figures.mkdir(parents=True, exist_ok=True)
    pr = _plot_pr_curves(ctx, ctx.figures / "pr_curves.png")
    notes = [f"- {m.display}: {'; '.join(m.notes)}" for m in _order(ctx) if m.notes]
    notes += _paired_lines(ctx)
    foreign = [f"- {m.display}: checkpoint provenance not verified ({'; '.join(p)})"
               for m in _order(ctx) if (p := m.provenance.get("problems"))]
    body = "\n".join([
        "## Table 3 analogue — all methods on the held-out test split", "",
        (f"{len(any_test)} test runs ({_test_mix(any_test)}); architectures, data sets and "
        "optimizers all unseen in training (factorial split, `data_factory.split`)."), "",
        _markdown(rows), "",
        ("- **Event-time AUPRC**: anomaly (event label ≠ Healthy, novel `Unknown` included) vs "
        "healthy, micro over every capture step of every test run, score `1 − p_Healthy`."),
        ("- **Run memory**: every method's per-step diagnoses pass through the same causal run "
        "memory (`core_models.memory`: mean of the last `w` diagnoses, latched at the most "
        "anomalous so far), `w` chosen on validation per method; the section \"Run memory\" "
        "lists each `w` and the numbers without it."),
        (f"- **Lead at {ctx.cfg.far:.0%} FAR**: each method's alert threshold (3 consecutive "
        f"diagnoses with score ≥ τ; TEViD's abstained steps break a streak) is the lowest one "
        f"that alerts on at most {ctx.cfg.far:.0%} of the healthy **validation** runs; it is "
        "chosen on validation, frozen, and applied to the test runs. Healthy here means healthy "
        "by label *and* by intent: val runs the rules label Healthy although a fault was "
        "injected (sub-threshold overfitting, say) are left out of the budget "
        "(`experiments.evaluate.operating_point_runs`). The achieved test FAR is reported on "
        "every run labelled Healthy and on the healthy references, next to the validation FAR. Lead = rule firing epoch − alert epoch (positive = "
        "earlier than the Appendix A rule), median over detected anomalous runs; the onset "
        "column measures against the anomaly onset instead (negative: after the onset). Times "
        "are `step / steps_per_epoch`."),
        ("- **Before the fault began**: detections whose alert came before a mid-run fault "
        "started (`experiments.evaluate.premature_detections`: task switch, learning-rate jump "
        "or cycle, novel families that start mid-run); the run was still healthy, so the alert "
        "could not have seen the fault. Faults that act from the first step (small subset, "
        "shortcut, corrupted labels, extreme learning rate) never count. The last column is the "
        "median lead with those runs left out."),
        ("- **Macro-F1 (known)**: per step, argmax class (Unknown when TEViD abstains, "
        "vacuity > τ_u) vs event label, averaged over the anomalous known classes present; N/A "
        "for detectors without class probabilities."),
        "- " + _CI_NOTE, "- " + ctx.guard.summary(), *notes, *foreign, "",
        f"![Precision–recall curves, test steps]({ctx.figure_link(pr)})"])
    ctx.write("eval-table3", body)


def _paired_lines(ctx: _Context) -> list[str]:
    """Table 3's paired comparison: TEViD minus the best other method on test AUPRC."""
    tevid = ctx.methods.get("tevid_mae")
    others = [m for m in ctx.methods.values() if not m.is_tevid]
    if tevid is None or not others:
        return []
    best = max(others, key=lambda m: event_time_auprc(m.test))
    diff = ctx.paired(event_time_auprc, tevid, best)
    ctx.summary["paired_auprc_vs_best_baseline"] = {"baseline": best.name, **_ci_dict(diff)}
    return [(f"- **Paired difference to the best baseline**: event-time AUPRC of {tevid.display} "
             f"minus {best.display} (the other method with the highest test AUPRC), both on the "
             f"same run-level bootstrap resamples (`core_models.metrics.paired_bootstrap_ci`): "
             f"{_fmt(diff)}.")]


def _table_memory(ctx: _Context) -> None:
    """What the run memory does to every method: val-chosen window, AUPRC with and without."""
    rows, nums = [], {}
    for m in _order(ctx):
        raw = event_time_auprc(m.raw_test) if m.raw_test else float("nan")
        kept = event_time_auprc(m.test)
        val = m.memory_scores
        rows.append({"Method": m.display, "Window (val)": m.memory,
                     "Val AUPRC: none / window": (f"{_num(val.get(0))} / {_num(val.get(m.memory))}"
                                                  if val else "N/A"),
                     "Test AUPRC: none": _num(raw), "Test AUPRC: with memory": _num(kept),
                     "Δ test": f"{kept - raw:+.3f}"})
        nums[m.name] = {"window": m.memory, "val_auprc": {str(k): v for k, v in val.items()},
                        "test_auprc_none": raw, "test_auprc_memory": kept,
                        "test_by_label_none": event_time_auprc_by_label(m.raw_test or m.test),
                        "test_by_label_memory": event_time_auprc_by_label(m.test)}
    ctx.summary["memory"] = nums
    labels = [c for c in LABELS if any(c in n["test_by_label_memory"] for n in nums.values())]
    shares = {c: next(n["test_by_label_memory"][c][1] for n in nums.values()
                      if c in n["test_by_label_memory"]) for c in labels}
    by_label = [{"Method": m.display, **{
        f"{c} ({shares[c]:.2f})": " → ".join(_num(n[k][c][0]) if c in n[k] else "N/A"
                                          for k in ("test_by_label_none", "test_by_label_memory"))
        for c in labels}} for m in _order(ctx) for n in [nums[m.name]]]
    grid = ", ".join(str(w) for w in ctx.cfg.memory_grid)
    body = "\n".join([
        "## Run memory — every method with and without it", "",
        ("Every table above scores the diagnoses *after* the causal run memory of "
         "`core_models.memory`: the mean of the last `w` diagnoses, latched at the most anomalous "
         "mean so far (the event labels are states that last from their onset on). Each baseline's "
         f"`w` is the one of {{{grid}}} with the largest event-time AUPRC on the **validation** runs; "
         "TEViD's is its checkpoint's, chosen the same way by `experiments.pipeline` and applied "
         "by the streaming `Diagnostician` (`w = 0`: no memory). Test columns are point "
         "estimates; Table 3 has the intervals of the with-memory numbers."), "",
        _markdown(rows), "",
        ("Which anomalies each method finds: test event-time AUPRC of each anomalous event label's "
         "steps against the healthy steps only, without → with memory "
         "(`core_models.metrics.event_time_auprc_by_label`; in the header that label's share of "
         "those steps, what a random score gets)."), "",
        _markdown(by_label)])
    ctx.write("eval-memory", body)


def _table4(ctx: _Context) -> None:
    m = ctx.methods["tevid_mae"]
    vt, k = m.vacuity_threshold, int(ctx.cfg.consecutive)
    factors = [("Architecture", "arch"), ("Data set", "dataset"), ("Optimizer", "optimizer")]
    families = {p.meta.get("arch_family") for p in m.test}
    archs = {p.meta.get("arch") for p in m.test}
    if None not in families and len(families) < len(archs):
        factors.insert(0, ("Architecture family", "arch_family"))
    rows, nums = [], []
    for title, key in factors:
        for value in sorted({str(p.meta.get(key)) for p in m.test}):
            runs = [p for p in m.test if str(p.meta.get(key)) == value]
            auprc = ctx.ci(event_time_auprc, runs)
            lead = None
            far = float("nan")
            if m.far_threshold is not None:
                lead = ctx.ci(partial(median_lead, threshold=m.far_threshold, reference="fire",
                                      consecutive=k, vacuity_threshold=vt), runs)
                far = evaluate_alerts(runs, m.far_threshold, consecutive=k,
                                      vacuity_threshold=vt).far
            n_anom = sum(r.is_anomalous for r in runs)
            rows.append({"Factor": title, "Held-out value": value,
                         "Runs (anomalous)": f"{len(runs)} ({n_anom})",
                         "Event-time AUPRC": _fmt(auprc), "Median lead vs firing (epochs)":
                         _fmt(lead, 2), "Test FAR": _num(far)})
            nums.append({"factor": key, "value": value, "runs": len(runs), "anomalous": n_anom,
                         "auprc": _ci_dict(auprc), "median_lead_fire": _ci_dict(lead),
                         "far": far})
    ctx.summary["table4"] = nums
    body = "\n".join([
        f"## Table 4 analogue — {m.display} by held-out architecture, data set and optimizer", "",
        _markdown(rows), "",
        "Every slice is unseen in training and validation. The alert threshold is the one chosen "
        f"on validation for Table 3 ({ctx.cfg.far:.0%} FAR on healthy validation runs), not "
        "re-tuned per slice. N/A: the slice has no anomalous step or no detection. " + _CI_NOTE])
    ctx.write("eval-table4", body)


def _table12(ctx: _Context) -> None:
    # tevid_frames exists only when the pipeline ran with telemetry=true: tevid_mae then also
    # reads the training scalars (experiments/conf/pipeline.yaml).
    with_scalars = "tevid_frames" in ctx.methods
    variants = [("Activations-only (A)", "tevid_act"), ("Gradients-only (G)", "tevid_grad"),
                ("Activations+Gradients (A+G)", "tevid_frames" if with_scalars else "tevid_mae"),
                *([("A+G + training scalars", "tevid_mae"),
                   ("Training scalars only", "tevid_scalars")] if with_scalars else [])]
    rows, lines = [], []
    for title, name in variants:
        m = ctx.methods.get(name)
        if m is None:
            continue
        row, _ = _method_row(ctx, m)
        rows.append({"Input variant": title, "Checkpoint": name,
                     "Macro-F1 (known)": row["Macro-F1 (known)"],
                     "Event-time AUPRC": row["Event-time AUPRC"],
                     "Median lead vs firing (epochs)": row["Median lead vs rule firing (epochs)"]})
    absent = [n for n in ("tevid_act", "tevid_grad") if n in ctx.missing_variants]
    if absent:
        home = str(Path.home())
        paths = ", ".join(f"`{str(ctx.missing_variants[n]).replace(home, '~')}.safetensors`"
                          for n in absent)
        lines.append(
            f"**Not measured: no checkpoint at {paths}.** They are `TEViD(profile, "
            "channels=\"act\")` / `channels=\"grad\"` fine-tuned from the DYNAMICS-MAE encoder "
            "exactly like `tevid_mae` (same train runs, same calibration on val) and saved with "
            "`Diagnostician.save_pretrained(OUT/tevid_act/default, ...)`; `python -m "
            "experiments.pipeline ablations=true` trains them (skipping the stages already "
            "done). Once they exist, rerun "
            f"`{ctx.command}`.")
    full, scalars = ctx.methods.get("tevid_mae"), ctx.methods.get("tevid_scalars")
    if with_scalars and full is not None and scalars is not None:
        # Issue 24: what the frames add over the scalars alone, on the same resampled runs.
        vt = full.vacuity_threshold
        auprc = ctx.paired(event_time_auprc, full, scalars)
        f1 = ctx.paired(partial(macro_f1, vacuity_threshold=vt), full, scalars) \
            if vt == scalars.vacuity_threshold else None
        ctx.summary["frames_over_scalars"] = {"auprc": _ci_dict(auprc), "macro_f1": _ci_dict(f1)}
        lines.append("**What the frames add over the scalars alone** (A+G + training scalars "
                     "minus training scalars only, paired run-level bootstrap on the test runs, "
                     f"`core_models.metrics.paired_bootstrap_ci`): event-time AUPRC {_fmt(auprc)}"
                     + (f", macro-F1 (known) {_fmt(f1)}" if f1 is not None else "") + ".")
    # The A+G row alone is Table 3's TEViD row: print the table only when an ablation exists.
    table = [_markdown(rows), ""] if len(rows) > 1 else []
    body = "\n".join(["## Table 12 analogue — activations vs gradients (TEViD channel ablation)",
                      "", *table, *lines, "", "Same protocol as Table 3. " + _CI_NOTE])
    ctx.write("eval-table12", body)


def _table15(ctx: _Context) -> None:
    wanted = ctx.cfg.get("lead_delta_methods")
    if wanted is None:
        wanted = [n for n, m in ctx.methods.items() if m.is_tevid] + ["stats_gbdt",
                                                                       "stats_gbdt_curves",
                                                                       "curve_tcn"]
    deltas = [float(d) for d in ctx.cfg.lead_deltas]
    rows, nums = [], {}
    for name in wanted:
        m = ctx.methods.get(name)
        if m is None:
            continue
        # Only runs with a rule trigger time can be cut before it: Healthy runs stay whole and
        # novel runs without a firing time are left out (Tables 16-17 evaluate them).
        runs = [r for r in m.test if not r.is_anomalous or r.fire_epoch is not None]
        row: dict[str, Any] = {"Method": m.display,
                               "Untruncated": _fmt(ctx.ci(event_time_auprc, runs))}
        nums[name] = {}
        for d in deltas:
            cut = truncate_before_fire(runs, d)
            ci = ctx.ci(event_time_auprc, cut)
            pos = int(sum(np.sum(r.event_labels != HEALTHY) for r in cut))
            row[f"Δ = {d:g}"] = f"{_fmt(ci)} (n⁺={pos})"
            nums[name][f"{d:g}"] = {"auprc": _ci_dict(ci), "positive_steps": pos}
        rows.append(row)
    ctx.summary["table15"] = nums
    body = "\n".join([
        "## Table 15 analogue — event-time AUPRC when diagnoses stop Δ epochs before the rule fires",
        "", _markdown(rows), "",
        "Causal integrity (Appendix G.3): for every anomalous test run only the diagnoses at "
        "epochs ≤ fire epoch − Δ are kept (`core_models.metrics.truncate_before_fire`); a "
        "diagnosis at step t sees frames up to t only, so the inputs end Δ epochs before the "
        "labelling rule's first evidence. Healthy runs are kept whole; novel-family runs "
        "without a rule firing time are left out (the untruncated column uses the same runs, "
        "so it differs from Table 3). Δ = 0 already drops the steps after the rule fired. "
        "n⁺ = anomalous steps left. " + _CI_NOTE])
    ctx.write("eval-table15", body)
