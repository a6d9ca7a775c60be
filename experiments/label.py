"""Label a corpus with the Appendix A rules and measure how well labels match the interventions.

    python -m experiments.label [--root ~/.cache/tevid-hpo/corpus] [--workers 2] [--no-write]
                                [--cells default diversity]

Steps: floors per data set (Table 10 analogue) and the Lyapunov margin are chosen from the
*healthy-intervention reference runs* (floors from every split's reference runs of that data set,
the margin from training-split reference runs only); every run is labelled under the default
rules and the Table 7/8 variants; ``labels.csv`` / ``labels.jsonl`` go next to the corpus; the
agreement matrix (intended intervention × assigned label), per-family agreement and variant
sensitivity go to ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from data_factory.labelers import (
    VARIANTS,
    LabelConfig,
    choose_floors,
    choose_lyap_margin,
    label_run,
)
from data_factory.labels import CONCEPT_BIAS, FORGETTING, HEALTHY, INSTABILITY, OVERFITTING, UNKNOWN
from data_factory.split import CELL_SETS, Cell, SplitSpec, cell_sets
from data_factory.store import RunStore

DEFAULT_ROOT = Path(os.environ.get("TEVID_CACHE", Path.home() / ".cache" / "tevid-hpo")) / "corpus"

#: the label each intervention is meant to produce
INTENDED: dict[str, str] = {
    "healthy": HEALTHY, "overfitting": OVERFITTING, "instability": INSTABILITY,
    "forgetting": FORGETTING, "concept_bias": CONCEPT_BIAS, "label_corruption": UNKNOWN,
    "optimizer_state": UNKNOWN, "loader_stall": UNKNOWN, "augmentation_drift": UNKNOWN,
    "gradient_clipping": UNKNOWN,
}


#: Where App. A's literal rules misfire on short, small-batch runs that fit their data (see
#: docs/labeling.md); the "paper_literal" variant in the sensitivity table undoes all four.
CORPUS_RULES: dict[str, object] = {
    "spike_min_rise": 0.5,             # late-run noise around a ~0 loss is not a spike
    "spike_skip_task_switch": True,    # a task switch's loss jump is the switch, not instability
    "overfit_gap_spread": "robust_diff",  # the fitting transient is not "fluctuation"
    "mk_prewhitening": "tfpw",         # a steady rise is a trend, not autocorrelation to remove
}


def _cell_of(run: Any) -> tuple[str, Cell]:
    meta = run.meta
    cell = Cell(meta.get("arch"), meta.get("dataset"), meta.get("optimizer"))
    return str(meta.get("split")), cell


def reference_config(store: RunStore, run_ids: list[str], base: LabelConfig | None = None,
                     anchor: SplitSpec | None = None) -> LabelConfig:
    """The default rules with floors and Lyapunov margin chosen from healthy reference runs.

    With ``anchor`` (the corpus's first cell set), runs of the cells the other registered cell
    sets (:data:`~data_factory.split.CELL_SETS`) add to it never choose the margin or the floor
    of a pair the other runs have; they set floors only for their own new pairs. Extending a
    corpus by such a set then relabels no run already in it.
    """
    base = base or LabelConfig()
    later: set[tuple[str, Cell]] = set()
    if anchor is not None:
        later = set().union(*(spec.pairs() for spec in CELL_SETS.values())) - anchor.pairs()
    runs = (store.load(r) for r in run_ids)
    everything = [r for r in runs if r.meta["intervention"]["kind"] == "healthy"]
    healthy = [r for r in everything if _cell_of(r) not in later]
    # 80 % of the median healthy run: Table 10's floors sit well below typical healthy results.
    floors_of = partial(choose_floors, quantile=0.5, fraction=0.8, by="arch_dataset")
    floors = floors_of(healthy)
    new_pairs = [r for r in everything
                 if f"{r.meta.get('arch')}/{r.meta.get('dataset')}" not in floors]
    if new_pairs:
        floors = {**floors, **floors_of(new_pairs)}
    train_healthy = [r for r in healthy if r.meta.get("split") == "train"]
    margin = choose_lyap_margin(train_healthy, base) if train_healthy else base.lyap_margin
    return replace(base, floors=floors, lyap_margin=max(base.lyap_margin, margin), **CORPUS_RULES)


def _label_one(run_id: str, root: str, configs: dict[str, LabelConfig]) -> dict[str, Any]:
    run = RunStore(root).load(run_id)
    out: dict[str, Any] = {"run_id": run_id, "split": run.meta.get("split"),
                           "intervention": run.meta["intervention"]["kind"],
                           "arch": run.meta.get("arch"), "dataset": run.meta.get("dataset"),
                           "optimizer": run.meta.get("optimizer")}
    for name, cfg in configs.items():
        lab = label_run(run, cfg)
        if name == "default":
            out.update(label=lab.label, onset=lab.onset, fire_time=lab.fire_time,
                       onset_epoch=lab.onset_epoch, fire_epoch=lab.fire_epoch, reason=lab.reason,
                       rule=lab.evidence.get("rule"), evidence=lab.to_dict().get("evidence"))
        else:
            out[f"label:{name}"] = lab.label
    return out


def label_corpus(root: str | Path = DEFAULT_ROOT, workers: int = 1, variants: bool = True,
                 cells: Sequence[str] = ("default",)) -> tuple[pd.DataFrame, LabelConfig]:
    """Label every run under ``root``; returns the label table and the default configuration.

    ``cells`` names the corpus's cell sets (conf/factory.yaml). The first one anchors the
    reference runs (:func:`reference_config`): the cells every other registered set adds to it
    count as added later whether or not ``cells`` names them, so labelling an extended corpus
    with the default ``cells`` still relabels nothing.
    """
    store = RunStore(root)
    run_ids = store.list()
    if not run_ids:
        raise FileNotFoundError(f"no runs under {root}; generate them with `python -m experiments.factory`")
    default = reference_config(store, run_ids, anchor=cell_sets(cells)[0])
    configs = {"default": default}
    if variants:
        for name, cfg in VARIANTS.items():
            if name != "default":
                configs[name] = replace(cfg, floors=default.floors, lyap_margin=default.lyap_margin,
                                        **CORPUS_RULES)
        configs["paper_literal"] = replace(LabelConfig(), floors=default.floors,
                                           lyap_margin=default.lyap_margin)
    fn = partial(_label_one, root=str(store.root), configs=configs)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(tqdm(pool.map(fn, run_ids, chunksize=4), total=len(run_ids), desc="label"))
    else:
        rows = [fn(r) for r in tqdm(run_ids, desc="label")]
    table = pd.DataFrame(rows)
    with open(store.root / "labels.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=str) + "\n")
    table.drop(columns=["evidence"]).to_csv(store.root / "labels.csv", index=False)
    (store.root / "label_config.json").write_text(json.dumps(
        {"lyap_margin": default.lyap_margin,
         "floors": {k: str(v) for k, v in (default.floors or {}).items()}}, indent=1))
    return table, default


def agreement(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Intended intervention × assigned label counts, and per-intervention agreement."""
    matrix = pd.crosstab(table["intervention"], table["label"])
    hit = table.apply(lambda r: r["label"] == INTENDED[r["intervention"]], axis=1)
    return matrix, hit.groupby(table["intervention"]).mean()


def sensitivity(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant: fraction of runs whose label differs from the default, and agreement."""
    rows = []
    for col in [c for c in table.columns if c.startswith("label:")]:
        intended = table["intervention"].map(INTENDED)
        rows.append({"variant": col.split(":", 1)[1],
                     "changed vs default": (table[col] != table["label"]).mean(),
                     "agreement with intent": (table[col] == intended).mean()})
    rows.insert(0, {"variant": "default", "changed vs default": 0.0,
                    "agreement with intent": (table["label"] == table["intervention"].map(INTENDED)).mean()})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-variants", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="leave docs/results.md alone")
    parser.add_argument("--cells", nargs="+", default=["default"],
                        help="the corpus's cell sets (data_factory.split.CELL_SETS); the first "
                             "one chooses the floors and the Lyapunov margin")
    args = parser.parse_args(argv)
    table, cfg = label_corpus(args.root, workers=args.workers, variants=not args.no_variants,
                              cells=args.cells)
    matrix, per_family = agreement(table)
    sens = sensitivity(table)
    print(matrix.to_string(), "\n")
    print(per_family.round(3).to_string(), "\n")
    print(sens.round(3).to_string(index=False))
    if not args.no_write:
        from experiments.report import write_section

        floors = ", ".join(f"{k}: {v}" for k, v in (cfg.floors or {}).items())
        body = "\n".join([
            "## Label agreement (labeler issue)", "",
            f"{len(table)} runs labelled by the Appendix A rules. Floors (from healthy reference runs): "
            f"{floors}. Lyapunov margin (largest window lower bound of healthy train runs): "
            f"{cfg.lyap_margin:.4f}.", "",
            "Intended intervention (rows) × assigned label (columns):", "",
            matrix.to_markdown(), "",
            "Agreement with the intended label per intervention (target ≥ 0.80 for every known family):",
            "", per_family.rename("agreement").round(3).to_frame().to_markdown(), "",
            "Sensitivity to the Table 7/8 variants:", "", sens.round(3).to_markdown(index=False),
        ])
        write_section("label-agreement", body, command="python -m experiments.label",
                      root=args.root)
    return table


if __name__ == "__main__":
    main()
