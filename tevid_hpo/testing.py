"""Testing and demo fixture: a small but real diagnostician trained in seconds (Healthy vs
Instability on digits runs).

Not a diagnostician to use on real runs. It lives in the package rather than under ``tests/``
because a user-facing command needs it: ``tevid-hpo demo`` (:mod:`tevid_hpo.optuna_demo`) trains
it when the shipped default checkpoint (``tevid_hpo/checkpoints/default.*``, produced by the full
factory pipeline) is not installed, and the runnable examples in ``docs/`` use it for the same
reason. The test suite uses it through ``tests/conftest.py``. It is trained on the same recipe as
:mod:`tevid_hpo.capture_demo` — :func:`~data_factory.architectures.small_cnn` on
:func:`~data_factory.datasets.digits` — with healthy runs (Adam, AdamW and SGD at sane learning
rates, with and without weight decay; :data:`DEMO_CORPUS` adds full-length runs on small,
memorised training subsets) and runs whose loss explodes (Adam at lr 0.1–10, SGD with momentum at
lr 20–100):

1. every run is captured with :class:`~data_factory.capture.StateCapture` at the ``tiny``
   profile's cadence and frame size, and its loss logged per step;
2. each capture step becomes one streaming clip, the last ``W`` frames left-padded with the
   first exactly as :class:`~tevid_hpo.diagnostician.Diagnostician` builds its window; a clip is
   labelled Instability once its run's loss has been non-finite or above ``3×`` its first value
   (causal: only steps up to the clip's last frame count), else Healthy;
3. a ``tiny`` TEViD is fine-tuned with :func:`core_models.train.finetune` (EDL loss) and
   calibrated minimally: temperature 1 (the corpus is trivially separable, so a temperature
   fitted on it would run to its bound); ``tau_u`` the paper's 0.35 or, if the corpus clips
   themselves are more vacuous (a model this small, trained this briefly, has little evidence),
   10 % above the most vacuous corpus clip, so the toy does not abstain on what it was trained
   on; the per-class alert thresholds from :func:`core_models.calibration.fit_class_thresholds`
   so that no healthy corpus run alerts;
4. it is saved with :meth:`Diagnostician.save_pretrained` as ``OUT/model.*``.

It knows two classes only (no Overfitting, Forgetting or Concept-bias training data), and is
calibrated on its own training runs: use it to exercise the plumbing, never to quote accuracy.

Example:
    >>> import tempfile
    >>> path = train_toy_diagnostician(tempfile.mkdtemp())   # doctest: +SKIP
    >>> Diagnostician.from_pretrained(path, device="cpu").window   # doctest: +SKIP
    4
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core_models.calibration import (
    DEFAULT_TAU_U,
    Calibration,
    RunPredictions,
    fit_class_thresholds,
)
from core_models.profiles import get_profile
from core_models.tevid import TEViD
from core_models.train import FinetuneConfig, finetune, predict
from data_factory.architectures import small_cnn
from data_factory.capture import StateCapture
from data_factory.datasets import TensorData, digits
from data_factory.labels import HEALTHY, INSTABILITY, KNOWN_LABELS
from tevid_hpo.diagnostician import Diagnostician

__all__ = ["DEMO_CORPUS", "QUICK_CORPUS", "TOY_BURN_IN", "ToyRun", "train_toy_diagnostician"]

#: A clip is Instability once the run's loss exceeded this multiple of its first value.
SPIKE_FACTOR = 3.0


#: Real frames before the toy's first verdict. Real checkpoints wait for their whole window (or
#: a burn-in chosen on validation); the toy only tells a loss explosion from a healthy run, which
#: two frames show, so it waits for half of the ``tiny`` window and the plumbing tests see its
#: alerts within a few dozen steps.
TOY_BURN_IN = 2

@dataclass(frozen=True)
class ToyRun:
    """One training run of a toy corpus.

    Attributes:
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (SGD uses momentum 0.9).
        lr: learning rate.
        weight_decay: the optimizer's weight decay.
        seed: weight-init and data-order seed.
        label: the run's label; only Instability runs contribute Instability clips, and only
            after their loss has exploded.
        epochs: length of the run; an epoch is one pass's worth of steps over the full training
            split whatever ``train_size`` is (as in :mod:`tevid_hpo.optuna_demo`).
        train_size: train on the first ``train_size`` examples only (``None``: all), cycled.
    """

    optimizer: str
    lr: float
    weight_decay: float
    seed: int
    label: str
    epochs: int = 3
    train_size: int | None = None


def _runs(healthy: list[tuple], unstable: list[tuple]) -> tuple[ToyRun, ...]:
    # Seeds start at 100 so they never coincide with the demo's trials (seeded 0, 1, 2, ...).
    return (tuple(ToyRun(*h[:3], 100 + i, HEALTHY, *h[3:]) for i, h in enumerate(healthy))
            + tuple(ToyRun(*u[:3], 200 + i, INSTABILITY, *u[3:]) for i, u in enumerate(unstable)))


#: Test-suite corpus (~15 s): healthy runs across sane optimiser settings for 3 epochs, runs
#: whose loss explodes at huge learning rates.
QUICK_CORPUS: tuple[ToyRun, ...] = _runs(
    [("adam", 1e-4, 0.0), ("adam", 3e-4, 5e-3), ("adam", 1e-3, 0.0), ("adam", 1e-3, 1e-2),
     ("adam", 3e-3, 0.0), ("adam", 3e-3, 5e-3), ("adam", 1e-2, 0.0), ("adamw", 5e-4, 0.1),
     ("adamw", 2e-3, 0.05), ("adamw", 6e-3, 0.1), ("sgd", 0.01, 0.0), ("sgd", 0.05, 1e-3),
     ("sgd", 0.1, 0.0), ("adam", 2e-4, 0.0)],
    [("adam", 0.2, 0.0), ("adam", 0.5, 5e-3), ("adam", 1.0, 0.0), ("adamw", 3.0, 0.05),
     ("adam", 10.0, 0.0), ("sgd", 20.0, 0.0), ("sgd", 40.0, 0.0), ("sgd", 100.0, 0.0)])

#: Demo corpus (~30 s): adds full-length (9-epoch) healthy runs, including small training
#: subsets that are memorised, so late, converged and overfitting-but-stable phases are not
#: mistaken for divergence.
DEMO_CORPUS: tuple[ToyRun, ...] = _runs(
    [("adam", 1e-3, 0.0, 9), ("adam", 3e-3, 5e-3, 9, 300), ("adam", 2e-3, 0.0, 9, 100),
     ("adam", 5e-3, 1e-3, 9, 100), ("adam", 5e-4, 5e-3, 9), ("adam", 1e-2, 0.0, 9, 300),
     ("adam", 3e-4, 0.0, 9, 300), ("adam", 1e-4, 0.0, 9), ("adam", 1e-3, 1e-2, 9, 100),
     ("adamw", 2e-3, 0.05), ("sgd", 0.05, 1e-3), ("adam", 3e-3, 0.0), ("adam", 2e-4, 5e-3)],
    [("adam", 0.2, 0.0, 2), ("adam", 0.5, 5e-3, 2, 100), ("adam", 1.0, 0.0, 2),
     ("adamw", 3.0, 0.05, 2), ("adam", 10.0, 0.0, 2, 300), ("sgd", 20.0, 0.0, 2),
     ("sgd", 40.0, 0.0, 2), ("sgd", 100.0, 0.0, 2), ("adam", 0.1, 1e-3, 2)])


def _optimizer(run: ToyRun, params) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    if run.optimizer == "sgd":
        return torch.optim.SGD(params, lr=run.lr, momentum=0.9, weight_decay=run.weight_decay)
    cls = torch.optim.AdamW if run.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=run.lr, weight_decay=run.weight_decay)


def _capture_run(run: ToyRun, data: TensorData, batch_size: int
                 ) -> tuple[list[torch.Tensor], list[int], np.ndarray]:
    """Train one run; return its frames, their steps and the per-step losses."""
    p = get_profile("tiny")
    torch.manual_seed(run.seed)
    model = small_cnn(in_channels=1, num_classes=data.num_classes)
    opt = _optimizer(run, model.parameters())
    size = min(run.train_size or len(data.x_train), len(data.x_train))
    x, y = data.x_train[:size], data.y_train[:size]
    steps_per_epoch = math.ceil(len(data.x_train) / batch_size)
    g = torch.Generator().manual_seed(run.seed)
    passes = steps_per_epoch * batch_size * run.epochs // size + 1
    order = torch.cat([torch.randperm(size, generator=g) for _ in range(passes)])
    frames: list[torch.Tensor] = []
    steps: list[int] = []
    losses: list[float] = []
    with StateCapture(model, every=p.every, frame_size=p.frame_size) as cap:
        for k in range(run.epochs * steps_per_epoch):
            idx = order[k * batch_size:(k + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            frame = cap.step(epoch=k // steps_per_epoch)
            if frame is not None:
                frames.append(frame.tensor.float())
                steps.append(frame.step)
            losses.append(loss.item())
            opt.step()
    return frames, steps, np.asarray(losses)


def _clips(frames: list[torch.Tensor], steps: list[int], losses: np.ndarray, label: str,
           window: int) -> tuple[torch.Tensor, list[int]]:
    """Streaming windows (left-padded with the first frame) and their causal labels."""
    # Running "has the loss blown up yet": the first step at which it is non-finite or large.
    bad = ~np.isfinite(losses) | (losses > SPIKE_FACTOR * losses[0])
    onset = int(np.argmax(bad)) if label == INSTABILITY and bad.any() else None
    clips, labels = [], []
    for t, step in enumerate(steps):
        past = frames[max(0, t - window + 1):t + 1]
        clips.append(torch.stack([frames[0]] * (window - len(past)) + past))
        unstable = onset is not None and step >= onset
        labels.append(KNOWN_LABELS.index(INSTABILITY if unstable else HEALTHY))
    return torch.stack(clips), labels


def train_toy_diagnostician(out_dir: str | Path, corpus: Sequence[ToyRun] = QUICK_CORPUS, *,
                            seed: int = 0, batch_size: int = 32, finetune_epochs: int = 50,
                            quiet: bool = True) -> Path:
    """Capture ``corpus``, fine-tune and calibrate a ``tiny`` TEViD, save it.

    About 15 s on one CPU core for :data:`QUICK_CORPUS`, 30 s for :data:`DEMO_CORPUS`.

    Args:
        out_dir: directory that receives ``model.safetensors`` + ``model.json``.
        corpus: the runs to capture.
        seed: seeds the data split and TEViD's initialisation and fine-tuning.
        batch_size: batch size of the digits runs (more steps per epoch → more frames).
        finetune_epochs: TEViD fine-tuning epochs.
        quiet: no progress output.

    Returns:
        ``out_dir``, loadable with ``Diagnostician.from_pretrained(out_dir)``.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = get_profile("tiny")
    data = digits(image_size=16, seed=seed)
    all_clips: list[torch.Tensor] = []
    all_labels: list[int] = []
    run_slices: list[tuple[slice, str]] = []
    for run in corpus:
        frames, steps, losses = _capture_run(run, data, batch_size)
        clips, labels = _clips(frames, steps, losses, run.label, profile.window)
        first = sum(len(c) for c in all_clips)
        run_slices.append((slice(first, first + len(clips)), run.label))
        all_clips.append(clips)
        all_labels.extend(labels)
    dataset = TensorDataset(torch.cat(all_clips), torch.tensor(all_labels))

    torch.manual_seed(seed)
    model = TEViD(profile)
    cfg = FinetuneConfig(epochs=finetune_epochs, batch_size=32, base_lr=3e-3, lr_batch_ref=None,
                         warmup_epochs=1.0, weight_decay=0.05, kl_anneal_epochs=10.0, seed=seed,
                         device="cpu", progress=not quiet, amp=False)
    result = finetune(model, dataset, cfg)
    pred = predict(model, dataset, batch_size=64, device="cpu", temperature=1.0)
    # The stream of each run is its clips in order: exactly what the diagnostician sees live.
    # ... from its TOY_BURN_IN-th frame on: earlier clips are withheld, never diagnosed.
    streams = [RunPredictions(pred["probs"][s][TOY_BURN_IN - 1:],
                              pred["vacuity"][s][TOY_BURN_IN - 1:], label)
               for s, label in run_slices]
    tau_u = max(DEFAULT_TAU_U, round(1.1 * float(pred["vacuity"].max()), 4))
    calibration = Calibration(temperature=1.0, tau_u=tau_u,
                              tau_c=fit_class_thresholds(streams, tau_u, target_far=0.0),
                              burn_in=TOY_BURN_IN)
    diag = Diagnostician(model, calibration, device="cpu")
    acc = float((pred["probs"].argmax(1) == pred["labels"]).mean())
    diag.save_pretrained(out / "model", toy=True, trained=True, val_metrics={
        "train_clip_accuracy": round(acc, 4)}, corpus={
        "runs": [vars(r) for r in corpus], "clips": len(dataset),
        "batch_size": batch_size, "finetune_epochs": result.epochs, "seed": seed,
        "recipe": "tevid_hpo.testing"})
    if not quiet:
        n_bad = sum(label != KNOWN_LABELS.index(HEALTHY) for label in all_labels)
        print(f"toy diagnostician: {len(dataset)} clips ({n_bad} Instability) from "
              f"{len(corpus)} runs, train clip accuracy {acc:.3f}, "
              f"{time.perf_counter() - start:.1f}s -> {out / 'model.safetensors'}")
    if not math.isfinite(acc):  # pragma: no cover - defensive: a broken corpus
        raise RuntimeError("toy diagnostician training produced no usable predictions")
    return out
