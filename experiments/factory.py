"""Generate the training-run corpus: every cell of the split × its intervention mix, as Ray tasks.

    python -m experiments.factory                       # the full corpus (~1,000 runs)
    python -m experiments.factory backend=local limit=10 root=/tmp/corpus   # a quick look

Resumable: runs already in the store are skipped, so rerunning the command after an interruption
finishes the corpus. A crashing run is recorded in ``failed.csv`` and does not stop the others.
The corpus index (``index.csv``) is rebuilt from the store's metadata at the end, and a summary
(runs per cell × intervention, runs/hour, run length, disk per run) goes to ``docs/results.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from data_factory.architectures import ARCHITECTURES
from data_factory.datasets import DATASETS
from data_factory.interventions import INTERVENTIONS
from data_factory.procedural import FAMILIES, family_of
from data_factory.runner import RunSpec, execute_run
from data_factory.split import DEFAULT_SPLIT, SplitSpec, cell_sets, check_factorial, merge_splits
from data_factory.store import RunStore, load_run

CONF = Path(__file__).resolve().parent / "conf"


def compatible(arch: str, dataset: str, intervention: str) -> bool:
    """Whether the runner can train ``arch`` on ``dataset`` under ``intervention``."""
    family = family_of(arch)
    a = FAMILIES[family] if family else ARCHITECTURES[arch].modality
    d = DATASETS[dataset].modality
    fits = a == d or (a == "tabular" and d == "image")
    return fits and d in INTERVENTIONS[intervention].modalities


def plan_corpus(split: SplitSpec | Sequence[SplitSpec] = DEFAULT_SPLIT,
                repeats: Mapping[str, int] | None = None,
                splits: Iterable[str] = ("train", "val", "test"), seed: int = 0,
                **run_kwargs: Any) -> list[RunSpec]:
    """Every run of the corpus, in a deterministic order (cells interleaved, so a ``limit`` or an
    interrupted build still covers every cell).

    ``split`` may be several cell sets (:func:`data_factory.split.cell_sets`): each is planned as
    its own block after the ones before it, with run seeds of its own, so adding a set to a corpus
    adds runs without changing a single run that is already there.

    Example:
        >>> specs = plan_corpus(repeats={"train": 1, "val": 1, "test": 1})
        >>> len({s.run_id for s in specs}) == len(specs), specs[0].split
        (True, 'train')
        >>> from data_factory.split import cell_sets
        >>> wide = plan_corpus(cell_sets(["default", "diversity"]), repeats={"train": 1})
        >>> [(s.run_id, s.seed) for s in wide[:3]] == [(s.run_id, s.seed) for s in
        ...     plan_corpus(repeats={"train": 1}, splits=["train", "val", "test"])[:3]]
        True
    """
    blocks = [split] if isinstance(split, SplitSpec) else list(split)
    check_factorial(merge_splits(blocks))
    repeats = dict(repeats or {"train": 3, "val": 3, "test": 2})
    specs: list[RunSpec] = []
    for name in splits:
        for block, spec in enumerate(blocks):
            per_block = []
            for rep in range(repeats.get(name, 0)):
                for kind, count in spec.mix.get(name, {}).items():
                    for k in range(count):
                        for cell in spec.cells(name):
                            if not compatible(cell.arch, cell.dataset, kind):
                                continue
                            run_id = (f"{name}-{cell.arch}-{cell.dataset}-{cell.optimizer}-{kind}"
                                      f"-r{rep}k{k}")
                            per_block.append(RunSpec(
                                run_id=run_id, split=name, arch=cell.arch, dataset=cell.dataset,
                                optimizer=cell.optimizer, intervention=kind,
                                # a block of 10,000 seeds per cell set and split
                                seed=seed * 100_000 + block * 10_000 + len(per_block),
                                **run_kwargs))
            if len(per_block) >= 10_000:
                raise ValueError(f"cell set {block} plans {len(per_block)} {name} runs; "
                                 "its seed block holds 10,000")
            specs.extend(per_block)
    duplicated = len(specs) - len({s.run_id for s in specs})
    if duplicated:
        raise ValueError(f"{duplicated} runs planned twice: a cell occurs in two cell sets")
    return specs


def _execute(spec: RunSpec, root: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # one run per core: parallelism comes from running many runs
    return execute_run(spec, RunStore(root))


def _run_local(specs: list[RunSpec], root: str, on_done) -> None:
    for spec in specs:
        on_done(_execute(spec, root))


def _run_ray(specs: list[RunSpec], root: str, on_done, address: str | None, num_cpus: int | None,
             temp_dir: str) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(num_cpus=num_cpus or os.cpu_count(), _temp_dir=temp_dir)
        ray.init(**kwargs)
    task = ray.remote(num_cpus=1, max_retries=0)(_execute)
    pending = [task.remote(spec, root) for spec in specs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            on_done(ray.get(ref))


def build_corpus(cfg: DictConfig | Mapping[str, Any]) -> pd.DataFrame:
    """Generate (or finish) the corpus described by ``cfg``; returns the index."""
    cfg = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
    root = Path(cfg.root).expanduser()
    store = RunStore(root)
    specs = plan_corpus(cell_sets(cfg.get("cells", ["default"])), repeats=dict(cfg.repeats),
                        splits=list(cfg.splits), seed=cfg.seed, **OmegaConf.to_container(cfg.run))
    if cfg.get("limit"):
        specs = specs[: int(cfg.limit)]
    existing = set(store.list())
    todo = [s for s in specs if s.run_id not in existing]
    print(f"corpus at {root}: {len(specs)} planned, {len(specs) - len(todo)} done, {len(todo)} to run")
    failed_path = root / "failed.csv"
    bar = tqdm(total=len(todo), desc="factory", unit="run")
    started = time.time()

    def on_done(row: dict[str, Any]) -> None:
        bar.update()
        bar.set_postfix(last=row["run_id"][-28:], status=row["status"])
        if row["status"] != "ok":
            frame = pd.DataFrame([{k: row.get(k) for k in ("run_id", "split", "arch", "dataset",
                                                          "optimizer", "intervention", "error")}])
            frame.to_csv(failed_path, mode="a", header=not failed_path.exists(), index=False)

    if todo:
        if cfg.backend == "ray":
            _run_ray(todo, str(root), on_done, cfg.ray.address, cfg.ray.num_cpus, cfg.ray.temp_dir)
        elif cfg.backend == "local":
            _run_local(todo, str(root), on_done)
        else:
            raise ValueError(f"backend must be 'ray' or 'local', got {cfg.backend!r}")
    bar.close()
    wall = time.time() - started
    index = corpus_index(store, {s.run_id for s in specs})
    index.to_csv(root / "index.csv", index=False)
    if todo:
        (root / "last_build.txt").write_text(f"{len(todo)} runs in {wall:.0f} s\n")
    print(summary_table(index).to_string())
    if cfg.get("write_results", False) and len(index):
        write_corpus_results(index, root, cfg, wall_seconds=wall if todo else None,
                             runs_built=len(todo))
    return index


def corpus_index(store: RunStore, run_ids: set[str] | None = None) -> pd.DataFrame:
    """One row per stored run, from its metadata (the store is the source of truth)."""
    rows = []
    for run_id in store.list():
        if run_ids is not None and run_id not in run_ids:
            continue
        run = load_run(store.root / run_id)
        m = run.meta
        iv = m.get("intervention", {})
        disk = sum(f.stat().st_size for f in run.path.iterdir())
        rows.append({"run_id": run_id, "split": m.get("split"), "arch": m.get("arch"),
                     "arch_family": m.get("arch_family"), "dataset": m.get("dataset"),
                     "optimizer": m.get("optimizer"), "modality": m.get("modality"),
                     "intervention": iv.get("kind"), "novel": iv.get("novel"),
                     "severity": iv.get("severity"), "start_step": iv.get("start_step"),
                     "variant": iv.get("variant"), "epochs": m.get("epochs_run"),
                     "steps": m.get("steps_run"), "n_frames": m.get("n_frames"),
                     "final_val_acc": m.get("final_val_acc"), "diverged_step": m.get("diverged_step"),
                     "seconds": m.get("seconds"), "disk_bytes": disk})
    return pd.DataFrame(rows)


def summary_table(index: pd.DataFrame) -> pd.DataFrame:
    """Runs per (split, cell) × intervention."""
    if index.empty:
        return index
    cell = index["arch"] + " / " + index["dataset"] + " / " + index["optimizer"]
    table = pd.crosstab([index["split"], cell.rename("cell")], index["intervention"], margins=True)
    return table


def write_corpus_results(index: pd.DataFrame, root: Path, cfg: DictConfig,
                         wall_seconds: float | None, runs_built: int | None = None,
                         note: str = "") -> None:
    from experiments.report import write_section

    figure = plot_interventions(index, root, Path(cfg.figures_dir))
    by_split = index.groupby("split").size().to_dict()
    runs_built = len(index) if runs_built is None else runs_built
    runs_per_hour = (runs_built / wall_seconds * 3600) if wall_seconds else None
    lines = [
        "## Factory corpus (data-factory issue)",
        "",
        f"{len(index)} runs ({', '.join(f'{k}: {v}' for k, v in sorted(by_split.items()))}); "
        f"mean {index['epochs'].mean():.1f} epochs, {index['steps'].mean():.0f} steps and "
        f"{index['n_frames'].mean():.1f} frames per run; "
        f"{index['disk_bytes'].mean() / 1e6:.2f} MB on disk per run; "
        + (f"{index['seconds'].mean():.1f} s of one core per run" if index["seconds"].notna().any()
           else "per-run seconds not recorded by this build")
        + (f"; {runs_per_hour:.0f} runs/hour ({runs_built} runs in {wall_seconds / 60:.1f} min wall)."
           if runs_per_hour else "."),
        *([note] if note else []),
        "",
        summary_table(index).to_markdown(),
        "",
        f"![one run per intervention]({Path(os.path.relpath(figure, Path('docs')))})",
    ]
    write_section("factory-corpus", "\n".join(lines), command="python -m experiments.factory",
                  seed=cfg.seed, repeats=dict(cfg.repeats), epochs=cfg.run.epochs)


def plot_interventions(index: pd.DataFrame, root: Path, out_dir: Path) -> Path:
    """One panel per intervention kind from a real run: step loss and per-epoch train/val loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in INTERVENTIONS if k in set(index["intervention"])]
    fig, axes = plt.subplots(2, (len(kinds) + 1) // 2, figsize=(3.2 * ((len(kinds) + 1) // 2), 5.6),
                             squeeze=False)
    for ax, kind in zip(axes.flat, kinds):
        rows = index[index["intervention"] == kind]
        # the most severe image run of the kind shows its signature best
        rows = rows.sort_values(["modality", "severity"], ascending=[True, False])
        run = load_run(root / rows.iloc[0]["run_id"])
        ep = run.epochs
        spe = run.meta["steps_per_epoch"]
        steps = run.steps
        ax.plot(steps["step"] / spe, np.clip(steps["loss"], 0, 20), lw=0.5, alpha=0.5, label="step loss")
        ax.plot(ep["epoch"] + 1, np.clip(ep["train_loss"], 0, 20), label="train loss")
        ax.plot(ep["epoch"] + 1, np.clip(ep["val_loss"], 0, 20), label="val loss")
        if "primary_acc" in ep:
            ax.plot(ep["epoch"] + 1, ep["primary_acc"], "--", label="primary acc")
        if kind == "concept_bias":
            ax.plot(ep["epoch"] + 1, ep["clean_acc"], "--", label="clean acc")
            ax.plot(ep["epoch"] + 1, ep["poisoned_acc"], ":", label="poisoned acc")
        start = run.meta["intervention"]["start_step"] / spe
        ax.axvline(start, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{kind}\n{run.meta['arch']}/{run.meta['dataset']}/{run.meta['optimizer']}", fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "interventions.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> None:
    import hydra

    @hydra.main(config_path=str(CONF), config_name="factory", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        build_corpus(cfg)

    _main()


if __name__ == "__main__":
    main()
