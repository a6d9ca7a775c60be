"""Tables 18–19: diagnostic counts and the Appendix I cost per 100 test runs at the frozen
5 %-FAR and validation cost-optimal operating points.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from core_models.metrics import evaluate_alerts
from experiments.evaluate.context import _CI_NOTE, _ci_dict, _Context, _fmt, _markdown, _num, _order
from experiments.evaluate.methods import operating_point_runs


def _table18_19(ctx: _Context) -> None:
    k = int(ctx.cfg.consecutive)
    rows: list[tuple[float, dict[str, Any]]] = []
    nums: dict[str, dict[str, Any]] = {}
    for m in _order(ctx):
        vt, a, n = m.vacuity_threshold, m.alerts, len(m.test)
        row: dict[str, Any] = {"Method": m.display}
        entry: dict[str, Any] = {}
        if a is not None and m.far_threshold is not None:
            cost = ctx.ci(partial(ctx.cost.expected_cost, threshold=m.far_threshold, per=100.0,
                                  consecutive=k, vacuity_threshold=vt), m.test)
            row.update({"N_FA /100": _num(100.0 * a.n_false_alarms / n, 1),
                        "N_MD /100": _num(100.0 * a.n_missed / n, 1),
                        "Avg. lead (epochs)": _num(float(a.leads.mean()) if a.leads.size
                                                   else float("nan"), 2),
                        f"Cost /100 at {ctx.cfg.far:.0%} FAR": _fmt(cost, 1)})
            entry.update(n_fa=a.n_false_alarms, n_md=a.n_missed, n_runs=n,
                         avg_lead=float(a.leads.mean()) if a.leads.size else None,
                         cost_far=_ci_dict(cost))
        else:
            row.update({"N_FA /100": "N/A", "N_MD /100": "N/A", "Avg. lead (epochs)": "N/A",
                        f"Cost /100 at {ctx.cfg.far:.0%} FAR": "N/A"})
        op = m.cost_point
        if op is not None:
            cost_opt = ctx.ci(partial(ctx.cost.expected_cost, threshold=op.threshold, per=100.0,
                                      consecutive=k, vacuity_threshold=vt), m.test)
            s = evaluate_alerts(m.test, op.threshold, consecutive=k, vacuity_threshold=vt)
            row.update({"Cost /100 at val cost-optimal τ": _fmt(cost_opt, 1),
                        "(N_FA, N_MD) /100 there": f"({_num(100.0 * s.n_false_alarms / n, 1)}, "
                                                   f"{_num(100.0 * s.n_missed / n, 1)})"})
            entry.update(cost_optimal=_ci_dict(cost_opt), cost_threshold=op.threshold,
                         val_cost_per_run=op.cost)
        est = (entry.get("cost_far") or {}).get("estimate")
        rows.append((float(est) if est is not None and math.isfinite(est) else math.inf, row))
        nums[m.name] = entry
    ctx.summary["table18_19"] = nums
    # Cheapest first; the sort is stable, so ties keep the Table 3 order.
    rows.sort(key=lambda kr: kr[0])
    c = ctx.cost
    alert_all = [m for m in ctx.methods.values() if (op := m.cost_point) is not None
                 and op.n_missed == 0 and op.far == 1.0]
    degenerate = ""
    if alert_all:
        val = operating_point_runs(alert_all[0].val)
        share = sum(r.is_anomalous for r in val) / len(val)
        degenerate = (
            f" For {len(alert_all)} of {len(ctx.methods)} methods the validation optimum "
            "alerts on every validation run (no miss, every healthy run a false alarm): with "
            f"{share:.0%} of those runs anomalous, a miss costing {c.c_md / c.c_fa:g} false "
            "alarms and every early alert earning lead, alerting on everything is cheapest, so "
            "that column says more about the cost model on this mix than about the methods.")
    body = "\n".join([
        "## Tables 18–19 analogue — diagnostic counts and Appendix I cost per 100 test runs", "",
        _markdown([r for _, r in rows]), "",
        f"Cost = C_FA·N_FA + C_MD·N_MD + C_Lead·Σ lead with (C_FA, C_MD, C_Lead) = "
        f"({c.c_fa:g}, {c.c_md:g}, {c.c_lead:g}) (`tevid_hpo.cost.CostModel.expected_cost`, "
        "per 100 test runs; lower is better; leads vs the rule firing time, detections without "
        "one add no lead term). Two frozen operating points, both chosen on validation runs: the "
        f"{ctx.cfg.far:.0%}-FAR threshold of Table 3 (FAR per healthy run, so N_FA per 100 runs "
        "depends on the healthy share of the test split) and the threshold that minimises the "
        "cost on validation (`CostModel.best_threshold`). Sorted by cost at the FAR threshold."
        + degenerate + " " + _CI_NOTE])
    ctx.write("eval-table18-19", body)
