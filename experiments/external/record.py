"""Train each external run the way a user writes the loop, wrapped in the public ``TrialMonitor``.

Nothing of the factory's runner or architectures is used: the loop below is the README's
(``loss.backward(); mon.step(loss=loss.item()); optimizer.step()``, ``mon.epoch_end(epoch)``)
with a user's model, data, optimizer and schedule, plus the scenario's fault. The monitor runs the
shipped checkpoint exactly as a user gets it (``Diagnostician.from_pretrained()``); a thin
subclass, :class:`RecordingDiagnostician`, keeps a copy of every frame the monitor hands it so the
other methods can be scored on the same capture steps.

Each recording is a :class:`~data_factory.store.RunStore` run under
``~/.cache/tevid-hpo/external/<key>/`` (``<key>`` hashes ``data_factory/frames.py``,
``data_factory/capture.py`` and the profile's frame geometry / cadence, so a change to any of
them records afresh instead of mixing stale frames in; the checkpoint is not hashed: TEViD is
scored offline from the recorded frames with any checkpoint):

* ``frames.safetensors`` — the captured frames (with their per-layer statistics);
* ``steps.csv`` — per step: ``loss``, ``lr``, ``grad_norm`` (total L2 before clipping, what a
  user's rule reads; the monitor, stepped after ``clip_grad_norm_``, saw the clipped norm:
  :func:`as_monitored`), ``grad_absmean`` (mean absolute weight gradient), ``finite``;
* ``epochs.csv`` — per epoch: ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``;
* ``arrays.safetensors`` — TEViD's live diagnoses (``tevid_steps``, ``tevid_probs``,
  ``tevid_vacuity``);
* ``meta.json`` — the spec, ``split`` = the half, ``steps_per_epoch``, the monitor's alerts.

Recording is resumable: finished runs are skipped.

Example:
    >>> from experiments.external.suite import SMOKE
    >>> cache_key()[:4] == cache_key()[:4], len(cache_key())
    (True, 16)
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import data_factory
from core_models.checkpoint import checkpoint_digest
from data_factory.frames import Frame
from data_factory.store import Run, RunStore
from experiments.external.data import load_data
from experiments.external.models import build_model
from experiments.external.recipes import build_optimizer
from experiments.external.scenarios import Injector
from experiments.external.suite import RunSpec, spec_hash
from tevid_hpo import Diagnostician, TrialMonitor
from tevid_hpo.diagnostician import DEFAULT_CHECKPOINT

__all__ = ["CACHE", "RecordingDiagnostician", "as_monitored", "cache_key", "record_run",
           "record_suite",
           "recording_id"]

#: Root of the recordings.
CACHE = Path(os.environ.get("TEVID_CACHE", Path.home() / ".cache" / "tevid-hpo")) / "external"


class RecordingDiagnostician(Diagnostician):
    """The shipped :class:`Diagnostician`, keeping every frame it is given (``frames``).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     d = RecordingDiagnostician.from_pretrained("tiny", device="cpu")
        >>> _ = d.update(torch.zeros(6, 16, 16)); len(d.frames)
        1
    """

    frames: list[Any]

    def reset(self) -> None:
        """Forget the stream and the recorded frames."""
        super().reset()
        self.frames = []

    def update(self, frame: Frame | torch.Tensor, step: int | None = None,
               epoch: int | None = None) -> Any:
        """Record ``frame``, then diagnose as the parent does."""
        self.frames.append(frame)
        return super().update(frame, step, epoch)


def _file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes() if Path(p).is_file() else b"missing")
    return h.hexdigest()


def _profile_geometry(checkpoint: str | os.PathLike[str] | None) -> bytes:
    """The frame geometry and cadence of the checkpoint's profile (what shapes the recorded
    frames); the weights, calibration and every other profile field are left out."""
    import json

    ckpt = Path(checkpoint) if checkpoint is not None else Path(DEFAULT_CHECKPOINT)
    stem = ckpt.with_suffix("") if ckpt.suffix in (".safetensors", ".json") else ckpt
    cfg = stem.with_suffix(".json")
    prof = json.loads(cfg.read_text()).get("profile", {}) if cfg.is_file() else {}
    keep = {k: prof.get(k) for k in ("frame_size", "in_chans", "every", "input_clip")}
    return json.dumps(keep, sort_keys=True).encode()


def cache_key(checkpoint: str | os.PathLike[str] | None = None) -> str:
    """Hash of what a recording's frames and scalars depend on besides its spec (each run id
    carries its spec hash): the frame encoder and capture code, this training loop, the data
    sets, models, recipes and fault injection it builds from, and the profile's frame geometry /
    cadence — not the checkpoint's weights, so any checkpoint scores the same recordings offline
    (:func:`experiments.external.methods.tevid_offline_scores`)."""
    root, here = Path(data_factory.__file__).parent, Path(__file__).parent
    h = hashlib.sha256(_file_hash(
        root / "frames.py", root / "capture.py", Path(__file__),
        *(here / f"{m}.py" for m in ("data", "models", "recipes", "scenarios"))).encode())
    h.update(_profile_geometry(checkpoint))
    return h.hexdigest()[:16]


def recording_id(spec: RunSpec) -> str:
    """The stored run id of ``spec`` (its id and spec hash)."""
    return f"{spec.run_id}-{spec_hash(spec)}"


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])
        loss = float(F.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
    model.train()
    return loss, acc


def as_monitored(run: Run) -> Run:
    """``run`` with the gradient norm its live monitor saw.

    ``steps.csv`` logs the total norm before clipping, but the training loop steps the monitor
    after ``clip_grad_norm_``, so a clipped run's monitor read the clipped norm,
    ``norm · min(1, clip / (norm + 1e-6))`` as torch computes it. Replaying the logged norm
    instead gave TEViD other telemetry than it had live (external-dev-56, clip 1.0: diagnoses
    0.023 apart). Runs without ``clip`` come back unchanged.

    Example:
        >>> import pandas as pd
        >>> run = Run(Path("r"), {"recipe": {"clip": 1.0}}, pd.DataFrame(
        ...     {"step": [0, 1], "grad_norm": [0.5, 4.0]}), pd.DataFrame())
        >>> as_monitored(run).steps["grad_norm"].round(4).tolist()
        [0.5, 1.0]
    """
    clip = (run.meta.get("recipe") or {}).get("clip")
    if not clip or "grad_norm" not in run.steps:
        return run
    norm = run.steps["grad_norm"].to_numpy(dtype=float)
    seen = norm * np.minimum(1.0, float(clip) / (norm + 1e-6))
    return dataclasses.replace(run, steps=run.steps.assign(grad_norm=seen))


def record_run(spec: RunSpec, store: RunStore, checkpoint: str | None = None,
               threads: int = 1) -> str:
    """Train ``spec`` under a ``TrialMonitor`` and store the recording; returns its run id
    (nothing is trained when it is already stored)."""
    rid = recording_id(spec)
    if rid in store:
        return rid
    torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    data = load_data(spec.data, seed=0)
    recipe = spec.effective_recipe()
    xtr, ytr = data.x_train, data.y_train
    if recipe.train_subset:
        xtr, ytr = xtr[:recipe.train_subset], ytr[:recipe.train_subset]
    model = build_model(spec.family, data, spec.variant, spec.seed,
                        dropout=spec.scenario.kind != "overfit")
    bs = recipe.batch_size
    spe = math.ceil(len(ytr) / bs)
    opt, sched = build_optimizer(recipe, model.parameters(), spe)
    inj = Injector(spec.scenario, len(ytr), bs, spec.seed)
    diag = RecordingDiagnostician.from_pretrained(checkpoint, device="cpu")
    gen = torch.Generator().manual_seed(spec.seed)
    steps: list[dict[str, float]] = []
    epochs: list[dict[str, float]] = []
    t0 = time.time()
    step = 0
    # optimizer= as the README's loop passes it: the live frames carry the lr in use
    with TrialMonitor(model, trial=None, diagnostician=diag, asynchronous=False,
                      optimizer=opt) as mon:
        for epoch in range(recipe.epochs):
            inj.epoch_start(epoch, model)
            labels = inj.labels(epoch, ytr, data.n_classes)
            order = torch.randperm(len(ytr), generator=gen)
            scale = inj.lr_scale(epoch)
            tot, correct, n = 0.0, 0, 0
            for b in range(spe):
                idx = inj.batch(epoch, b, order)
                x, y = xtr[idx], labels[idx]
                for g, lr in zip(opt.param_groups, sched.get_last_lr()):
                    g["lr"] = lr * scale
                lr_used = float(opt.param_groups[0]["lr"])   # sched.step() overwrites it below
                out = model(x)
                loss = F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing)
                opt.zero_grad()
                loss.backward()
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                gn = float(torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.grad is not None],
                    recipe.clip if recipe.clip else float("inf")))
                absmean = float(sum(g.abs().sum() for g in grads) / max(1, sum(g.numel()
                                                                               for g in grads)))
                lv = float(loss.item())
                mon.step(loss=lv)
                opt.step()
                sched.step()
                steps.append({"step": step, "epoch": epoch, "loss": lv,
                              "lr": lr_used, "grad_norm": gn,
                              "grad_absmean": absmean, "finite": int(math.isfinite(lv))})
                tot += lv * len(y)
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
                step += 1
            mon.epoch_end(epoch)
            val_loss, val_acc = _evaluate(model, data.x_val, data.y_val)
            epochs.append({"epoch": epoch, "train_loss": tot / n, "train_acc": correct / n,
                           "val_loss": val_loss, "val_acc": val_acc})
        history, alerts, error = mon.history, mon.alerts, mon.error
    meta = {**spec.to_dict(), "split": spec.half, "arch": spec.family, "dataset": spec.data,
            "optimizer": spec.recipe.optimizer, "steps_per_epoch": spe,
            "n_train": len(ytr), "n_classes": data.n_classes, "epochs": recipe.epochs,
            "intervention": {"kind": spec.scenario.kind, "novel": spec.scenario.novel,
                             "start_step": (spec.scenario.fault_epoch * spe
                                            if spec.scenario.fault_epoch is not None else None)},
            "tevid_alerts": alerts, "monitor_error": error, "frozen_layer": inj.frozen, "seconds": time.time() - t0,
            "checkpoint": str(diag.source), "checkpoint_digest": checkpoint_digest(diag.source),
            "cache_key": cache_key(checkpoint)}
    with store.create(rid, meta, overwrite=True) as w:
        for f in diag.frames:
            w.add_frame(f)
        for s in steps:
            w.log_step(**s)
        for e in epochs:
            w.log_epoch(**e)
        keys = list(diag.known_labels)
        w.add_array("tevid_steps", np.asarray([h["step"] for h in history], np.int64))
        w.add_array("tevid_probs", np.asarray(
            [[h["probs"][k] if h["probs"][k] is not None else 0.0 for k in keys]
             for h in history], np.float32).reshape(len(history), len(keys)))
        w.add_array("tevid_vacuity", np.asarray(
            [h["vacuity"] if h["vacuity"] is not None else 1.0 for h in history], np.float32))
    return rid


def _worker(spec: RunSpec, root: str, checkpoint: str | None) -> tuple[str, str | None]:
    import warnings

    warnings.filterwarnings("ignore")
    try:
        return record_run(spec, RunStore(root), checkpoint), None
    except Exception as err:  # noqa: BLE001 - one failing run must not stop the suite; reported
        return spec.run_id, f"{type(err).__name__}: {err}"


#: Families whose runs cost the most (started first, so they do not trail the suite).
HEAVY: frozenset[str] = frozenset({"resnet18", "vit_tiny", "mobilenet_v3_small", "convnext_atto",
                                   "regnetx_002"})


def store_for(checkpoint: str | None = None, root: Path | None = None,
              key: str | None = None) -> RunStore:
    """The RunStore holding recordings for the current code and ``checkpoint`` (``key``: a
    given recordings directory instead, e.g. one made before a frame-code change)."""
    return RunStore((root or CACHE) / (key or cache_key(checkpoint)))


def record_suite(specs: Sequence[RunSpec], workers: int = 2, checkpoint: str | None = None,
                 root: Path | None = None, progress: bool = True, key: str | None = None
                 ) -> tuple[RunStore, dict[str, str]]:
    """Record every spec not yet stored (``workers`` processes, one torch thread each), with a
    tqdm progress bar. Returns the store and ``{run_id: error}`` for runs that failed."""
    store = store_for(checkpoint, root, key)
    todo = sorted((s for s in specs if recording_id(s) not in store),
                  key=lambda s: s.family not in HEAVY)
    errors: dict[str, str] = {}
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="external runs",
               disable=not progress)
    if workers <= 1:
        for s in todo:
            rid, err = _worker(s, str(store.root), checkpoint)
            if err:
                errors[rid] = err
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            futs = [pool.submit(_worker, s, str(store.root), checkpoint) for s in todo]
            for f in as_completed(futs):
                rid, err = f.result()
                if err:
                    errors[rid] = err
                bar.update()
    bar.close()
    return store, errors
