"""Transfer probes: cheap checks of why TEViD falls short on the held-out test cells.

    python -m experiments.transfer_probe --checkpoint ~/.cache/tevid-hpo/models/tevid_mae/default
    python -m experiments.transfer_probe --frames first_frame      # fine-tune a variant, 6 epochs
    python -m experiments.transfer_probe --augment layout
    python -m experiments.transfer_probe --fit-on train+val       # 12 cells, same clip count
    python -m experiments.transfer_probe --write-results           # table of every stored probe

The evaluation issue's test cells share no architecture, data set or optimizer with training,
while the validation cells only recombine seen ones; TEViD's known-class accuracy drops from
0.75 on val to about 0.5 on test. A probe changes one thing about what the model sees, fine-tunes
TEViD from scratch exactly as ``experiments.pipeline`` does (its ``finetune`` settings, train
windows at stride 2, seed 0) and measures the same quantities on the val and the test runs:

* **AUPRC**: anomaly vs healthy per step, score ``1 − p_Healthy`` (temperature 1, no
  calibration), micro over the steps of every run — Table 3's event-time AUPRC without the
  checkpoint's temperature;
* **known-class accuracy**: argmax over the steps whose event label is a known class;
* **Unknown AUROC** of four scores (novel-anomaly steps vs every other step): EDL vacuity,
  ``1 − max p``, "anomalous but no known anomaly" ``(1 − p_Healthy) − max_k p_k``, and the
  Mahalanobis distance of the [CLS] embedding to the nearest known-class mean (class means and a
  Ledoit–Wolf shared covariance fitted on train windows at stride 4).

Probes (one switch each):

* ``--frames first_frame``: each frame minus the run's first frame, per pixel — the stored frames
  are normalised per channel only, so every architecture's fixed spatial layout stays visible;
  this asks whether the model keys on that layout. Causal (the first frame is known from step 0).
* ``--augment layout``: while fine-tuning, every clip gets one random permutation of its 8×8
  patches (p = 0.5), random flips and a ±20 % per-channel gain, the same for all its frames — a
  domain-generalisation augmentation that keeps each patch's dynamics but no fixed layout.

* ``--fit-on train+val``: fine-tune on the 12 train and val cells instead of the 8 train cells,
  at window stride 3 instead of 2 (the same number of clips): does TEViD transfer better when it
  has seen more cells? Its val numbers are training numbers and the table says so.

Probe results are diagnostics measured on the test split, so choosing a pipeline change by them
is selection on test: ``--write-results`` lists every probe run, never the best one only, and
the val columns say whether validation would have made the same choice.

Example:
    >>> import torch
    >>> clip = torch.arange(2 * 6 * 16 * 16, dtype=torch.float32).reshape(2, 6, 16, 16)
    >>> out = layout_augment(clip, torch.Generator().manual_seed(0), patch=8)
    >>> out.shape, bool(torch.equal(first_frame_reference(clip)[0], torch.zeros(6, 16, 16)))
    (torch.Size([2, 6, 16, 16]), True)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.covariance import LedoitWolf
from sklearn.metrics import average_precision_score, roc_auc_score
from torch.utils.data import DataLoader, Dataset

from core_models.clips import ClipDataset
from core_models.edl import evidential_output
from core_models.tevid import TEViD
from core_models.train import FinetuneConfig, finetune, seed_everything
from data_factory.labels import KNOWN_LABELS
from data_factory.store import RunStore
from experiments.pipeline import CONF, intervention_of, load_labels, split_runs, training_config

CACHE = Path.home() / ".cache" / "tevid-hpo"
COMMAND = "python -m experiments.transfer_probe"


def first_frame_reference(frames: torch.Tensor, clip: float = 8.0) -> torch.Tensor:
    """Frames ``N×6×S×S`` minus the run's first frame, per pixel, clipped to ``±clip``."""
    x = frames.float()
    return (x - x[:1]).clamp(-clip, clip)


