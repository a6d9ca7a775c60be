"""The whole CPU pipeline from one command: corpus → labels → DYNAMICS-MAE → TEViD → calibration.

    python -m experiments.pipeline                 # or: make pipeline
    python -m experiments.pipeline pretrain.epochs=2 finetune.epochs=2 ship=false

Every stage is resumable and skipped when its output exists: the corpus (``experiments.factory``)
and its labels (``experiments.label``) live next to each other under ``root``; model checkpoints
under ``out``. Only *train*-split runs reach pretraining and fine-tuning; *val* runs are used for
calibration (temperature, abstention, class thresholds at 5 % false alarms on healthy runs) and
the reported validation metrics; *test* runs are never read here. The calibrated DYNAMICS-MAE
variant is written to ``out/tevid_mae/default`` and, with ``ship=true``, copied into
``tevid_hpo/checkpoints/default.*``, with the corpus hash, split hash, configs and date in its JSON.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from core_models.calibration import (RunPredictions, calibrate, false_alarm_rate, has_evidence,
                                     withhold)
from core_models.clips import ClipDataset
from core_models.mae import DynamicsMAE
from core_models.memory import select_memory
from core_models.telemetry import NUM_FEATURES
from core_models.tevid import TEViD
from core_models.train import (
    FinetuneConfig,
    PretrainConfig,
    finetune,
    predict,
    pretrain,
    seed_everything,
)
from data_factory.labelers import RunLabel, frame_event_labels
from data_factory.labels import HEALTHY, KNOWN_LABELS, sets_operating_points
from data_factory.split import cell_sets
from data_factory.store import RunStore
from tevid_hpo.diagnostician import DEFAULT_CHECKPOINT, Diagnostician

CONF = Path(__file__).resolve().parent / "conf"


def corpus_hash(root: Path) -> str:
    """Hash of the corpus index (run ids and their recorded outcomes)."""
    index = pd.read_csv(root / "index.csv").sort_values("run_id")
    return hashlib.sha256(index.to_csv(index=False).encode()).hexdigest()[:16]


def split_hash(cells: Sequence[str] = ("default",)) -> str:
    """Hash of the split specification the corpus was built from: its cell sets
    (:data:`data_factory.split.CELL_SETS`, ``cells`` in the configs).

    Example:
        >>> split_hash() == split_hash(["default"]) != split_hash(["default", "diversity"])
        True
    """
    specs = cell_sets(cells)
    text = repr(specs[0]) if len(specs) == 1 else repr(tuple(specs))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_labels(root: Path) -> dict[str, RunLabel]:
    """RunLabels from ``labels.csv`` (written by ``experiments.label``)."""
    table = pd.read_csv(root / "labels.csv")

    def opt(v: Any) -> int | None:
        return None if pd.isna(v) else int(v)

    return {r.run_id: RunLabel(r.label, opt(r.onset), opt(r.fire_time), opt(r.onset_epoch),
                               opt(r.fire_epoch)) for r in table.itertuples()}


def labelled_runs(store: RunStore, labels: dict[str, RunLabel], split: str):
    """Yield ``(run_id, run)`` for the labelled runs of ``split`` that have frames."""
    for run_id in store.list():
        if not run_id.startswith(f"{split}-") or run_id not in labels:
            continue
        run = store.load(run_id)
        if run.meta.get("split") != split or run.meta.get("n_frames", 0) == 0:
            continue
        yield run_id, run


def split_runs(store: RunStore, labels: dict[str, RunLabel], split: str):
    """Runs of one split with their per-frame event labels."""
    runs, events = [], []
    for run_id, run in labelled_runs(store, labels, split):
        runs.append(run)
        events.append(frame_event_labels(labels[run_id], run.frames.steps))
    return runs, events


_C = TypeVar("_C")


def training_config(cls: type[_C], values: DictConfig, device: str, seed: int) -> _C:
    """A ``PretrainConfig`` / ``FinetuneConfig`` from a YAML section, keeping only the fields the
    dataclass has (``progress`` and friends pass through, pipeline-only keys are dropped).

    Example:
        >>> from omegaconf import OmegaConf
        >>> from core_models.train import FinetuneConfig
        >>> ft = training_config(FinetuneConfig, OmegaConf.create({"epochs": 2, "ship": True}),
        ...                      "cpu", seed=3)
        >>> ft.epochs, ft.seed
        (2, 3)
    """
    known = {f.name for f in fields(cls)}
    kw = {k: v for k, v in OmegaConf.to_container(values).items() if k in known}
    return cls(**kw, device=device, seed=seed)


def stream_logits(model: TEViD, runs, events, window: int, device: str, burn_in: int = 0
                  ) -> list[tuple[np.ndarray, str, list]]:
    """Per run: evidence logits of every streaming window (those before the burn-in withheld,
    ``-inf``; 0: the whole window), the run label, per-frame labels."""
    out = []
    for run, ev in zip(runs, events):
        ds = ClipDataset([run], [ev], window=window, stride=1, telemetry=bool(model.telemetry))
        pred = predict(model, ds, batch_size=64, device=device, temperature=1.0)
        out.append((withhold(pred["logits"], burn_in or window), run_label_of(ev), ev))
    return out


def transfer_runs(source: str | None, profile: Any, part: str = "all"
                  ) -> list[tuple[Any, np.ndarray, bool]]:
    """The held-out-factor validation runs (issue 24, point 4): the recorded external-dev runs
    as ``[(run, per-frame event labels, healthy reference)]``
    (:func:`experiments.external.transfer.dev_streams`; never external-test). ``source``
    ``None`` or ``"none"``: no transfer set. ``part``: only the runs of that external-dev part
    (:mod:`experiments.external.folds`; ``"all"``: every run given; ``pool`` adds the
    external-train pool's runs, e.g. ``written+pool``). Missing recordings, or recordings of another frame
    geometry than ``profile``'s, are said, not fatal: record them with
    ``python -m experiments.external --half dev``."""
    if source in (None, "none"):
        return []
    from experiments.external.folds import in_part, uses_pool
    from experiments.external.transfer import dev_streams

    pool = {"pool": True} if uses_pool(part) else {}   # the external-train pool's runs too
    if source == "external-dev":   # the recordings of the current frame / capture code
        dev = dev_streams(**pool)
    else:                          # one recordings directory, e.g. made before a code change
        path = Path(source).expanduser()
        dev = dev_streams(root=path.parent, key=path.name, **pool)
    if part != "all":
        dev = [d for d in dev if in_part(d[0].run_id, part)]
    if not dev:
        print("transfer: no external-dev recordings found (python -m experiments.external "
              "--half dev records them); choosing on factory val only")
        return []
    shape = tuple(dev[0][0].frames.tensor.shape[1:])
    if shape != (profile.in_chans, profile.frame_size, profile.frame_size):
        print(f"transfer: the external-dev recordings have frames {shape}, profile "
              f"{profile.name!r} reads other ones (record them with this profile); choosing on "
              "factory val only")
        return []
    return dev


def run_label_of(events: np.ndarray) -> str:
    """A run's label is the last event label it reaches (Healthy runs stay Healthy)."""
    return str(events[-1]) if len(events) else KNOWN_LABELS[0]


def intervention_of(run: Any) -> str | None:
    """The factory intervention injected into a stored run (``None`` without factory metadata)."""
    return ((getattr(run, "meta", None) or {}).get("intervention") or {}).get("kind")


def reference_mask(runs, streams) -> list[bool]:
    """Which val runs may set operating points
    (:func:`data_factory.labels.sets_operating_points`)."""
    return [sets_operating_points(label, intervention_of(run))
            for run, (_, label, _) in zip(runs, streams)]


def validation_metrics(model: TEViD, streams, calibration, reference: list[bool] | None = None
                       ) -> dict[str, float]:
    """Window accuracy on known classes, event-time AUPRC of the remembered diagnoses (what the
    run memory was chosen by) and the alert false-alarm rate on healthy val runs: on the healthy
    references (``reference``, what calibration budgets) and on every run the rules label
    Healthy."""
    probs_all, labels_all = [], []
    plain, preds = [], []
    for logits, label, ev in streams:
        shown = has_evidence(logits)          # the withheld burn-in makes no claim to score
        logits, ev = logits[shown], np.asarray(ev)[shown]
        p = RunPredictions.from_logits(logits, label, calibration.temperature)
        plain.append(p)
        preds.append(p.remembered(calibration.memory, sustain=calibration.consecutive))
        probs_all.append(p.probs)
        labels_all.append(ev)
    probs = np.concatenate(probs_all)
    labels = np.concatenate(labels_all)
    # The same measurement the window was chosen by, at the chosen window.
    try:
        _, by_window = select_memory([(p.probs, ev != HEALTHY)
                                      for p, ev in zip(plain, labels_all)],
                                     grid=(calibration.memory,), sustain=calibration.consecutive)
        auprc = by_window[calibration.memory]
    except ValueError:            # no anomalous or no healthy val step
        auprc = float("nan")
    known = np.isin(labels, KNOWN_LABELS)
    idx = np.array([KNOWN_LABELS.index(x) for x in labels[known]])
    acc = float((probs[known].argmax(1) == idx).mean()) if known.any() else float("nan")
    def far(runs: list[RunPredictions]) -> float:
        return round(float(false_alarm_rate(runs, calibration.tau_c, tau_u=calibration.tau_u,
                                            k=calibration.consecutive)), 4)

    ref = [p for p, keep in zip(preds, reference or [True] * len(preds)) if keep]
    return {"val_window_accuracy": round(acc, 4), "val_event_auprc": round(auprc, 4),
            "val_healthy_far": far(ref),
            "val_labelled_healthy_far": far(preds), "val_runs": len(streams),
            "val_windows": int(len(labels))}


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) every stage; returns a summary."""
    root, out = Path(cfg.root).expanduser(), Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cells = cfg.get("cells", ["default"])   # the corpus's cell sets (conf/factory.yaml)
    timings: dict[str, float] = {}
    # A stage whose output was already complete is skipped; its time is the one of the run that
    # produced it (from the previous summary), so the table says what the artefacts cost.
    previous = _previous_timings(out)
    reused: list[str] = []

    def stage_time(key: str, started: float, skipped: bool) -> None:
        if not skipped:
            timings[key] = time.time() - started
        elif key in previous:           # a skipped stage with no record of its cost is left out
            timings[key] = previous[key]
            reused.append(key)

    t0 = time.time()
    if not (root / "index.csv").exists():
        from experiments.factory import build_corpus

        factory_cfg = OmegaConf.load(CONF / "factory.yaml")
        factory_cfg.root = str(root)
        factory_cfg.cells = cells
        build_corpus(factory_cfg)
        timings["corpus_s"] = time.time() - t0
    if not (root / "labels.csv").exists():
        from experiments.label import label_corpus

        t = time.time()
        label_corpus(root, workers=cfg.label_workers, cells=cells)
        timings["label_s"] = time.time() - t
    else:
        stage_time("label_s", t0, skipped=True)
    store = RunStore(root)
    labels = load_labels(root)
    train_runs, train_events = split_runs(store, labels, "train")
    val_runs, val_events = split_runs(store, labels, "val")
    if not train_runs or not val_runs:
        raise RuntimeError(f"need train and val runs under {root}; found {len(train_runs)} / {len(val_runs)}")
    seed_everything(cfg.seed)
    # telemetry=true: DYNAMICS-MAE pretrains with the telemetry tokens, the shipped tevid_mae
    # reads them, and the ablations add frames-only A+G and scalars-only rows (Table 12).
    telemetry = NUM_FEATURES if cfg.get("telemetry", False) else 0
    mae = DynamicsMAE(cfg.profile, telemetry=telemetry)
    window = mae.profile.window if hasattr(mae.profile, "window") else 10
    print(f"{len(train_runs)} train runs, {len(val_runs)} val runs, window {window}")

    t = time.time()
    pre_ds = ClipDataset(train_runs, None, window=window, stride=cfg.clips.pretrain_stride,
                         min_frames=min(cfg.get("burn_in_grid") or [cfg.burn_in or window]),
                         telemetry=bool(telemetry))
    pre_cfg = training_config(PretrainConfig, cfg.pretrain, cfg.device, cfg.seed)
    pre = pretrain(mae, pre_ds, pre_cfg, out / ("mae_telemetry" if telemetry else "mae"))
    stage_time("pretrain_s", t, skipped=pre.resumed_from >= pre.steps)

    # Windows before the burn-in are never diagnosed (core_models.calibration.withhold): the
    # model does not learn to read them, neither while pretraining nor while fine-tuning.
    grid = [int(b) for b in cfg.get("burn_in_grid") or ()]
    burn_in = min(grid) if grid else (cfg.burn_in or window)
    ft_runs, ft_events = list(train_runs), list(train_events)
    extra = cfg.get("finetune_extra") or "none"
    if extra != "none":   # user-style runs join the fine-tuning clips (attempts row 17)
        # the head has no Unknown class: runs of the novel faults stay out
        users = [(r, ev) for r, ev, _ in transfer_runs(cfg.get("transfer", "external-dev"), mae.profile, extra)
                 if all(str(x) in KNOWN_LABELS for x in ev)]
        repeat = int(cfg.get("finetune_extra_repeat", 1))
        ft_runs += [r for r, _ in users] * repeat
        ft_events += [ev for _, ev in users] * repeat
        print(f"fine-tuning also on {len(users)} external-dev runs ({extra}), x{repeat}")
    ft_ds = ClipDataset(ft_runs, ft_events, window=window, stride=cfg.clips.finetune_stride,
                        min_frames=burn_in)
    ft_tele = ClipDataset(ft_runs, ft_events, window=window, stride=cfg.clips.finetune_stride,
                          min_frames=burn_in, telemetry=True) if telemetry else ft_ds
    print("fine-tuning clips per label:", {KNOWN_LABELS[k] if k >= 0 else "Unknown": v
                                          for k, v in ft_ds.label_counts().items()})
    # name -> (initialise from DYNAMICS-MAE, input channels, telemetry features); Table 3's
    # scratch row and Table 12's ablations are optional extra fine-tunes. A: act, G: grad,
    # A+G: tevid_mae (tevid_frames when tevid_mae reads telemetry), A+G+scalars: tevid_mae with
    # telemetry, scalars only: tevid_scalars. Every row starts from the one DYNAMICS-MAE.
    variants = {"tevid_mae": (True, "both", telemetry)}
    if cfg.scratch:
        variants["tevid_scratch"] = (False, "both", telemetry)
    if cfg.get("ablations", False):
        variants |= {"tevid_act": (True, "act", 0), "tevid_grad": (True, "grad", 0)}
        if telemetry:
            variants |= {"tevid_frames": (True, "both", 0),
                         "tevid_scalars": (True, "none", telemetry)}
    dev = transfer_runs(cfg.get("transfer", "external-dev"), mae.profile,   # read once
                        cfg.get("transfer_part", "all"))
    summary: dict[str, Any] = {"corpus_hash": corpus_hash(root), "split_hash": split_hash(cells),
                               "train_runs": len(train_runs), "val_runs": len(val_runs),
                               "pretrain_final_loss": pre.history[-1]["loss"] if pre.history else None}
    for name, (from_mae, channels, n_tele) in variants.items():
        t = time.time()
        seed_everything(cfg.seed)
        model = TEViD(cfg.profile, channels=channels, telemetry=n_tele)
        if from_mae:
            model.load_mae_encoder(mae)
        ft_cfg = training_config(FinetuneConfig, cfg.finetune, cfg.device, cfg.seed)
        result = finetune(model, ft_tele if n_tele else ft_ds, ft_cfg, out / name)
        # With a burn-in grid the streams stay whole: calibrate() withholds each candidate.
        streams = stream_logits(model, val_runs, val_events, window, cfg.device,
                                1 if grid else burn_in)
        clip_logits = np.concatenate([s[0] for s in streams])
        clip_labels = np.concatenate([[KNOWN_LABELS.index(x) if x in KNOWN_LABELS else -1 for x in s[2]]
                                      for s in streams])
        # Operating points are budgeted on healthy references only (see reference_mask).
        reference = reference_mask(val_runs, streams)
        # Choose on transfer: the external-dev runs (user-written models, recipes, data) join
        # the memory / burn-in choice and keep the false-alarm budget on their own.
        xfer = stream_logits(model, [r for r, _, _ in dev], [ev for _, ev, _ in dev], window,
                             cfg.device, 1 if grid else burn_in)
        xfer_ref = [ref for _, _, ref in dev]
        # The run memory is chosen on every val run's event labels (event-time AUPRC, what the
        # evaluation measures); the alert thresholds then on the remembered diagnoses.
        calibration = calibrate(clip_logits, clip_labels,
                                [(s[0], s[1]) for s, keep in zip(streams, reference) if keep],
                                target_far=cfg.target_far,
                                memory_runs=[(s[0], np.asarray(s[2]) != HEALTHY)
                                             for s in streams + xfer],
                                memory_grid=list(cfg.memory_grid), burn_in=cfg.burn_in,
                                burn_in_grid=grid, k=int(cfg.get("consecutive", 3)),
                                budget_groups=[[(s[0], s[1]) for s, keep in zip(xfer, xfer_ref)
                                                if keep]],
                                tau_u=cfg.get("tau_u"))
        if grid:
            streams = [(withhold(z, calibration.burn_in), label, ev) for z, label, ev in streams]
            xfer = [(withhold(z, calibration.burn_in), label, ev) for z, label, ev in xfer]
        metrics = validation_metrics(model, streams, calibration, reference)
        if xfer:
            metrics |= {f"external_dev_{k[4:]}": v for k, v in
                        validation_metrics(model, xfer, calibration, xfer_ref).items()}
        diag = Diagnostician(model, calibration, device="cpu")
        path = diag.save_pretrained(
            out / name / "default", corpus_hash=summary["corpus_hash"], split_hash=summary["split_hash"],
            variant=name, val_metrics=metrics, train_runs=len(train_runs),
            pretrain_config=OmegaConf.to_container(cfg.pretrain) if from_mae else None,
            finetune_config=OmegaConf.to_container(cfg.finetune), finetune_history=result.history,
            produced_by="python -m experiments.pipeline")
        stage_time(f"{name}_s", t, skipped=result.resumed_from >= result.steps)
        summary[name] = {"checkpoint": str(path), **metrics, **calibration.to_dict()}
        print(name, json.dumps(summary[name], indent=1))
    if cfg.ship:
        DEFAULT_CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(out / "tevid_mae" / f"default{suffix}", DEFAULT_CHECKPOINT.with_suffix(suffix))
        summary["shipped"] = str(DEFAULT_CHECKPOINT.with_suffix(".safetensors"))
    timings["total_s"] = sum(timings.values()) if reused else time.time() - t0
    summary["timings"] = {k: round(v, 1) for k, v in timings.items()}
    summary["reused_stages"] = reused
    (out / "pipeline_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if cfg.get("write_results", True) and cfg.ship:
        from experiments.report import write_section

        overrides = " ".join(_hydra_overrides())
        write_section("shipped-checkpoint", pipeline_section(summary, cfg),
                      command=f"python -m experiments.pipeline {overrides}".strip(), seed=cfg.seed)
    print(json.dumps(summary["timings"]))
    return summary


def _previous_timings(out: Path) -> dict[str, float]:
    """Stage timings of the last pipeline run writing to ``out`` (empty when there is none)."""
    path = out / "pipeline_summary.json"
    if not path.is_file():
        return {}
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).get("timings", {}).items()}
    except (ValueError, AttributeError):
        return {}


def _hydra_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job (none outside ``hydra.main``)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def pipeline_section(summary: dict[str, Any], cfg: DictConfig) -> str:
    """The ``shipped-checkpoint`` section of ``docs/results.md`` from a pipeline summary."""
    lines = [
        "## Shipped checkpoint and pipeline time (model issue; target: whole pipeline ≤ 60 min)", "",
        f"`tevid_hpo/checkpoints/default.*` is the calibrated DYNAMICS-MAE variant of this run: TEViD "
        f"({cfg.profile} profile) trained on the {summary['train_runs']} train-split runs of corpus "
        f"`{summary['corpus_hash']}` (split `{summary['split_hash']}`), calibrated on its "
        f"{summary['val_runs']} val-split runs. Schedule: MAE {cfg.pretrain.epochs} epochs on windows at stride "
        f"{cfg.clips.pretrain_stride}, TEViD {cfg.finetune.epochs} epochs at stride "
        f"{cfg.clips.finetune_stride}.", "",
        "| stage | seconds |", "|---|---|",
        *[f"| {k}{' *' if k in summary.get('reused_stages', []) else ''} | {v} |"
          for k, v in summary["timings"].items()], "",
        *(["`*` this run found the stage complete and reused it; the time is that of the run that "
           "produced it (total = sum of the stages). This run recalibrated and re-shipped.", ""]
          if summary.get("reused_stages") else []),
    ]
    variants = [v for v in ("tevid_mae", "tevid_scratch", "tevid_act", "tevid_grad", "tevid_frames",
                            "tevid_scalars") if v in summary]
    lines.append("| validation metric | " + " | ".join(variants) + " |")
    lines.append("|---|" + "---|" * len(variants))
    rows = [("window accuracy on known classes", "val_window_accuracy", "{:.3f}"),
            ("healthy-reference val runs with any alert (target ≤ 0.05)", "val_healthy_far", "{:.3f}"),
            ("every val run labelled Healthy: share with an alert", "val_labelled_healthy_far", "{:.3f}"),
            ("event-time AUPRC of the remembered diagnoses", "val_event_auprc", "{:.3f}"),
            ("external-dev healthy references with any alert", "external_dev_healthy_far", "{:.3f}"),
            ("external-dev event-time AUPRC", "external_dev_event_auprc", "{:.3f}"),
            ("temperature", "temperature", "{:.3f}"), ("tau_u", "tau_u", "{:.2f}"),
            ("run memory window (chosen on val + external-dev; 0 = none)", "memory", "{}"),
            ("burn-in (real frames before a verdict)", "burn_in", "{}"),
            ("an alert needs this many consecutive confident diagnoses", "consecutive", "{}")]
    for title, key, fmt in rows:
        # Summaries written before a metric existed show "–" for it.
        lines.append(f"| {title} | " + " | ".join(
            fmt.format(summary[v][key]) if key in summary[v] else "–" for v in variants) + " |")
    lines.append("| tau_c | " + " | ".join(", ".join(f"{c} {t:.2f}" for c, t in summary[v]["tau_c"].items())
                                           for v in variants) + " |")
    lines += ["", "Validation numbers (the split used for calibration), not held-out results; "
              "the test split is evaluated by `make evaluate`."]
    return "\n".join(lines)


def main() -> None:
    import hydra

    @hydra.main(config_path=str(CONF), config_name="pipeline", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        run_pipeline(cfg)

    _main()


if __name__ == "__main__":
    main()