def layout_augment(clip: torch.Tensor, gen: torch.Generator, patch: int = 8) -> torch.Tensor:
    """One clip ``W×C×S×S`` with a random patch permutation (p = 0.5), random flips and a ±20 %
    per-channel gain, all shared by its frames so each patch keeps its dynamics."""
    w, c, s, _ = clip.shape
    n = s // patch
    if torch.rand((), generator=gen) < 0.5:
        grid = clip.reshape(w, c, n, patch, n, patch).permute(0, 1, 2, 4, 3, 5)
        grid = grid.reshape(w, c, n * n, patch, patch)[:, :, torch.randperm(n * n, generator=gen)]
        clip = grid.reshape(w, c, n, n, patch, patch).permute(0, 1, 2, 4, 3, 5).reshape(w, c, s, s)
    for dim in (-1, -2):
        if torch.rand((), generator=gen) < 0.5:
            clip = clip.flip(dim)
    return clip * (1 + 0.2 * (2 * torch.rand(1, c, 1, 1, generator=gen) - 1))


class _Augmented(Dataset):
    def __init__(self, base: ClipDataset, seed: int, patch: int) -> None:
        self.base, self.seed, self.patch, self.draws = base, seed, patch, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        clip, label = self.base[i]
        self.draws += 1   # a fresh draw every epoch, reproducible from the seed
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.draws)
        return layout_augment(clip, gen, self.patch), label


def _with_frames(runs: Sequence[Any], frames: str) -> list[Any]:
    if frames == "stored":
        return list(runs)
    return [SimpleNamespace(frames=SimpleNamespace(tensor=first_frame_reference(r.frames.tensor),
                                                   steps=r.frames.steps), meta=r.meta)
            for r in runs]


@torch.no_grad()
def _outputs(model: TEViD, runs: Sequence[Any], events: Sequence[np.ndarray], stride: int
             ) -> dict[str, np.ndarray]:
    """Per window: [CLS] embedding, probabilities, vacuity, label name (temperature 1)."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"emb": [], "probs": [], "vacuity": [], "truth": [],
                                          "family": []}
    window = model.profile.window
    for run, ev in zip(runs, events):
        ds = ClipDataset([run], [ev], window=window, stride=stride)
        for clips, _ in DataLoader(ds, batch_size=128):
            emb = model.embed(clips)
            out = evidential_output(model.head(emb), 1.0)
            parts["emb"].append(emb.numpy())
            parts["probs"].append(out.probs.numpy())
            parts["vacuity"].append(out.vacuity.numpy())
        parts["truth"].append(np.asarray(ev).astype(str)[[e for _, e in ds.index]])
        parts["family"].append(np.full(len(ds), str(intervention_of(run))))
    return {k: np.concatenate(v) for k, v in parts.items()}


def probe_metrics(out: dict[str, np.ndarray], means: np.ndarray, precision: np.ndarray
                  ) -> dict[str, float]:
    """AUPRC, known-class accuracy, mean vacuity and the four Unknown AUROCs of one split."""
    truth, probs = out["truth"], out["probs"]
    known = np.isin(truth, KNOWN_LABELS)
    novel = truth == "Unknown"
    diff = out["emb"][:, None, :] - means[None]
    mahalanobis = np.einsum("nkd,de,nke->nk", diff, precision, diff).min(1)
    scores = {"vacuity": out["vacuity"], "1-max p": 1 - probs.max(1),
              "unknown anomaly": (1 - probs[:, 0]) - probs[:, 1:].max(1),
              "mahalanobis": mahalanobis}
    res = {"auprc": float(average_precision_score(truth != KNOWN_LABELS[0], 1 - probs[:, 0])),
           "known_acc": float((np.asarray(KNOWN_LABELS)[probs.argmax(1)] == truth)[known].mean()),
           "mean_vacuity": float(out["vacuity"].mean()), "steps": int(len(truth))}
    healthy = truth == KNOWN_LABELS[0]
    for label in sorted(set(truth) - {KNOWN_LABELS[0]}) if healthy.any() else []:
        # Which anomalies the score misses: each label's steps against the healthy ones.
        mask = healthy | (truth == label)
        res[f"auprc_vs_healthy[{label}]"] = float(
            average_precision_score(truth[mask] == label, 1 - probs[mask, 0]))
        res[f"share_vs_healthy[{label}]"] = float((truth[mask] == label).mean())
    if novel.any() and not novel.all():
        res |= {f"unknown_auroc[{k}]": float(roc_auc_score(novel, s)) for k, s in scores.items()}
        # Per injected family: its Unknown steps against every step that is not Unknown.
        for fam in sorted(set(out["family"][novel])):
            mask = ~novel | (out["family"] == fam)
            res[f"vacuity_auroc_family[{fam}]"] = float(
                roc_auc_score(novel[mask], out["vacuity"][mask]))
    return res


def run_probe(frames: str = "stored", augment: str = "none", epochs: int = 6,
              checkpoint: str | Path | None = None, root: Path = CACHE / "corpus",
              out: Path = CACHE / "probes", seed: int = 0, profile: str = "cpu",
              finetune_overrides: dict[str, Any] | None = None, fit_on: str = "train"
              ) -> dict[str, Any]:
    """Fine-tune (or load) one variant and measure it on val and test; saves ``out/NAME.json``.

    ``fit_on="train+val"`` fine-tunes on the 12 train and val cells instead of the 8 train cells,
    at a window stride of 3 instead of 2 so the number of clips (and of optimiser steps) stays
    the same: more cells, not more data. Its val columns are then training numbers and are
    reported as such.

    ``profile`` and ``finetune_overrides`` (keys of ``conf/pipeline.yaml``'s ``finetune``) exist
    for tiny test corpora; the documented probes use the pipeline's settings unchanged.
    """
    if fit_on not in ("train", "train+val"):
        raise ValueError(f"fit_on must be 'train' or 'train+val', got {fit_on!r}")
    if checkpoint is not None and fit_on != "train":
        raise ValueError("fit_on applies to fine-tuned probes; a checkpoint was trained as it was")
    store, labels = RunStore(root), load_labels(root)
    splits = {s: split_runs(store, labels, s) for s in ("train", "val", "test")}
    splits = {s: (_with_frames(runs, frames), ev) for s, (runs, ev) in splits.items()}
    fit = splits["train"]
    if fit_on == "train+val":
        fit = (fit[0] + splits["val"][0], fit[1] + splits["val"][1])
    t0 = time.time()
    if checkpoint is not None:
        from tevid_hpo.diagnostician import Diagnostician

        model = Diagnostician.from_pretrained(checkpoint).model
        name = f"checkpoint-{Path(checkpoint).parent.name}"
    else:
        name = f"scratch-{frames}-{augment}-{epochs}ep" + ("-trainval" if fit_on != "train" else "")
        seed_everything(seed)
        model = TEViD(profile)
        cfg = OmegaConf.load(CONF / "pipeline.yaml")
        cfg.finetune.merge_with(finetune_overrides or {})
        stride = cfg.clips.finetune_stride * len(fit[0]) / len(splits["train"][0])
        ds: Dataset = ClipDataset(*fit, window=model.profile.window, stride=round(stride))
        if augment == "layout":
            ds = _Augmented(ds, seed, model.profile.patch_size)
        ft = training_config(FinetuneConfig, cfg.finetune, "cpu", seed)
        ft.epochs = epochs
        finetune(model, ds, ft, out / name)
    train = _outputs(model, *fit, stride=4)
    keep = np.isin(train["truth"], KNOWN_LABELS)
    cls = np.array([KNOWN_LABELS.index(t) for t in train["truth"][keep]])
    present = sorted(set(cls.tolist()))   # a class without train windows has no mean
    means = np.stack([train["emb"][keep][cls == k].mean(0) for k in present])
    cls = np.searchsorted(present, cls)
    precision = LedoitWolf().fit(train["emb"][keep] - means[cls]).precision_
    result = {"name": name, "frames": frames, "augment": augment, "fit_on": fit_on,
              "epochs": None if checkpoint else epochs,
              "checkpoint": None if checkpoint is None else str(checkpoint),
              **{s: probe_metrics(_outputs(model, *splits[s], stride=1), means, precision)
                 for s in ("val", "test")},
              "seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d")}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


def probes_section(out: Path) -> str:
    """Markdown table of every probe stored under ``out``."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    head = ("| probe | val AUPRC | test AUPRC | val / test known-class acc. | test mean vacuity "
            "| test Unknown AUROC: vacuity / 1−max p / unknown anomaly / Mahalanobis |\n"
            "|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        v, t = r["val"], r["test"]
        fitted = r.get("fit_on", "train") != "train"   # val was trained on: no held-out number
        val_auprc, val_acc = ("fitted", "fitted") if fitted else (f"{v['auprc']:.3f}",
                                                                  f"{v['known_acc']:.3f}")
        unk = " / ".join(f"{t.get(f'unknown_auroc[{k}]', float('nan')):.3f}" for k in
                         ("vacuity", "1-max p", "unknown anomaly", "mahalanobis"))
        lines.append(f"| {r['name']} | {val_auprc} | {t['auprc']:.3f} | "
                     f"{val_acc} / {t['known_acc']:.3f} | {t['mean_vacuity']:.3f} | {unk} |")
    families = sorted({k[len("vacuity_auroc_family["):-1] for r in rows for k in r["test"]
                       if k.startswith("vacuity_auroc_family[")})
    by_family = ""
    if families:
        fam_lines = ["| probe | " + " | ".join(families) + " |",
                     "|---|" + "---|" * len(families)]
        for r in rows:
            cells = [r["test"].get(f"vacuity_auroc_family[{f}]") for f in families]
            if any(c is not None for c in cells):
                fam_lines.append(f"| {r['name']} | " + " | ".join(
                    "–" if c is None else f"{c:.3f}" for c in cells) + " |")
        by_family = ("\n\nTest vacuity AUROC per injected family (that family's Unknown steps "
                     "against every step that is not Unknown; `instability` / `overfitting` "
                     "are known-family injections the rules left below the floor, hence "
                     "labelled Unknown):\n\n" + "\n".join(fam_lines))
    labels = sorted({k[len("auprc_vs_healthy["):-1] for r in rows for k in r["test"]
                     if k.startswith("auprc_vs_healthy[")})
    by_label = ""
    if labels:
        lab_lines = ["| probe | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for r in rows:
            cells = [(r["test"].get(f"auprc_vs_healthy[{x}]"),
                      r["test"].get(f"share_vs_healthy[{x}]")) for x in labels]
            if any(c is not None for c, _ in cells):
                lab_lines.append(f"| {r['name']} | " + " | ".join(
                    "–" if c is None else f"{c:.3f} ({share:.2f})" for c, share in cells) + " |")
        by_label = ("\n\nTest AUPRC of `1 − p_Healthy` per anomalous event label (that label's "
                    "steps against the healthy steps only; in brackets that label's share of those steps, "
                    "which is what a random score gets):"
                    "\n\n" + "\n".join(lab_lines))
    return ("## Transfer probes (evaluation issue): what the held-out cells do to TEViD\n\n"
            "Each row: `python -m experiments.transfer_probe` with the switches its name shows "
            "(`scratch-FRAMES-AUGMENT-Nep` fine-tunes from scratch; `checkpoint-X` evaluates "
            "`~/.cache/tevid-hpo/models/X/default` unchanged). Temperature 1 everywhere, so the "
            "checkpoint rows differ slightly from Table 3; see the module docstring for the "
            "metrics. Every probe ever stored is listed.\n\n" + "\n".join(lines) + by_label
            + by_family)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", choices=["stored", "first_frame"], default="stored")
    parser.add_argument("--augment", choices=["none", "layout"], default="none")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--fit-on", choices=["train", "train+val"], default="train",
                        help="train+val: 12 cells instead of 8, same number of clips")
    parser.add_argument("--checkpoint", default=None, help="evaluate this checkpoint instead")
    parser.add_argument("--root", type=Path, default=CACHE / "corpus")
    parser.add_argument("--out", type=Path, default=CACHE / "probes")
    parser.add_argument("--write-results", action="store_true",
                        help="only write the table of stored probes to docs/results.md")
    args = parser.parse_args(argv)
    if args.write_results:
        from experiments.report import write_section

        write_section("transfer-probes", probes_section(args.out), command=COMMAND, seed=0)
        return
    run_probe(args.frames, args.augment, args.epochs, args.checkpoint, args.root, args.out,
              fit_on=args.fit_on)


if __name__ == "__main__":
    main()
